"""The whole course in bf16 against fp32, side by side: every notebook run twice, once with `ALPACA_BF16=false`
(fp32 everywhere) and once with the default (`auto`: bf16 where the CPU has it), the two runs of each notebook
back to back, the order alternated from notebook to notebook, so that both precisions meet the same machine load.

    python benchmarks/bench_course.py                       # every notebook
    python benchmarks/bench_course.py --only 00 01 --json /tmp/bench_course.json

Each precision gets its own course folder (`runs/bench_course/{fp32,bf16}`), so the chain (02 reads 01's
output, 04 trains on 02's set, 06 evaluates 04's model ...) stays within one precision. Prints one row per
notebook (seconds each way, the ratio) and the course totals; the load average is printed before each pair.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.course import course_notebooks

REPO = Path(__file__).resolve().parents[1]

ARMS = {"fp32": {"ALPACA_BF16": "false"}, "bf16": {}}


def run_one(notebook: Path, arm: str, out: Path) -> float:
    """Run one notebook of one precision's course folder through the course runner; seconds of wall time."""
    env = {k: v for k, v in os.environ.items() if k != "ALPACA_BF16"} | ARMS[arm]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "alpaca_helpers.course", "--only", notebook.name[:2],
                    "--output_dir", str(out / arm)], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="notebook number prefixes (default: all)")
    parser.add_argument("--output_dir", default=str(REPO / "runs" / "bench_course"))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    print("| notebook | fp32 s | bf16 s | bf16 / fp32 | load at start |\n|---|---:|---:|---:|---:|", flush=True)
    for i, book in enumerate(course_notebooks(args.only)):
        load = os.getloadavg()[0]
        order = ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")
        seconds = {arm: run_one(book, arm, out) for arm in order}
        rows.append({"notebook": book.stem, "order": list(order), "load": load, **seconds})
        print(f"| {book.stem} | {seconds['fp32']:.1f} | {seconds['bf16']:.1f} | "
              f"{seconds['bf16'] / seconds['fp32']:.2f} | {load:.1f} |", flush=True)
    total = {arm: sum(r[arm] for r in rows) for arm in ARMS}
    print(f"| **course** | {total['fp32']:.1f} | {total['bf16']:.1f} | **{total['bf16'] / total['fp32']:.2f}** | "
          f"{os.getloadavg()[0]:.1f} at end |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "total": total}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
