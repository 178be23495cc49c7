"""bf16 against fp32 on the CPU course, side by side over the same seeds: notebook 04's training and notebook 06's
teacher agreement.

    python benchmarks/bench_precision.py                          # seeds 0,1,2 of the cpu_default preset
    python benchmarks/bench_precision.py --seeds 0 --agreement_items 16 --json /tmp/bench_precision.json

For each seed, both arms run the command notebook 04 runs (`accelerate launch --cpu ... -m alpaca_helpers.train
--config configs/cpu_default.yaml --seed S`), one after the other (fp32 first on even seeds, bf16 first on odd
ones, so a change in the machine's load falls on both arms alike). The fp32 arm runs with `ALPACA_BF16=false`,
the setting that makes a whole course fp32; the bf16 arm with the default (`auto`: bf16 on a CPU with native bf16).
Then notebook 06's teacher agreement (the loss of text-davinci-003's answers under the trained model, on the same
`--agreement_items` answers) is measured on each arm's model in that arm's precision: fp32 loads for the fp32
arm, `auto` loads for the bf16 one, as the course does.

Reported per seed and arm: trained tokens/s of the training loop, final training loss, validation loss, teacher
agreement and its scoring time; then per metric the mean difference bf16 - fp32 over the seeds with its standard
error, and the speed ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.demo.generate import load_model
from alpaca_helpers.evaluate.agreement import agreement, response_losses
from alpaca_helpers.evaluate.answers import eval_subset, evaluation_items
from alpaca_helpers.evaluate.stats import mean_se
from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.precision import FORCE_ENV, native_bf16
from alpaca_helpers.train.config import CONFIGS_DIR
from alpaca_helpers.train.launch import launch_command

ARMS = ("fp32", "bf16")
METRICS = ("trained_tokens_per_s", "final_loss", "eval_loss", "agreement_loss", "agreement_seconds")


def arm_env(arm: str) -> dict[str, str]:
    """This process's environment for an arm: `ALPACA_BF16=false` for fp32, unset (auto) for bf16."""
    env = {k: v for k, v in os.environ.items() if k != FORCE_ENV}
    if arm == "fp32":
        env[FORCE_ENV] = "false"
    return env


def train_arm(arm: str, seed: int, out: Path) -> dict:
    """Notebook 04's training command for one arm and seed; returns its `train_summary.json`."""
    args = ["--config", str(CONFIGS_DIR / "cpu_default.yaml"), "--seed", str(seed), "--output_dir", str(out)]
    proc = subprocess.run(launch_command(args, gpus=0), cwd=REPO_ROOT, env=arm_env(arm), capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"{arm} seed {seed} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("precision:"))
    print(f"  {arm} seed {seed}: {line}", flush=True)
    return json.loads((out / "train_summary.json").read_text())


def teacher_records(items: int) -> list[dict]:
    """Notebook 06's teacher-agreement records: text-davinci-003's answers to a seeded subset (seed 0)."""
    records, reference, _, _ = evaluation_items("user_oriented")
    return [{**records[i], "output": reference[i]} for i in eval_subset(records, items, seed=0)]


def agreement_arm(arm: str, model_dir: str, records: list[dict]) -> tuple[float, float]:
    """(teacher agreement loss, seconds to score) of a trained model, loaded in the arm's precision."""
    saved = os.environ.pop(FORCE_ENV, None)
    if arm == "fp32":
        os.environ[FORCE_ENV] = "false"
    try:
        model, tokenizer = load_model(model_dir)
        start = time.perf_counter()
        loss = agreement(response_losses(model, tokenizer, records, progress=False))["loss"]
        return loss, time.perf_counter() - start
    finally:
        os.environ.pop(FORCE_ENV, None)
        if saved is not None:
            os.environ[FORCE_ENV] = saved


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--agreement_items", type=int, default=64, help="answers scored per model (notebook 06: 32)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not native_bf16("cpu").available:
        print(f"note: {native_bf16('cpu').reason}; the bf16 arm runs in fp32 too")
    seeds = [int(s) for s in args.seeds.split(",")]
    records = teacher_records(args.agreement_items)
    print(f"seeds {seeds}, {len(records)} teacher answers, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            rows[seed] = {}
            for arm in ARMS if seed % 2 == 0 else ARMS[::-1]:
                summary = train_arm(arm, seed, Path(tmp) / f"{arm}_{seed}")
                loss, seconds = agreement_arm(arm, summary["model_dir"], records)
                rows[seed][arm] = {"bf16": summary["bf16"], "trained_tokens_per_s": summary["trained_tokens_per_s"],
                                   "train_seconds": summary["train_seconds"], "final_loss": summary["final_loss"],
                                   "eval_loss": summary["eval_loss"], "agreement_loss": loss,
                                   "agreement_seconds": seconds}
    print("\n| seed | arm | trained tok/s | train s | final loss | validation loss | teacher agreement | scoring s |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|")
    for seed, arms in rows.items():
        for arm in ARMS:
            r = arms[arm]
            print(f"| {seed} | {arm} | {r['trained_tokens_per_s']:.1f} | {r['train_seconds']:.1f} "
                  f"| {r['final_loss']:.4f} | {r['eval_loss']:.4f} | {r['agreement_loss']:.4f} "
                  f"| {r['agreement_seconds']:.1f} |")
    print("\n| metric | fp32 mean | bf16 mean | bf16 - fp32 (mean ± SE over seeds) | bf16 / fp32 |\n"
          "|---|---:|---:|---:|---:|")
    differences = {}
    for metric in METRICS:
        fp32 = [rows[s]["fp32"][metric] for s in seeds]
        bf16 = [rows[s]["bf16"][metric] for s in seeds]
        change = mean_se([b - f for b, f in zip(bf16, fp32)])
        diff, se = change["mean"], change["se"]
        ratio = statistics.fmean(b / f for b, f in zip(bf16, fp32))
        differences[metric] = {"fp32": statistics.fmean(fp32), "bf16": statistics.fmean(bf16), "difference": diff,
                               "se": se, "ratio": ratio}
        print(f"| {metric} | {statistics.fmean(fp32):.4f} | {statistics.fmean(bf16):.4f} | {diff:+.4f} ± "
              f"{se if se is not None else float('nan'):.4f} | {ratio:.2f}x |")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} (1 min), {load[2]:.2f} (15 min)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "differences": differences,
                                               "load_average_end": load}, indent=2))


if __name__ == "__main__":
    main()
