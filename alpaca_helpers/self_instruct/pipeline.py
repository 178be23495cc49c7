"""Alpaca's data step: self-instruct generation through any OpenAI-compatible teacher.

Each request shows the teacher a list of tasks that starts with `num_prompt_instructions` seed tasks and
asks it to continue the list with `tasks_per_prompt` new ones. The completion is parsed into
(instruction, input, output) tasks, each is filtered (length, blacklisted words, leading text), and a
task is kept only if its instruction's ROUGE-L F-measure against every seed and kept instruction is at
most 0.7. Kept records are appended to a checkpoint as they are kept, so a crashed run continues where it
stopped when started again with the same output folder.

    python -m alpaca_helpers.self_instruct --num-instructions 20 --output-dir runs/self_instruct
    python -m alpaca_helpers.self_instruct --base-url https://api.openai.com/v1 --model gpt-4o-mini --api chat ...

Without `--base-url` the embedded default model is served locally with `transformers serve`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..data import load_seed_tasks, save_alpaca
from ..files import append_durable, atomic_write_text, read_complete_jsonl
from .parse import filter_reason, parse_completion
from .prompt import NUM_PROMPT_INSTRUCTIONS, TASKS_PER_PROMPT, request_prompt, stop_strings
from .teacher import Completion, Teacher, TeacherConfig, TeacherError, estimate_cost, format_usd, price_per_million

SIMILARITY_THRESHOLD = 0.7
ALPACA_SIZE = 52_002  # records in Stanford Alpaca's alpaca_data.json
OUTPUT_FILE = "regen.json"
META_FILE = "regen.meta.json"
CHECKPOINT_FILE = "regen.checkpoint.jsonl"
# ---------------------------------------------------------------------------------------- training set

TRAIN_SET_FILE = "train_set.json"
SEED_SOURCE, GENERATED_SOURCE = "seed", "self-instruct"


def training_set(seeds: Sequence[Mapping[str, Any]], generated: Sequence[Mapping[str, Any]],
                 kept: Sequence[bool]) -> list[dict[str, Any]]:
    """Alpaca's training data: the seed tasks, then the generated records the similarity filter kept.

    Each record is plain Alpaca (instruction, input, output) plus `source`: "seed" or "self-instruct".
    """
    plain = [{f: r.get(f) or "" for f in ("instruction", "input", "output")} for r in seeds]
    chosen = [r for r, keep in zip(generated, kept, strict=True) if keep]
    return ([{**r, "source": SEED_SOURCE} for r in plain]
            + [{**{f: r.get(f) or "" for f in ("instruction", "input", "output")}, "source": GENERATED_SOURCE}
               for r in chosen])


# ------------------------------------------------------------------------------------------ checkpoint

class Checkpoint:
    """An append-only JSONL log of kept records and finished requests, safe against `kill -9`.

    Each finished request is one `write()` of its kept records followed by a `request` line, then fsync;
    a torn last line (power loss) is dropped on load.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._load()

    def _load(self) -> None:
        for entry in read_complete_jsonl(self.path):
            (self.records if entry.get("type") == "record" else self.requests).append(entry)

    def append(self, records: Sequence[Mapping[str, Any]], request: Mapping[str, Any]) -> None:
        lines = [json.dumps({"type": "record", **r}, ensure_ascii=False) for r in records]
        lines.append(json.dumps({"type": "request", **request}, ensure_ascii=False))
        append_durable(self.path, "\n".join(lines))
        self.records.extend({"type": "record", **r} for r in records)
        self.requests.append({"type": "request", **request})

    def next_index(self) -> int:
        """The index of the first request after every finished one."""
        return max((r["index"] for r in self.requests), default=-1) + 1

    def wall_seconds(self, session: str, session_seconds: float) -> float:
        """`session_seconds` of this session plus the earlier sessions' (each up to its last finished request).

        Each request line carries its `session` and the seconds from that session's start (`elapsed`)."""
        earlier: dict[str, float] = {}
        for r in self.requests:
            if r.get("session") != session:
                earlier[r["session"]] = max(earlier.get(r["session"], 0.0), r.get("elapsed", 0.0))
        return sum(earlier.values()) + session_seconds

    def rejections(self, examples_per_reason: int = 3) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Rejections by reason over every finished request, and the first few rejected texts of each reason."""
        counts: Counter = Counter()
        examples: dict[str, list[str]] = {}
        for r in self.requests:
            counts.update(r["rejections"])
            for reason, text in r.get("rejected", []):
                found = examples.setdefault(reason, [])
                if len(found) < examples_per_reason:
                    found.append(text)
        return dict(counts), examples


# -------------------------------------------------------------------------------------------- pipeline

@dataclass
class RunResult:
    """What a run produced (counts cover every session of a resumed run)."""

    records: list[dict[str, str]]
    target: int
    requests: int
    rejections: dict[str, int]
    prompt_tokens: int
    completion_tokens: int  # returned, up to the stop string (what an API bills)
    cost_usd: float | None
    wall_seconds: float
    retries: int
    complete: bool
    output_path: Path
    meta_path: Path
    example: dict[str, Any] | None = None  # the first request of this session: prompt, completion, parse
    generated_tokens: int = 0  # decoded by the server (more than completion_tokens when it ignores stop strings)
    parsed: int = 0  # tasks parsed from the replies, before the filters

    @property
    def kept(self) -> int:
        return len(self.records)

    @property
    def kept_per_minute(self) -> float:
        return 60 * self.kept / self.wall_seconds if self.wall_seconds else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts and rates as a small JSON-safe dict."""
        return {"kept": self.kept, "target": self.target, "complete": self.complete, "requests": self.requests,
                "rejections": dict(self.rejections), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "generated_tokens": self.generated_tokens,
                "parsed": self.parsed, "cost_usd": self.cost_usd,
                "wall_seconds": round(self.wall_seconds, 2), "kept_per_minute": round(self.kept_per_minute, 3),
                "retries": self.retries}


