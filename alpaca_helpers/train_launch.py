"""Starting a training run from a notebook, and reading back what it wrote.

`launch_command` builds the `accelerate launch` command line for N GPUs (or CPU processes),
`run_streaming` runs it with its output shown live and fails with the log tail, `read_log` loads the
per-step JSONL log.
"""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT


class LaunchError(RuntimeError):
    """The training subprocess failed (the message ends with its last lines) or cannot start."""


def available_gpus() -> int:
    """CUDA devices this machine has (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(gpus: int, gpus_present: int | None = None) -> int:
    """Return `gpus` if this machine has that many (0 means CPU), else raise `LaunchError`."""
    present = available_gpus() if gpus_present is None else gpus_present
    if gpus < 0:
        raise LaunchError(f"gpus must be >= 0 (0 trains on CPU), got {gpus}")
    if gpus > present:
        raise LaunchError(f"gpus={gpus} but this machine has {present} GPU(s): use gpus={present} or fewer "
                          "(gpus=0 trains on CPU)")
    return gpus


def launch_command(train_args: Sequence[str], gpus: int = 0, cpu_processes: int = 1,
                   gpus_present: int | None = None, main_process_port: int | None = None) -> list[str]:
    """The `accelerate launch ... -m alpaca_helpers.train <train_args>` command as a list.

    `gpus` 0 means CPU with `cpu_processes` processes (2 or more shard with FSDP over gloo, even on a
    machine with GPUs); asking for more GPUs than the machine has is an error.
    """
    check_gpus(gpus, gpus_present)
    if cpu_processes < 1:
        raise LaunchError(f"cpu_processes must be >= 1, got {cpu_processes}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]  # bf16 is FSDP's policy, set by train.py
    processes = gpus if gpus else cpu_processes
    if gpus == 0:
        cmd += ["--cpu"] if processes == 1 else ["--multi_gpu"]  # --multi_gpu: the multi-process launcher
        cmd += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // processes))]
    elif processes > 1:
        cmd += ["--multi_gpu"]
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    cmd += ["--num_processes", str(processes), "-m", "alpaca_helpers.train", *train_args]
    if gpus == 0:
        cmd += ["--device", "cpu"]
    return cmd


def show_command(cmd: Sequence[str]) -> str:
    """The command as one copy-pasteable shell line (`python -m accelerate.commands.launch` shown as
    `accelerate launch`)."""
    parts = list(cmd)
    if parts[:3] == [sys.executable, "-m", "accelerate.commands.launch"]:
        parts = ["accelerate", "launch"] + parts[3:]
    return " ".join(shlex.quote(p) for p in parts)


def run_streaming(cmd: Sequence[str], echo: Callable[[str], Any] = print, tail_lines: int = 40,
                  env: dict[str, str] | None = None, cwd: str | os.PathLike = REPO_ROOT) -> list[str]:
    """Run `cmd`, passing each output line (stdout and stderr merged) to `echo` as it comes.

    Progress-bar redraws (carriage returns) are dropped so a notebook shows whole lines only. Returns
    every line; a non-zero exit raises `LaunchError` with the last `tail_lines` lines.
    """
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                          env=environment, bufsize=0) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:  # bytes, split on "\n" only: "\r" redraws stay inside a line
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1]
            if not line.strip():
                continue
            lines.append(line)
            tail.append(line)
            echo(line)
        code = proc.wait()
    if code != 0:
        raise LaunchError(f"training exited with status {code}; last lines:\n" + "\n".join(tail))
    return lines


def read_log(output_dir: str | os.PathLike) -> Any:
    """The per-step training log (`train_log.jsonl`) as a pandas DataFrame."""
    import pandas as pd

    from .train import LOG_FILE

    return pd.read_json(Path(output_dir) / LOG_FILE, lines=True)


def epoch_mean_loss(log: Any) -> Any:
    """Per epoch (1, 2, ...) of a `read_log` frame: mean step loss, first and last step.

    The epoch means show the trend without the batch-to-batch noise of single steps.
    """
    import numpy as np

    epoch = np.ceil(log["epoch"].round(4) - 1e-9).astype(int).clip(lower=1).rename("epoch")
    return log.groupby(epoch).agg(loss=("loss", "mean"), first_step=("step", "min"), last_step=("step", "max"))
