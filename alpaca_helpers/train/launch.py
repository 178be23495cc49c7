"""Starting a training run from a notebook, and reading back what it wrote.

`check_inputs` finds the model's weights and the data before anything starts, `launch_command` builds the
`accelerate launch` command line for N GPUs (or CPU processes), `run_streaming` runs it with its output shown
live and fails with the ranks' own `error:` line and the log tail, `read_log` loads the per-step JSONL log.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import try_to_load_from_cache

from ..cli import ArgumentParser
from ..data import AlpacaFormatError, DataSourceError
from ..files import atomic_write_text
from ..models import load_model_config
from ..paths import REPO_ROOT, cache_dir
from ..precision import NativeBf16, native_bf16
from .allocator import allocator_default
from .batches import load_records
from .config import check_run
from .plan import PlanError, checkpoint_disk, format_plan, load_model_shape, refusal, suggestions, time_plan
from .recipe import LOG_FILE, memory_budget_gib, memory_plan_for_run, read_train_log
from .tokenize import check_tokenizer


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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # safetensors only: no pickles


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def has_weights(resolved: str) -> bool:
    """Whether safetensors weights of a model (a local folder or Hub name, as `models.resolve_model` gives it)
    are at hand: in the folder, in the Hub cache, or, online, on the Hub."""
    from transformers.utils.hub import has_file

    offline = _hub_offline()
    if has_file(resolved, WEIGHT_FILES[0], local_files_only=offline):
        return True
    if not has_file(resolved, WEIGHT_FILES[1], local_files_only=offline):
        return False
    if not offline:
        return True
    index = (Path(resolved) / WEIGHT_FILES[1] if Path(resolved).is_dir()
             else try_to_load_from_cache(resolved, WEIGHT_FILES[1]))
    shards = set(json.loads(Path(index).read_text())["weight_map"].values())
    return all(has_file(resolved, shard, local_files_only=True) for shard in shards)


def check_tokenizer_for(resolved: str, name: str, model_config: Any, prompt_format: str, source: str) -> Any:
    """The model's tokenizer, loaded and checked as training will use it (`tokenize.check_tokenizer`, the prompt
    format, its size against the model's embeddings); a one-line `LaunchError` naming the tokenizer otherwise."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError, TypeError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LaunchError(f"model {name} (from {source}) has no tokenizer that loads here ({reason}); a model "
                          "folder needs its tokenizer files (tokenizer.json or tokenizer.model) beside config.json"
                          ) from None
    where = f"the tokenizer of {name} ({type(tokenizer).__name__}, from {source})"
    try:
        check_tokenizer(tokenizer)
    except ValueError as e:
        raise LaunchError(f"{where} cannot be trained on: {e}") from None
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise LaunchError(f"{where} has no chat template: use prompt_format alpaca (a base model usually has none)")
    rows = getattr(model_config, "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        raise LaunchError(f"{where} has {len(tokenizer):,} tokens but the model's embeddings only {rows:,} rows: "
                          "the tokenizer is not this model's")
    return tokenizer


def check_inputs(config: Any, source: str = "the preset") -> int:
    """Before launching: the model's config.json, safetensors weights and tokenizer, and the training data, are
    at hand (a local folder or file, the Hugging Face caches, or the Hub when online), and the tokenizer can be
    trained on (`check_tokenizer_for`). Returns the number of records; anything missing or refused is a
    one-line `LaunchError` saying what and which parameter to set."""
    name = config.model_name_or_path
    other = ("set model_name_or_path to a local folder (papermill: -p model_name_or_path /path/to/model), or "
             "-p model_name_or_path default for the embedded 135M model")
    try:
        resolved, model_config = load_model_config(name)
    except FileNotFoundError as e:
        raise LaunchError(f"model (from {source}) {e}; {other}") from None
    if not has_weights(resolved):
        where = "not in the Hugging Face cache and HF_HUB_OFFLINE is set" if _hub_offline() else "none on the Hub"
        raise LaunchError(f"model {name} (from {source}) has no safetensors weights here ({where}); {other}")
    check_tokenizer_for(resolved, name, model_config, config.prompt_format, source)
    try:
        records = load_records(config.data_path, config.max_examples, config.seed, config.data_columns)
    except (DataSourceError, AlpacaFormatError, FileNotFoundError) as e:
        raise LaunchError(f"data (from {source}) {e}; set data_path to a local Alpaca file or "
                          "folder (papermill: -p data_path alpaca_data.json), or -p data_path seed") from None
    return len(records)


# Our launches read this file instead of the user's `accelerate config` default (whose `gpu_ids`,
# mixed precision or FSDP plugin settings would otherwise leak into every run); the command line
# names everything else explicitly.
ACCELERATE_CONFIG = """\
# Written by alpaca_helpers.train.launch: the settings of our `accelerate launch` commands (the command
# line passes the rest). bf16 is FSDP's policy in alpaca_helpers.train, not accelerate's mixed precision.
compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
mixed_precision: 'no'
gpu_ids: all
enable_cpu_affinity: false
"""
DEFAULT_MULTI_MACHINE_PORT = 29500  # every machine must name the same port, so it cannot be picked freely