def projection(result: RunResult, teacher: TeacherConfig, size: int = ALPACA_SIZE,
               concurrency: int = 1) -> dict[str, float | None]:
    """Scale the measured rates of `result` to `size` kept instructions (Alpaca: 52,002)."""
    if not result.kept or not result.requests:
        return {"instructions": size, "requests": None, "prompt_tokens": None, "completion_tokens": None,
                "cost_usd": None, "hours": None}
    per_kept = size / result.kept
    prompt_tokens = result.prompt_tokens * per_kept
    completion_tokens = result.completion_tokens * per_kept
    return {"instructions": size, "requests": round(result.requests * per_kept),
            "prompt_tokens": round(prompt_tokens), "completion_tokens": round(completion_tokens),
            "cost_usd": estimate_cost(teacher.model, int(prompt_tokens), int(completion_tokens), teacher.base_url),
            "hours": result.wall_seconds * per_kept / 3600, "concurrency": concurrency}


def projection_at(result: RunResult, tasks_per_request: int, tasks_asked: int, size: int = ALPACA_SIZE,
                  kept_share: float = 1.0) -> dict[str, float] | None:
    """Requests and tokens for `size` instructions asking `tasks_per_request` tasks per request (Alpaca: 20).

    Scaled from `result` (which asked `tasks_asked` per request): its mean prompt tokens per request (the prompt
    barely changes with the number asked for) and its returned completion tokens per task asked; a share
    `kept_share` of the tasks asked is assumed kept (1.0: every one, the cheapest case). None without requests.
    """
    if not result.requests or tasks_asked < 1 or not 0 < kept_share <= 1:
        return None
    requests = math.ceil(size / (tasks_per_request * kept_share))
    prompt_per_request = result.prompt_tokens / result.requests
    completion_per_task = result.completion_tokens / (result.requests * tasks_asked)
    return {"instructions": size, "tasks_per_request": tasks_per_request, "kept_share": kept_share,
            "requests": requests, "prompt_tokens": round(requests * prompt_per_request),
            "completion_tokens": round(requests * tasks_per_request * completion_per_task),
            "prompt_tokens_per_request": prompt_per_request, "completion_tokens_per_task": completion_per_task}


