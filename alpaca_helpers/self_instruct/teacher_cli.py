"""The command line every teacher run shares (self-instruct's and red teaming's): the teacher's options, opening
the teacher (an endpoint, or the embedded model served locally), SIGTERM and the closing report."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from .server import serve
from .teacher import Teacher, TeacherConfig
from .teacher_run import RunResult


def add_teacher_arguments(p: argparse.ArgumentParser, title: str, max_tokens: int) -> argparse._ArgumentGroup:
    """The options every teacher-driven command shares (endpoint, decoding, retries, concurrency, seed, progress);
    returns the "decoding and run" group for the command's own options."""
    t = p.add_argument_group(title)
    t.add_argument("--base_url", help="an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    t.add_argument("--model", help="model name at that endpoint (e.g. gpt-4o-mini)")
    t.add_argument("--api", choices=("completions", "chat"), default="completions",
                   help="Completions API (gpt-3.5-turbo-instruct, local servers) or Chat Completions")
    t.add_argument("--api_key_env", default="OPENAI_API_KEY",
                   help="name of the environment variable holding the API key (default: OPENAI_API_KEY)")
    t.add_argument("--extra_body", type=json.loads, metavar="JSON",
                   help="extra request fields as a JSON object (for a `transformers serve` endpoint given by "
                        "--base_url: its LocalServer.sampling_body(), or sampling stays off)")
    t.add_argument("--serve", metavar="MODEL_DIR", help="model folder to serve locally instead of the default")
    t.add_argument("--server_threads", type=int, default=1, help="CPU threads for the local server (default: 1)")
    d = p.add_argument_group("decoding and run")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--top_p", type=float, default=1.0)
    d.add_argument("--max_tokens", type=int, default=max_tokens, help="completion length limit per request")
    d.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--max_requests", type=int, help="stop after this many requests even if short of the target")
    d.add_argument("--request_timeout", type=float, default=600.0, help="seconds per request")
    d.add_argument("--max_retries", type=int, default=6, help="retries per request on 429/5xx/timeouts")
    d.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each time)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return d


def open_teacher(args: argparse.Namespace, stack: contextlib.ExitStack, out: Path) -> Teacher | None:
    """The teacher `add_teacher_arguments`' options name: the endpoint given, else the embedded model (or --serve)
    served locally for as long as `stack` is open. None when --base_url lacks --model."""
    if args.base_url and not args.model:
        return None
    if args.base_url:
        base_url, model, extra_body = args.base_url, args.model, args.extra_body
    else:
        # Every request samples alike, so continuous batching's shared settings are no limit here.
        server = stack.enter_context(serve(args.serve, threads=args.server_threads, continuous_batching=True,
                                           log_path=out / "server.log"))
        base_url, model, extra_body = server.base_url, server.model, server.sampling_body()
    return Teacher(TeacherConfig(base_url=base_url, model=model, api=args.api, api_key_env=args.api_key_env,
                                 temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                 request_timeout=args.request_timeout, max_retries=args.max_retries,
                                 backoff_initial=args.backoff, extra_body=extra_body),
                   count_tokens=None if args.base_url else server.count_tokens())


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """A SIGTERM handler that unwinds like Ctrl-C (`with` blocks close: a local server stops)."""
    raise SystemExit(128 + signum)


def report(result: RunResult) -> int:
    """Print the run's summary (one JSON line) and, short of the target, a warning; the exit status: 0 when the
    target was reached, 3 when requests ran out first."""
    print(json.dumps(result.summary()))
    if not result.complete:
        print(f"warning: stopped after {result.requests} requests with {result.kept}/{result.target} kept",
              file=sys.stderr)
        return 3
    return 0
