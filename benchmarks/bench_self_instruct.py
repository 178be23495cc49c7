"""Benchmark: self-instruct throughput with several requests in flight vs one at a time.

    python benchmarks/bench_self_instruct.py                  # 6 kept instructions per run, concurrency 4 vs 1
    python benchmarks/bench_self_instruct.py --target 10 --concurrency 8 --rounds 2

One local server (the embedded default model, `transformers serve` with continuous batching, started once) and
the same pipeline settings and seed for every run; each round runs one request at a time, then `--concurrency`
requests in flight, each into a fresh output folder. Reported per run: kept instructions per minute, requests and
completion tokens per minute (tokens are the steadier measure: the 135M teacher's yield per request is noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.self_instruct.pipeline import generate
from alpaca_helpers.self_instruct.server import serve
from alpaca_helpers.self_instruct.teacher import Teacher, TeacherConfig


def run_once(server, concurrency: int, args: argparse.Namespace, out: Path) -> dict:
    teacher = Teacher(TeacherConfig(base_url=server.base_url, model=server.model, temperature=args.temperature,
                                    max_tokens=args.max_tokens, extra_body=server.sampling_body()))
    result = generate(teacher, args.target, out, tasks_per_prompt=args.tasks_per_prompt, concurrency=concurrency,
                      seed=args.seed, max_requests=args.max_requests, progress=False)
    minutes = result.wall_seconds / 60
    return {"concurrency": concurrency, "kept": result.kept, "requests": result.requests,
            "wall_s": round(result.wall_seconds, 1), "kept_per_min": result.kept / minutes,
            "requests_per_min": result.requests / minutes, "tokens_per_min": result.completion_tokens / minutes}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=int, default=6, help="instructions to keep per run")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight in the concurrent runs")
    p.add_argument("--rounds", type=int, default=1, help="(one at a time, concurrent) pairs to run")
    p.add_argument("--tasks_per_prompt", type=int, default=2)
    p.add_argument("--max_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max_requests", type=int, default=200)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--server_threads", type=int, default=1, help="CPU threads of the local server")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"python {sys.version.split()[0]}")
    print(f"settings: target {args.target} kept per run, {args.tasks_per_prompt} tasks per prompt, max_tokens "
          f"{args.max_tokens}, temperature {args.temperature}, seed {args.seed}, "
          f"server threads {args.server_threads}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp, serve(threads=args.server_threads, continuous_batching=True,
                                                     log_path=Path(tmp) / "server.log") as server:
        for r in range(args.rounds):
            for conc in (1, args.concurrency):
                row = run_once(server, conc, args, Path(tmp) / f"round{r}-c{conc}")
                runs.append(row)
                print(f"round {r}, concurrency {conc}: {row['kept']} kept, {row['requests']} requests in "
                      f"{row['wall_s']} s = {row['kept_per_min']:.2f} kept/min, {row['requests_per_min']:.2f} "
                      f"requests/min, {row['tokens_per_min']:.0f} completion tokens/min", flush=True)

    def total(conc: int, key: str) -> float:
        rows = [x for x in runs if x["concurrency"] == conc]
        return sum(x[key] for x in rows) / sum(x["wall_s"] for x in rows) * 60
    ratio = {k: total(args.concurrency, k) / total(1, k) for k in ("kept", "requests")}
    print(f"concurrency {args.concurrency} vs 1 (all rounds pooled): {ratio['kept']:.2f}x kept/min, "
          f"{ratio['requests']:.2f}x requests/min")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "ratio": ratio, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