ALPACA_TASKS_PER_REQUEST = 20
ALPACA_REPORTED_USD = 500  # "less than $500" of OpenAI API calls (Alpaca's blog post)
ALPACA_TEACHER = "text-davinci-003"


def cost_note(result: RunResult, tasks_asked: int, size: int = ALPACA_SIZE) -> str:
    """Why a laptop run's projected cost is far above Alpaca's reported < $500, in two sentences with this run's
    numbers and the same projection at Alpaca's 20 tasks per request (see `projection_at`)."""
    at_20 = projection_at(result, ALPACA_TASKS_PER_REQUEST, tasks_asked, size)
    if not result.kept or at_20 is None:
        return "No instruction was kept, so nothing can be projected: raise max_requests and run again."
    per_request = result.kept / result.requests
    usd = estimate_cost(ALPACA_TEACHER, at_20["prompt_tokens"], at_20["completion_tokens"]) or 0.0
    first = (f"Why this is not Alpaca's < ${ALPACA_REPORTED_USD}: this run asked for {tasks_asked} task(s) per request "
             f"and kept {result.kept} from {result.requests} requests ({per_request:.2f} per request), so every kept "
             f"instruction paid for {1 / per_request:.1f} prompts of {at_20['prompt_tokens_per_request']:,.0f} tokens.")
    second = (f"Alpaca asked for {ALPACA_TASKS_PER_REQUEST} per request: with this prompt and "
              f"{at_20['completion_tokens_per_task']:.0f} reply tokens per task, {size:,} instructions take "
              f"{at_20['requests']:,} requests and cost {format_usd(usd)} on {ALPACA_TEACHER} if every task is kept")
    if usd < ALPACA_REPORTED_USD:
        second += (f"; Alpaca's < ${ALPACA_REPORTED_USD} leaves room for keeping as few as "
                   f"{usd / ALPACA_REPORTED_USD:.0%} of them.")
    else:
        second += f", already above ${ALPACA_REPORTED_USD}: Alpaca's prompts or tasks were shorter than these."
    return f"{first} {second}"


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of request `index` of a run seeded with `seed` (the same on every resume)."""
    return random.Random(f"{seed}:{index}").randrange(2**31)


Reply = TypeVar("Reply")


def run_requests(ask: Callable[[int], Reply], process: Callable[[Reply, int], int], target: int, *, kept: int,
                 next_index: int, concurrency: int = 1, max_requests: int | None = None, progress: bool = True,
                 status: Callable[[], dict[str, Any]] | None = None) -> float:
    """The request loop of a resumable teacher run, until `target` items are kept or requests run out.

    `ask(index)` runs in a thread pool (`concurrency` in flight, `max_requests` at most this session) and
    returns a reply; `process(reply, room)` runs in this thread, checkpoints what it keeps (at most `room`)
    and returns how many. `kept` and `next_index` say where an earlier session stopped; `status()` gives the
    progress bar's postfix. Returns the `time.perf_counter()` at the end; on an error or Ctrl-C requests
    still in flight are abandoned (their replies were never checkpointed, so a resume asks again).
    """
    from tqdm.auto import tqdm

    submitted = 0
    bar = tqdm(total=target, initial=min(kept, target), desc="kept", unit="instr", disable=not progress,
               dynamic_ncols=True)
    finished_at = None
    executor = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="teacher")
    pending: set[Future] = set()
    try:
        while kept < target:
            while len(pending) < concurrency and (max_requests is None or submitted < max_requests):
                pending.add(executor.submit(ask, next_index))
                next_index += 1
                submitted += 1
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if kept >= target:
                    break  # target reached by an earlier reply of this batch
                new = process(future.result(), target - kept)
                kept += new
                bar.update(new)
                if status is not None:
                    bar.set_postfix(status(), refresh=False)
        finished_at = time.perf_counter()
    finally:
        for future in pending:
            future.cancel()
        # On success wait for requests still in flight (so none outlives the run); on an error or Ctrl-C don't.
        executor.shutdown(wait=finished_at is not None, cancel_futures=True)
        bar.close()
    return finished_at


class _Run:
    """One session of a self-instruct run (state shared by `generate`'s helpers)."""

    def __init__(self, teacher: Teacher, seeds: list[dict[str, Any]], output_dir: Path, target: int,
                 num_prompt_instructions: int, tasks_per_prompt: int, seed: int, threshold: float) -> None:
        self.teacher, self.seeds, self.target = teacher, seeds, target
        self.num_prompt_instructions, self.tasks_per_prompt = num_prompt_instructions, tasks_per_prompt
        self.seed, self.threshold = seed, threshold
        self.checkpoint = Checkpoint(output_dir / CHECKPOINT_FILE)
        self.pool = [s["instruction"] for s in seeds] + [r["instruction"] for r in self.checkpoint.records]
        self.session = uuid.uuid4().hex[:12]
        self.start = time.perf_counter()
        self.example: dict[str, Any] | None = None

    def ask(self, index: int) -> tuple[int, str, Completion]:
        prompt = request_prompt(self.seeds, self.seed, index, self.num_prompt_instructions,
                                self.tasks_per_prompt)
        stop = stop_strings(self.num_prompt_instructions, self.tasks_per_prompt)
        reply = self.teacher.complete(prompt, stop=stop, seed=request_seed(self.seed, index))
        return index, prompt, reply

    def process(self, index: int, prompt: str, reply: Completion, room: int) -> int:
        """Parse, filter and deduplicate one reply; checkpoint what is kept (at most `room`). Returns kept."""
        from .rouge import filter_similar_detailed

        parsed = parse_completion(reply.text, self.num_prompt_instructions + 1, reply.finish_reason)
        rejections = Counter(parsed.failures)
        rejected: list[tuple[str, str]] = []
        candidates = []
        for task in parsed.tasks:
            reason = filter_reason(task["instruction"])
            if reason is None:
                candidates.append(task)
            else:
                rejections[reason] += 1
                rejected.append((reason, task["instruction"][:200]))
        detail = filter_similar_detailed([t["instruction"] for t in candidates], self.pool, self.threshold,
                                         top_k=10)
        kept = []
        for task, ok, mean, neighbors in zip(candidates, detail.kept, detail.mean_score, detail.neighbors):
            if not ok:
                rejections["too_similar"] += 1
                rejected.append(("too_similar", task["instruction"][:200]))
            elif len(kept) < room:
                kept.append({**task, "most_similar_instructions": dict(neighbors),
                             "avg_similarity_score": float(mean), "request": index})
        request = {"index": index, "session": self.session, "elapsed": time.perf_counter() - self.start,
                   "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                   "generated_tokens": reply.generated_tokens or reply.completion_tokens,
                   "finish_reason": reply.finish_reason, "parsed": len(parsed.tasks), "kept": len(kept),
                   "rejections": dict(rejections), "rejected": rejected, "retries": reply.retries}
        self.checkpoint.append(kept, request)
        self.pool.extend(r["instruction"] for r in kept)
        if self.example is None:
            self.example = {"index": index, "prompt": prompt, "completion": reply.text,
                            "finish_reason": reply.finish_reason, "parsed": parsed.tasks,
                            "parse_failures": dict(parsed.failures)}
        return len(kept)

    def wall_seconds(self, finished_at: float) -> float:
        """This session's time plus the earlier sessions' (each up to its last finished request)."""
        return self.checkpoint.wall_seconds(self.session, finished_at - self.start)


def generate(teacher: Teacher, num_instructions: int, output_dir: str | os.PathLike, *,
             num_prompt_instructions: int = NUM_PROMPT_INSTRUCTIONS, tasks_per_prompt: int = TASKS_PER_PROMPT,
             concurrency: int = 1, seed: int = 42, threshold: float = SIMILARITY_THRESHOLD,
             max_requests: int | None = None, seed_tasks: list[dict[str, Any]] | None = None,
             progress: bool = True, check: bool = True) -> RunResult:
    """Generate `num_instructions` new instructions into `<output_dir>/regen.json` (Alpaca JSON).

    Continues from `<output_dir>/regen.checkpoint.jsonl` if a run was interrupted. `concurrency` requests
    are kept in flight; `max_requests` bounds this session's requests (the run then ends incomplete).
    Metadata (neighbours, rejections, tokens, cost, wall time) goes to `<output_dir>/regen.meta.json`.
    Raises `TeacherUnreachable` before starting if the endpoint does not answer, `TeacherError` when a
    request's retries are spent (kept records stay in the checkpoint).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seeds = seed_tasks if seed_tasks is not None else load_seed_tasks()
    if check:
        teacher.check()
    run = _Run(teacher, seeds, output_dir, num_instructions, num_prompt_instructions, tasks_per_prompt, seed,
               threshold)

    def status() -> dict[str, Any]:
        requests = run.checkpoint.requests
        return {"requests": len(requests), "rejected": sum(sum(r["rejections"].values()) for r in requests)}

    finished_at = run_requests(run.ask, lambda reply, room: run.process(*reply, room=room), num_instructions,
                               kept=len(run.checkpoint.records), next_index=run.checkpoint.next_index(),
                               concurrency=concurrency, max_requests=max_requests, progress=progress,
                               status=status)
    return _finish(run, output_dir, num_instructions, finished_at)


def _finish(run: _Run, output_dir: Path, target: int, finished_at: float) -> RunResult:
    """Write regen.json and regen.meta.json from the checkpoint."""
    entries = run.checkpoint.records[:target]
    records = [{"instruction": e["instruction"], "input": e["input"], "output": e["output"]} for e in entries]
    output_path = save_alpaca(records, output_dir / OUTPUT_FILE)
    requests = run.checkpoint.requests
    rejections, rejected_examples = run.checkpoint.rejections()
    prompt_tokens = sum(r["prompt_tokens"] for r in requests)
    completion_tokens = sum(r["completion_tokens"] for r in requests)
    generated_tokens = sum(r.get("generated_tokens", r["completion_tokens"]) for r in requests)
    cfg = run.teacher.config
    result = RunResult(
        records=records, target=target, requests=len(requests), rejections=dict(rejections),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cost_usd=estimate_cost(cfg.model, prompt_tokens, completion_tokens, cfg.base_url),
        wall_seconds=run.wall_seconds(finished_at), retries=sum(r.get("retries", 0) for r in requests),
        complete=len(records) >= target, output_path=output_path, meta_path=output_dir / META_FILE,
        example=run.example, generated_tokens=generated_tokens, parsed=sum(r.get("parsed", 0) for r in requests))
    meta = {**result.summary(), "teacher": cfg.to_dict(),
            "price_per_million_usd": price_per_million(cfg.model, cfg.base_url),
            "num_prompt_instructions": run.num_prompt_instructions, "tasks_per_prompt": run.tasks_per_prompt,
            "seed": run.seed, "similarity_threshold": run.threshold, "rejected_examples": rejected_examples,
            "example_request": run.example,
            "instructions": [{"instruction": e["instruction"], "most_similar_instructions":
                              e["most_similar_instructions"], "avg_similarity_score": e["avg_similarity_score"]}
                             for e in entries]}
    atomic_write_text(result.meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return result


# ------------------------------------------------------------------------------------------------- CLI

def add_teacher_arguments(p: argparse.ArgumentParser, title: str, max_tokens: int) -> argparse._ArgumentGroup:
    """The options every teacher-driven command shares (endpoint, decoding, retries, concurrency, seed, progress);
    returns the "decoding and run" group for the command's own options. Both spellings work: --base-url, --base_url."""

    def both(name: str) -> list[str]:
        return list(dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"]))

    t = p.add_argument_group(title)
    t.add_argument(*both("base-url"), help="an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    t.add_argument("--model", help="model name at that endpoint (e.g. gpt-4o-mini)")
    t.add_argument("--api", choices=("completions", "chat"), default="completions",
                   help="Completions API (gpt-3.5-turbo-instruct, local servers) or Chat Completions")
    t.add_argument(*both("api-key-env"), default="OPENAI_API_KEY",
                   help="name of the environment variable holding the API key (default: OPENAI_API_KEY)")
    t.add_argument(*both("extra-body"), type=json.loads, metavar="JSON",
                   help="extra request fields as a JSON object (for a `transformers serve` endpoint given by "
                        "--base-url: its LocalServer.sampling_body(), or sampling stays off)")
    t.add_argument("--serve", metavar="MODEL_DIR", help="model folder to serve locally instead of the default")
    t.add_argument(*both("server-threads"), type=int, default=1, help="CPU threads for the local server (default: 1)")
    d = p.add_argument_group("decoding and run")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument(*both("top-p"), type=float, default=1.0)
    d.add_argument(*both("max-tokens"), type=int, default=max_tokens, help="completion length limit per request")
    d.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument(*both("max-requests"), type=int, help="stop after this many requests even if short of the target")
    d.add_argument(*both("request-timeout"), type=float, default=600.0, help="seconds per request")
    d.add_argument(*both("max-retries"), type=int, default=6, help="retries per request on 429/5xx/timeouts")
    d.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each time)")
    p.add_argument(*both("no-progress"), action="store_true", help="no progress bar")
    return d


def open_teacher(args: argparse.Namespace, stack: Any, out: Path) -> Teacher | None:
    """The teacher `add_teacher_arguments`' options name: the endpoint given, else the embedded model (or --serve)
    served locally for as long as `stack` (a contextlib.ExitStack) is open. None when --base-url lacks --model."""
    from .server import serve

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alpaca_helpers.self_instruct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-instructions", type=int, default=100, help="instructions to keep (default: 100)")
    p.add_argument("--output-dir", default="runs/self_instruct",
                   help="folder for regen.json, regen.meta.json and the checkpoint (relative: to the repository)")
    d = add_teacher_arguments(p, "teacher (default: the embedded model served locally)", max_tokens=3072)
    d.add_argument("--num-prompt-instructions", type=int, default=NUM_PROMPT_INSTRUCTIONS)
    d.add_argument("--tasks-per-prompt", type=int, default=TASKS_PER_PROMPT)
    return p


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """A SIGTERM handler that unwinds like Ctrl-C (`with` blocks close: a local server stops)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    import contextlib

    from ..paths import resolve
    from ..precision import PrecisionError
    from .server import ServerError

    args = _parser().parse_args(argv)
    out = resolve(args.output_dir)
    # `kill` (SIGTERM) then unwinds like Ctrl-C: the local server is stopped, the checkpoint is intact.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        with contextlib.ExitStack() as stack:
            teacher = open_teacher(args, stack, out)
            if teacher is None:
                print("error: --model is required with --base-url", file=sys.stderr)
                return 2
            result = generate(teacher, args.num_instructions, out, num_prompt_instructions=args.num_prompt_instructions,
                              tasks_per_prompt=args.tasks_per_prompt, concurrency=args.concurrency, seed=args.seed,
                              max_requests=args.max_requests, progress=not args.no_progress)
    except PrecisionError as e:  # a setting (ALPACA_BF16), like a missing --model
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TeacherError, ServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary()))
    if not result.complete:
        print(f"warning: stopped after {result.requests} requests with {result.kept}/{result.target} kept",
              file=sys.stderr)
        return 3
    return 0