def accelerate_config_file() -> Path:
    """Our accelerate config file (written once under the cache folder)."""
    path = cache_dir() / "accelerate_launch.yaml"
    if not path.is_file() or path.read_text() != ACCELERATE_CONFIG:
        atomic_write_text(path, ACCELERATE_CONFIG)
    return path


def free_port() -> int:
    """A TCP port nobody listens on now (so two runs on one machine do not collide on 29500)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def usable_cpus() -> int:
    """CPU cores this process may run on (a SLURM or container allocation, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def launch_environment(overrides: Mapping[str, str] | None = None,
                       base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The training processes' environment: `base` (this process's by default), then unbuffered output and no
    tokenizer threads, then `overrides`; plus the allocator's expandable segments unless set (`allocator_default`)."""
    env = {**(os.environ if base is None else base), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           **(overrides or {})}
    return {**env, **allocator_default(env)}


def launch_command(train_args: Sequence[str], gpus: int = 0, cpu_processes: int = 1,
                   gpus_present: int | None = None, main_process_port: int | None = None,
                   num_machines: int = 1, machine_rank: int = 0, main_process_ip: str | None = None) -> list[str]:
    """The `accelerate launch ... -m alpaca_helpers.train <train_args>` command as a list.

    `gpus` (per machine) 0 means CPU with `cpu_processes` processes (2 or more shard with FSDP over gloo,
    even on a machine with GPUs); asking for more GPUs than the machine has is an error. With
    `num_machines` > 1 the same command runs on every machine with its own `machine_rank`, all naming the
    first machine's `main_process_ip` and `main_process_port` (29500 unless given); the global batch
    is then split over all processes of all machines. Each process gets an explicit share of this machine's
    cores as its thread count (accelerate gives GPU processes 1 thread), our accelerate config instead of the
    user's default, and on one machine a free port unless one is given.
    """
    check_gpus(gpus, gpus_present)
    if cpu_processes < 1:
        raise LaunchError(f"cpu_processes must be >= 1, got {cpu_processes}")
    if num_machines < 1:
        raise LaunchError(f"num_machines must be >= 1, got {num_machines}")
    if not 0 <= machine_rank < num_machines:
        raise LaunchError(
            f"machine_rank must be in 0..{num_machines - 1} for {num_machines} machine(s), got {machine_rank}")
    if num_machines > 1 and not main_process_ip:
        raise LaunchError("several machines need main_process_ip: the address of machine_rank 0, which all can reach")
    if main_process_port is not None and not 0 < main_process_port < 65536:
        raise LaunchError(f"main_process_port must be in 1..65535, got {main_process_port}")
    per_machine = gpus if gpus else cpu_processes
    total = total_processes(gpus, cpu_processes, num_machines)
    if main_process_port is None:
        main_process_port = free_port() if num_machines == 1 else DEFAULT_MULTI_MACHINE_PORT
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_file()),
           "--mixed_precision", "no", "--dynamo_backend", "no"]  # bf16 is FSDP's policy, set by train.py
    cmd += ["--cpu"] if gpus == 0 and total == 1 else ["--gpu_ids", "all"] if gpus else []
    cmd += ["--num_cpu_threads_per_process", str(max(1, usable_cpus() // per_machine)),
            "--num_machines", str(num_machines)]
    if num_machines > 1:
        cmd += ["--machine_rank", str(machine_rank), "--main_process_ip", str(main_process_ip)]
    cmd += ["--main_process_port", str(main_process_port)]
    cmd += ["--multi_gpu"] if total > 1 else []  # the multi-process launcher (torchrun), also for CPU processes
    cmd += ["--num_processes", str(total), "-m", "alpaca_helpers.train", *train_args]
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

    Progress-bar redraws (carriage returns) are dropped so a notebook shows whole lines only. The process
    gets `launch_environment(env)`. Returns every line; a non-zero exit raises `LaunchError` with the last
    `tail_lines` lines.
    """
    environment = launch_environment(env)
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
        errors = error_lines(lines)
        reason = f": {errors[0]}" + (f" (and {len(errors) - 1} more error line(s) below)" if len(errors) > 1 else "") \
            if errors else ""
        raise LaunchError(f"training exited with status {code}{reason}; last lines:\n" + "\n".join(tail))
    return lines


_ERROR_LINE = re.compile(r"^(?:\[(?:default)?rank\d+\]:\s*)?error: (.+)$")


def error_lines(lines: Sequence[str]) -> list[str]:
    """The distinct `error: ...` messages the ranks printed (each rank prints the same one; torchrun may prefix
    `[rank0]:`), in order: the reason a run failed, which torchelastic's closing summary does not give."""
    found = (_ERROR_LINE.match(line.strip()) for line in lines)
    return list(dict.fromkeys(m.group(1) for m in found if m))


def read_log(output_dir: str | os.PathLike) -> Any:
    """The per-step training log (`train_log.jsonl`) as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(read_train_log(Path(output_dir) / LOG_FILE))  # a torn last line is left out


def total_processes(gpus: int, cpu_processes: int = 1, num_machines: int = 1) -> int:
    """Processes of the whole run (what the global batch is split over): GPUs per machine, or the CPU
    processes when `gpus` is 0, times the machines."""
    return (gpus or cpu_processes) * num_machines


def launch_summary(config: Any, gpus: int, cpu_processes: int = 1, num_machines: int = 1,
                   gpu_memory_gb: float | None = None, num_examples: int | None = None, gpu_name: str | None = None,
                   gpu_bf16: bool | None = None, mfu: float = 0.35) -> str:
    """The launch summary: what a run will take, before it is launched. Its memory plan (`alpaca_helpers.train.plan`)
    as `train` counts it: per GPU against this machine's GPU memory; on CPU, per process against this machine's
    RAM. The batch is split over all processes of all machines. Then the checkpoints' disk and, with
    `num_examples`, on GPUs, the time projection at `mfu`.

    `gpu_memory_gb`, `gpu_name` and `gpu_bf16` describe GPUs this machine does not have (planning ahead);
    unset, this machine's. Reads only the model's config.json (and its tokenizer when at hand). With
    per_device_train_batch_size auto the plan chooses the micro-batch and says why.

    A run the plan says does not fit its devices is refused here, before anything loads: the plan is printed and
    a one-line `LaunchError` gives the planned figure, the devices' memory and the first change that fits
    (`plan.refusal`), unless the config's `ignore_plan` is set.
    """
    import torch

    world = total_processes(gpus, cpu_processes, num_machines)
    if gpu_bf16 is None:
        native = native_bf16("cuda" if gpus > 0 else "cpu")
    else:
        native = NativeBf16(gpu_bf16, "as given for the planned GPUs")
    run = check_run(config, world, on_gpu=gpus > 0, native=native)
    if gpu_memory_gb is None:
        device = torch.device("cuda", 0) if gpus else torch.device("cpu")
        gpu_memory_gb = memory_budget_gib(device, world // num_machines)
    if gpus and gpu_name is None and torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(0)
    shape = load_model_shape(config.model_name_or_path)
    memory = memory_plan_for_run(config, shape, run, world, num_machines, gpu_memory_gb, "gpu" if gpus else "cpu",
                                 gpu_name if gpus else None)
    advice = suggestions(shape, memory)
    disk = checkpoint_disk(memory, config.save_total_limit, 2 if config.save_dtype == "bfloat16" else 4)
    timing = None
    if gpus and num_examples and gpu_name:
        try:
            timing = time_plan(shape, memory, num_examples, config.num_train_epochs, mfu, gpu_name)
        except PlanError:  # a GPU whose peak or links the plan does not know: no projection
            timing = None
    text = format_plan(memory, advice, disk, timing)
    refused = None if getattr(config, "ignore_plan", False) else refusal(memory, advice)
    if refused:
        print(text, flush=True)  # the whole plan above the one-line error
        raise LaunchError(refused)
    return text


def epoch_mean_loss(log: Any) -> Any:
    """Per epoch (1, 2, ...) of a `read_log` frame: mean step loss, first and last step.

    The epoch means show the trend without the batch-to-batch noise of single steps.
    """
    epoch = np.ceil(log["epoch"].round(4) - 1e-9).astype(int).clip(lower=1).rename("epoch")
    return log.groupby(epoch).agg(loss=("loss", "mean"), first_step=("step", "min"), last_step=("step", "max"))


def main(argv: list[str] | None = None) -> int:
    """`python -m alpaca_helpers.train.launch [launch options] -- <train flags>`: print the launch command
    and run it in place of this process (one per machine under SLURM: `scripts/slurm_train.sbatch`)."""
    parser = ArgumentParser(
        prog="python -m alpaca_helpers.train.launch",
        description="Start alpaca_helpers.train under `accelerate launch` on this machine; the flags after "
                    "`--` go to the training script.")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per machine (default: all present; 0 = CPU)")
    parser.add_argument("--cpu_processes", type=int, default=1, help="CPU processes per machine when gpus=0")
    parser.add_argument("--num_machines", type=int, default=1)
    parser.add_argument("--machine_rank", type=int, default=0)
    parser.add_argument("--main_process_ip", default=None, help="address of machine_rank 0 (several machines)")
    parser.add_argument("--main_process_port", type=int, default=None,
                        help=f"free port on one machine; {DEFAULT_MULTI_MACHINE_PORT} on several unless given")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    try:
        cmd = launch_command(argv[split + 1:], gpus=available_gpus() if args.gpus is None else args.gpus,
                             cpu_processes=args.cpu_processes, main_process_port=args.main_process_port,
                             num_machines=args.num_machines, machine_rank=args.machine_rank,
                             main_process_ip=args.main_process_ip)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(show_command(cmd), flush=True)
    os.execve(cmd[0], cmd, launch_environment())  # signals (scancel, Ctrl-C) then reach accelerate directly


if __name__ == "__main__":
    raise SystemExit(main())
