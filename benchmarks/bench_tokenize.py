"""Tokenization: Stanford Alpaca's per-example recipe vs our batched `build_dataset`, side by side.

    python benchmarks/bench_tokenize.py [--n 20000] [--max_length 512] [--num_proc 2] [--repeat 2]

The examples are the shipped seed, evaluation and text-davinci-003 records (679 distinct) repeated to `--n`.
Prints examples per second for each approach and their ratio, the 52K-scale projection, and how the
original's labels compare with ours: identical wherever the original is right, and the count (by cause)
where it is wrong.
"""

from __future__ import annotations

import os
import resource
import time

from datasets.utils.logging import disable_progress_bar
from transformers import AutoTokenizer

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.data import load_davinci_predictions, load_eval_set, load_seed_tasks
from alpaca_helpers.models import default_model
from alpaca_helpers.train.tokenize import alpaca_original_tokenize, build_dataset, original_recipe_fault

ALPACA_SIZE = 52_002


def examples(n: int) -> list[dict]:
    pool = load_seed_tasks() + load_eval_set() + load_davinci_predictions()
    return [pool[i % len(pool)] for i in range(n)]


def timed(fn):
    """Run fn(); return (result, wall seconds, CPU seconds of this process and its finished children)."""
    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    wall, c = time.perf_counter(), cpu()
    result = fn()
    return result, time.perf_counter() - wall, cpu() - c


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="examples to tokenize")
    parser.add_argument("--max_length", type=int, default=512, help="token window")
    parser.add_argument("--num_proc", type=int, default=2, help="processes for our second Dataset.map run")
    parser.add_argument("--repeat", type=int, default=2, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()


    disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(default_model())
    records = examples(args.n)
    print(f"{args.n} examples, max_length {args.max_length}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")

    approaches = {
        "original (per example, prompt tokenized twice)":
            lambda: [alpaca_original_tokenize(r, tokenizer, args.max_length) for r in records],
        "ours: build_dataset, num_proc=1":
            lambda: build_dataset(records, tokenizer, max_length=args.max_length, num_proc=1),
        f"ours: build_dataset, num_proc={args.num_proc}":
            lambda: build_dataset(records, tokenizer, max_length=args.max_length, num_proc=args.num_proc),
    }
    best: dict[str, tuple[float, float]] = {}
    results = {}
    for _ in range(args.repeat):
        for name, fn in approaches.items():
            results[name], wall, cpu = timed(fn)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], wall), min(old[1], cpu))
    original, (ds, stats), (ds2, _) = results.values()
    assert ds2["input_ids"] == ds["input_ids"] and ds2["labels"] == ds["labels"]

    ours = {row["example_id"]: row for row in ds.select_columns(["example_id", "input_ids", "labels"])}
    faults: dict[str, int] = {}
    identical = right_but_different = 0
    for i, (record, orig) in enumerate(zip(records, original)):
        fault = original_recipe_fault(record, orig, tokenizer)
        if fault:
            faults[fault] = faults.get(fault, 0) + 1
            continue
        row = ours.get(i)
        if row is not None and (row["input_ids"], row["labels"]) == (orig["input_ids"], orig["labels"]):
            identical += 1
        else:
            right_but_different += 1

    t_orig, c_orig = best[next(iter(best))]
    print(f"\nbest of {args.repeat} alternating rounds; CPU = user + system seconds, all threads and workers")
    print("\n| approach | wall s | examples/s | wall speed-up | CPU s | CPU speed-up | 52K wall projection (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (t, c) in best.items():
        print(f"| {name} | {t:.2f} | {args.n / t:,.0f} | {t_orig / t:.1f}x | {c:.2f} | {c_orig / c:.1f}x "
              f"| {ALPACA_SIZE * t / args.n:.1f} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")
    print(f"ours: kept {stats.kept}, truncated {stats.truncated} (response cut, eos kept), "
          f"dropped {stats.dropped} (prompt leaves no room)")
    print(f"original right and identical to ours: {identical}; original right but different: {right_but_different}")
    print(f"original wrong: {sum(faults.values())} of {args.n}"
          + "".join(f"\n  - {k}: {v}" for k, v in sorted(faults.items())))


if __name__ == "__main__":
    main()
