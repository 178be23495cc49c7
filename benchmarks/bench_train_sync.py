"""Gradient sync: `reduce_scatter_every_micro_batch` auto (here: once per step, the plan says it fits) against
true (after every micro-batch), side by side on 2 gloo processes on this CPU.

    python benchmarks/bench_train_sync.py                       # the default model, 2 processes, 4 micro-batches
    python benchmarks/bench_train_sync.py --rounds 1 --steps 3 --json /tmp/bench_train_sync.json

Each round launches both settings one after the other (alternating which goes first) through the same
`accelerate launch` as notebook 04 (`launch_command`, 2 CPU processes, FSDP over gloo); the step times come
from `train_log.jsonl`, each run's first step left out (warm-up). Same data, batches and schedule, so the
losses must agree (the gradient is the same); the ratio of median step times is the figure. On GPUs the
reduce-scatter moves over NVLink or InfiniBand instead of memory copies: see the plan's time projection.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.models import resolve_model
from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train.launch import launch_command
from alpaca_helpers.train.recipe import read_train_log

SETTINGS = {"auto": [], "every micro-batch": ["--reduce_scatter_every_micro_batch", "true"]}


def run(model: str, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    train_args = ["--model_name_or_path", model, "--output_dir", str(out), "--max_examples", str(args.examples),
                  "--global_batch_size", str(args.global_batch),
                  "--per_device_train_batch_size", str(args.micro_batch),
                  "--max_steps", str(args.steps), "--model_max_length", str(args.max_length), "--save_steps", "0",
                  "--val_set_size", "0", "--learning_rate", "1e-4", *extra]
    cmd = launch_command(train_args, gpus=0, cpu_processes=2)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    sync = next(line for line in proc.stdout.splitlines() if line.startswith("plan:"))
    log = read_train_log(out / "train_log.jsonl")
    return {"step_seconds": [r["seconds"] for r in log[1:]], "losses": [r["loss"] for r in log], "plan": sync}


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--micro_batch", type=int, default=1)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    model = resolve_model(args.model)
    print(f"load average at the start: {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]
            for name in order:
                folder = Path(tmp) / f"{round_}_{name.replace(' ', '_')}"
                results[name].append(run(model, folder, args, SETTINGS[name]))
                print(f"round {round_ + 1} {name}: steps {results[name][-1]['step_seconds']}", flush=True)
    medians = {name: statistics.median(s for r in runs for s in r["step_seconds"]) for name, runs in results.items()}
    same = all(abs(a - b) < 1e-4
               for a, b in zip(results["auto"][0]["losses"], results["every micro-batch"][0]["losses"]))
    print(f"\n{results['auto'][0]['plan']}\n")
    print("| gradient sync | median step s | steps timed | vs every micro-batch |\n|---|---:|---:|---:|")
    for name, median in medians.items():
        timed = sum(len(r["step_seconds"]) for r in results[name])
        print(f"| {name} | {median:.2f} | {timed} | {medians['every micro-batch'] / median:.2f}x |")
    print(f"same losses (1e-4): {same}; load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
