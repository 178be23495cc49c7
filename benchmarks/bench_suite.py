"""The test suite of two checkouts side by side: each test file run once in each, the two runs of a file back to back,
the order alternated from file to file, so that both meet the same machine load.

    git worktree add ../alpaca-old f8835e2 && make -C ../alpaca-old setup
    python benchmarks/bench_suite.py --base ../alpaca-old
    python benchmarks/bench_suite.py --base ../alpaca-old --skip test_rehearsal_7b.py --json /tmp/bench_suite.json

Compares the files both checkouts have. Notebook tests (`test_nb*.py`, timed by `bench_course.py`'s kind of run)
and the files named by --skip are left out. Each checkout runs with its own virtual environment (`.venv`) and model
cache (`runs/ci-cache`), offline. Prints one row per file: the wall time of the whole pytest process (start-up
included) and the time pytest reports for its session, each way, and the totals with their ratios. A file that fails
in either checkout is named and left out of the totals.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from alpaca_helpers.cli import ArgumentParser

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SESSION_TIME = re.compile(r" in ([0-9.]+)s")


def common_test_files(base: Path, new: Path, skip: set[str]) -> list[str]:
    """Test files present in both checkouts, without notebook tests and the skipped ones."""
    names = {p.name for p in (base / "tests").glob("test_*.py")} & {p.name for p in (new / "tests").glob("test_*.py")}
    return sorted(n for n in names if not n.startswith("test_nb") and n not in skip)


def run_file(checkout: Path, name: str) -> tuple[float, float] | None:
    """Run one test file in one checkout; (wall seconds, pytest's session seconds), or None if a test failed."""
    env = os.environ | OFFLINE | {"ALPACA_CACHE": str(checkout / "runs" / "ci-cache")}
    start = time.perf_counter()
    done = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"tests/{name}"], cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(f"{name} failed in {checkout}, left out of the totals:\n{done.stdout[-1500:]}", flush=True)
        return None
    found = SESSION_TIME.findall(done.stdout.strip().splitlines()[-1])
    return wall, float(found[-1]) if found else wall


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the other checkout (with its .venv set up)")
    parser.add_argument("--skip", nargs="*", default=[], help="test file names to leave out")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    checkouts = {"base": Path(args.base).resolve(), "new": REPO}
    if not (checkouts["base"] / ".venv" / "bin" / "python").is_file():
        parser.error(f"--base {args.base}: not a checkout with its .venv set up (make -C {args.base} setup)")
    rows = []
    print("| file | base wall s | new wall s | base session s | new session s |", flush=True)
    print("|---|---:|---:|---:|---:|", flush=True)
    for i, name in enumerate(common_test_files(checkouts["base"], REPO, set(args.skip))):
        order = ("base", "new") if i % 2 == 0 else ("new", "base")
        times = {arm: run_file(checkouts[arm], name) for arm in order}
        if None in times.values():
            continue
        rows.append({"file": name, "order": list(order), **{arm: list(t) for arm, t in times.items()}})
        print(f"| {name} | {times['base'][0]:.1f} | {times['new'][0]:.1f} | {times['base'][1]:.1f} | "
              f"{times['new'][1]:.1f} |", flush=True)
    if not rows:
        print("error: no test file passed in both checkouts", file=sys.stderr)
        return 1
    wall = {arm: sum(r[arm][0] for r in rows) for arm in checkouts}
    session = {arm: sum(r[arm][1] for r in rows) for arm in checkouts}
    print(f"| **{len(rows)} files** | {wall['base']:.1f} | {wall['new']:.1f} | {session['base']:.1f} | "
          f"{session['new']:.1f} |")
    print(f"new / base: wall {wall['new'] / wall['base']:.3f}, session {session['new'] / session['base']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall": wall, "session": session}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
