"""Benchmark: the watermark's reach on the default model, by answer length (what `MIN_WATERMARK_TOKENS` records).

    python benchmarks/bench_watermark_reach.py                         # 44 instructions, answers up to 200 tokens
    python benchmarks/bench_watermark_reach.py --n 8 --max_new_tokens 64 --lengths 8 16 32
    python benchmarks/bench_watermark_reach.py --threads 1          # on a busy shared CPU (see --help)

The first `--n` user-oriented evaluation instructions without input (all 44 by default) are answered twice by the
embedded SmolLM2-135M-Instruct in float32, with and without notebook 05's watermark (key "alpaca-course", gamma
0.25, delta 2), sampled with the demo's slider defaults (temperature 0.7, top_p 0.9, top_k 40;
`demo.decoding.Decoding()`), same seeds for both. Answers end where the demo's would (end of sequence, a new
`### Instruction:`, or `--max_new_tokens`), so fewer answers reach the longer lengths: `n` says how many did.
Lengths count the tokens the detector scores (see `alpaca_helpers.demo.watermark_reach`). Detection means z > 4.
"""

from __future__ import annotations

import platform
import sys
import time

import torch

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.data import load_eval_set
from alpaca_helpers.demo.generate import BASE_MODEL, load_model
from alpaca_helpers.demo.watermark import Watermark
from alpaca_helpers.demo.watermark_reach import detection_by_length, generate_for_reach, shortest_reliable_length

LENGTHS = [8, 16, 24, 32, 48, 64, 96, 128, 160, 192]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=44, help="instructions (default 44: all without input)")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--key", default="alpaca-course", help="watermark key (notebook 05's by default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is far faster on a machine other jobs share")
    args = parser.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1 or min(args.lengths) < 1:
        print("error: --n, --max_new_tokens and every length must be at least 1", file=sys.stderr)
        return 2

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model(BASE_MODEL, dtype=torch.float32)
    watermark = Watermark(key=args.key)
    instructions = [r["instruction"] for r in load_eval_set() if not r["input"]][:args.n]
    marked, unmarked = generate_for_reach(model, tokenizer, instructions, watermark, args.max_new_tokens,
                                          seed=args.seed, batch_size=args.batch_size)
    rows = detection_by_length(marked, unmarked, watermark, args.lengths)
    elapsed = time.perf_counter() - start

    print(f"\n{len(instructions)} instructions, answers up to {args.max_new_tokens} new tokens "
          f"(marked: {min(map(len, marked))}-{max(map(len, marked))} tokens; "
          f"unmarked: {min(map(len, unmarked))}-{max(map(len, unmarked))}); {watermark}, seed {args.seed}")
    print(f"{'length':>6} {'detection':>16} {'n':>3} {'mean z':>7}   {'false positive':>16} {'n':>3} {'mean z':>7}")
    for r in rows:
        print(f"{r['length']:>6} {r['detection']:>8.2f} ± {r['detection_se']:<5.2f} {r['n_marked']:>3} "
              f"{r['mean_z_marked']:>7.2f}   {r['false_positive']:>8.2f} ± {r['false_positive_se']:<5.2f} "
              f"{r['n_unmarked']:>3} {r['mean_z_unmarked']:>7.2f}")
    print(f"\nshortest reliable length (detection >= 0.95, false positives <= 0.01, >= 10 answers): "
          f"{shortest_reliable_length(rows)}")
    print(f"{elapsed:.0f} s on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
