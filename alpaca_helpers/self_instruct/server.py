"""Serve any Hugging Face model folder with `transformers serve` as an OpenAI-compatible endpoint.

    with serve() as server:                       # the embedded default model, on CPU
        teacher = Teacher(TeacherConfig(base_url=server.base_url, model=server.model,
                                        extra_body=server.sampling_body()))  # else decoding is greedy

The server is a child process in its own process group, bound to 127.0.0.1 on a free port, with its log
streamed to a file. Leaving the `with` block (normally, on an exception or on Ctrl-C) stops the whole
group; on Linux the child also dies with its parent if the parent is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..models import resolve_model
from ..precision import inference_choice

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """The local server could not start or died; the message names the cause and ends with the log tail."""


@dataclass(frozen=True)
class LocalServer:
    """A running `transformers serve` process."""

    base_url: str  # e.g. http://127.0.0.1:41234/v1 (what the openai client takes)
    model: str  # the model name to put in requests
    port: int
    log_path: Path
    process: subprocess.Popen

    @property
    def root_url(self) -> str:
        return self.base_url.rsplit("/v1", 1)[0]

    def count_tokens(self) -> Callable[[str], int]:
        """A function counting `text`'s tokens with the served model's tokenizer (pass it to `Teacher`), so a reply
        cut at a stop string the server ran past is counted as an API that honours stop strings would count it."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model)
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def sampling_body(self) -> dict[str, str]:
        """Extra request fields that make the server sample (pass as the teacher's `extra_body`).

        `transformers serve` starts from the model's generation config and applies `temperature` and
        `top_p` but never turns sampling on, so a model whose config lacks `do_sample: true` (the default
        model's does) is decoded greedily whatever the temperature. A `generation_config` field replaces
        that config; the request's temperature, top_p, max_tokens and stop still apply on top.
        """
        config: dict = {}
        path = Path(self.model) / "generation_config.json"
        if path.is_file():
            config = json.loads(path.read_text())
        config.pop("transformers_version", None)
        config["do_sample"] = True
        return {"generation_config": json.dumps(config)}


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something already listens on (or holds) `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    # Progress bars write carriage returns; keep only the last state of each line.
    cleaned = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(cleaned[-lines:])


def health_ok(root_url: str, timeout: float = 2.0) -> bool:
    """True if `GET <root_url>/health` answers 200."""
    try:
        with urllib.request.urlopen(f"{root_url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux only: kill the server if the process that started it dies (even by kill -9). SIGKILL, as
    # on SIGTERM uvicorn first finishes the requests in flight, which can take minutes.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def server_command(model: str, port: int, device: str = "cpu", dtype: str | None = None,
                   continuous_batching: bool = False, extra_args: Sequence[str] = ()) -> list[str]:
    """The `transformers serve` command line for `model` on 127.0.0.1:`port`.

    Continuous batching decodes concurrent requests together (about 2x the throughput of one at a time
    on 2 CPU cores). Its limits, as of transformers 5.23: the first request's sampling settings apply
    to all later ones, and stop strings are ignored (the teacher client cuts the text at them).
    """
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        raise ServerError("the `transformers` command is missing: pip install 'transformers[serving]'")
    if dtype is None:
        dtype = inference_choice(device).dtype_name  # bf16 where the device has native bf16, else float32
    cmd = [exe, "serve", model, "--device", device, "--dtype", dtype, "--host", HOST, "--port", str(port),
           "--log-level", "info"]
    if continuous_batching:
        cmd.append("--continuous-batching")
        if device == "cpu" and not any(a.startswith("--cb-") for a in extra_args):
            # Left unset, the paged KV cache takes a share of *all* system memory (9 GB here); 64 pages
            # of 256 tokens hold 16k tokens, plenty for a few concurrent self-instruct requests.
            cmd += ["--cb-num-blocks", "64", "--cb-max-batch-tokens", "2048"]
    else:
        cmd.append("--no-continuous-batching")
    return cmd + list(extra_args)


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def serve(model_dir: str | os.PathLike | None = None, *, port: int | None = None, device: str = "cpu",
          dtype: str | None = None, threads: int | None = 1, continuous_batching: bool = False,
          log_path: str | os.PathLike | None = None, startup_timeout: float = 180.0,
          extra_args: Sequence[str] = ()) -> Iterator[LocalServer]:
    """Run `transformers serve <model_dir>` on 127.0.0.1 for the duration of a `with` block.

    `model_dir` is any model folder (default: the embedded default model); `port` defaults to a free one;
    `continuous_batching` decodes concurrent requests together, at the cost of per-request settings (see
    `server_command`): turn it on when every request uses the same sampling settings (self-instruct does);
    `threads` sets the server's CPU threads (OMP_NUM_THREADS; None: torch's default). One thread is the
    default: a 135M model gains little from more, and with more it slows down tenfold when other
    processes share the cores (measured on 2 busy cores). The log goes to `log_path` (default: a
    temporary file). Raises `ServerError` (with the log tail) if the port is taken, the server exits, or
    `/health` does not answer within `startup_timeout` seconds.
    """
    model = resolve_model(None if model_dir is None else str(model_dir))
    if port is None:
        port = free_port()
    elif port_in_use(port):
        raise ServerError(f"port {port} on {HOST} is already in use: pick another port or leave it unset")
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="alpaca-serve-")) / "server.log"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    if Path(model).is_dir():
        env["HF_HUB_OFFLINE"] = "1"  # a local folder needs nothing from the Hub
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if dtype is None:
        choice = inference_choice(device)
        print(f"transformers serve {Path(model).name} on {device}, {choice.line('precision')}", flush=True)
        dtype = choice.dtype_name
    cmd = server_command(model, port, device, dtype, continuous_batching, extra_args)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    server = LocalServer(base_url=f"http://{HOST}:{port}/v1", model=model, port=port, log_path=log_path,
                         process=proc)
    try:
        _wait_healthy(server, startup_timeout)
        yield server
    finally:
        _stop(proc)


def _wait_healthy(server: LocalServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            tail = log_tail(server.log_path)
            cause = f"port {server.port} is already in use" if "address already in use" in tail.lower() \
                else f"the server exited with code {code}"
            raise ServerError(f"transformers serve failed to start: {cause}. Log {server.log_path}, last lines:\n"
                              f"{tail}")
        if health_ok(server.root_url):
            return
        time.sleep(0.25)
    raise ServerError(f"transformers serve did not answer {server.root_url}/health within {timeout:.0f} s. "
                      f"Log {server.log_path}, last lines:\n{log_tail(server.log_path)}")
