"""Benchmark: Alpaca's incremental ROUGE-L filter, `rouge_score` reference vs `alpaca_helpers.self_instruct.rouge`.

    python benchmarks/bench_rouge.py                 # 20,000 candidates, reference on the first 800
    python benchmarks/bench_rouge.py --n 2000 --ref_n 200 --workers 2

Corpus: deterministic, built from the shipped instruction sets (seed tasks + user-oriented eval
set): each instruction is a recombination of clauses cut from them, 8-24 words; about 10% are
planted near-duplicates of an earlier one (1-3 word edits). Existing pool = the 175 seed tasks,
as in Alpaca. Both filters run in this one process, side by side:

- reference: `rouge_score`'s `_score_lcs` on pre-tokenized instructions, exactly Alpaca's loop but in
  one process, on the first `--ref_n` candidates; its rate is extrapolated (quadratically, by the
  number of pairs) to the full run and to a 52K-instruction run;
- ours: `filter_similar` (decision only, exact pruning) and `filter_similar_detailed` (every pair
  scored, with means and neighbours) on all candidates; both must match the reference's kept mask on
  the subsample and each other on the full run.

"pairs" are the (candidate, pool entry) comparisons the incremental filter makes by definition; the
pruned filter decides many of them without scoring them, and is credited for them all.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import sys
import time

from rouge_score import rouge_scorer

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.data import load_eval_set, load_seed_tasks
from alpaca_helpers.self_instruct.rouge import filter_similar, filter_similar_detailed

ALPACA_RUN = 52_002  # instructions in the released Alpaca data
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z'-]*[.,;:?!]?$")  # keep prose, skip code, numbers and lists


def fragments(texts: list[str]) -> list[list[str]]:
    """Cut texts into clauses (by sentence ends, commas, semicolons and line breaks), as word lists."""
    out = []
    for text in texts:
        for part in re.split(r"(?<=[.?!;,:])\s+|\n+", text):
            words = part.split()
            if 3 <= len(words) <= 30 and all(_PLAIN.match(w) for w in words):
                out.append(words)
    return out


def _edit(words: list[str], vocab: list[str], rng: random.Random) -> list[str]:
    """1-3 random word substitutions, insertions or deletions."""
    words = list(words)
    for _ in range(rng.randint(1, 3)):
        op, i = rng.random(), rng.randrange(len(words))
        if op < 0.5:
            words[i] = rng.choice(vocab)
        elif op < 0.8:
            words.insert(i, rng.choice(vocab))
        elif len(words) > 3:
            del words[i]
    return words


def build_corpus(n: int, dup_fraction: float = 0.1, seed: int = 0) -> list[str]:
    """`n` deterministic instructions of 8-24 words, about `dup_fraction` planted near-duplicates."""
    rng = random.Random(seed)
    records = load_seed_tasks() + load_eval_set()
    openers = [r["instruction"].split() for r in records]  # an instruction's first words: its verb
    parts = fragments([r["instruction"] for r in records] + [r["output"] for r in records])
    vocab = [w for p in parts for w in p]
    corpus: list[list[str]] = []
    while len(corpus) < n:
        if corpus and rng.random() < dup_fraction:
            corpus.append(_edit(rng.choice(corpus), vocab, rng))
            continue
        target = rng.randint(8, 24)
        words = rng.choice(openers)[: rng.randint(2, 5)]
        while len(words) < target:  # then the first 3-10 words of clauses from anywhere in the sets
            words = words + rng.choice(parts)[: rng.randint(3, 10)]
        corpus.append(words[:target])
    return [" ".join(w) for w in corpus]


def reference_filter(candidates: list[str], existing: list[str], threshold: float = 0.7):
    """Alpaca's loop with `rouge_score`, in one process: (kept mask, pairs scored, seconds)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tokenize = scorer._tokenizer.tokenize
    pool = [tokenize(t) for t in existing]
    kept, pairs = [], 0
    start = time.perf_counter()
    for text in candidates:
        tokens = tokenize(text)
        best = max((rouge_scorer._score_lcs(tokens, p).fmeasure for p in pool), default=0.0)
        pairs += len(pool)
        kept.append(best <= threshold)
        if kept[-1]:
            pool.append(tokens)
    return kept, pairs, time.perf_counter() - start


def incremental_pairs(kept: list[bool], n_existing: int) -> int:
    """Comparisons the incremental filter makes: each candidate meets the pool as it stands."""
    pairs, pool = 0, n_existing
    for k in kept:
        pairs += pool
        pool += k
    return pairs


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="candidates in the corpus")
    parser.add_argument("--ref_n", type=int, default=800, help="candidates the reference scores")
    parser.add_argument("--workers", type=int, default=2, help="rapidfuzz threads (-1: all cores)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    existing = [r["instruction"] for r in load_seed_tasks()]
    corpus = build_corpus(args.n)
    lengths = [len(t.split()) for t in corpus]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}")
    print(f"corpus: {len(corpus)} candidates, mean {sum(lengths) / len(lengths):.1f} words; "
          f"pool starts with {len(existing)} seed instructions; threshold 0.7")

    sub = corpus[: args.ref_n]
    ref_kept, ref_pairs, ref_s = reference_filter(sub, existing)
    ours_sub = filter_similar(sub, existing, workers=args.workers)
    detailed_sub = filter_similar_detailed(sub, existing, workers=args.workers).kept
    ref_rate = ref_pairs / ref_s

    t = time.perf_counter()
    kept = filter_similar(corpus, existing, workers=args.workers)
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    detailed = filter_similar_detailed(corpus, existing, workers=args.workers)
    detailed_s = time.perf_counter() - t

    pairs = incremental_pairs(kept, len(existing))
    pairs_52k = incremental_pairs([True] * ALPACA_RUN, len(existing))  # upper bound: all kept
    fig = {
        "n": len(corpus), "ref_n": len(sub), "workers": args.workers,
        "identical_on_subsample": ours_sub == ref_kept and detailed_sub == ref_kept,
        "identical_fast_vs_detailed": kept == detailed.kept,
        "kept": sum(kept), "rejected": len(kept) - sum(kept),
        "ref_pairs": ref_pairs, "ref_seconds": ref_s, "ref_pairs_per_s": ref_rate,
        "pairs": pairs, "fast_seconds": fast_s, "fast_pairs_per_s": pairs / fast_s,
        "detailed_seconds": detailed_s, "detailed_pairs_per_s": pairs / detailed_s,
        "ref_projected_seconds_full": pairs / ref_rate,
        "ref_projected_hours_52k": pairs_52k / ref_rate / 3600,
        "fast_projected_seconds_52k": pairs_52k / (pairs / fast_s),
        "detailed_projected_seconds_52k": pairs_52k / (pairs / detailed_s),
    }
    fig["speedup_fast"] = fig["fast_pairs_per_s"] / ref_rate
    fig["speedup_detailed"] = fig["detailed_pairs_per_s"] / ref_rate

    print(f"reference (rouge_score, 1 process): {len(sub)} candidates, {ref_pairs:,} pairs in "
          f"{ref_s:.1f} s = {ref_rate:,.0f} pairs/s")
    print(f"kept mask identical to the reference on those {len(sub)}: {fig['identical_on_subsample']}")
    print(f"ours, filter_similar ({args.workers} workers): {len(corpus)} candidates, {pairs:,} pairs "
          f"in {fast_s:.2f} s = {fig['fast_pairs_per_s']:,.0f} pairs/s = {fig['speedup_fast']:,.0f}x")
    print(f"ours, filter_similar_detailed (every pair scored): {detailed_s:.2f} s = "
          f"{fig['detailed_pairs_per_s']:,.0f} pairs/s = {fig['speedup_detailed']:,.0f}x")
    print(f"fast and detailed agree on all {len(corpus)}: {fig['identical_fast_vs_detailed']}; "
          f"kept {fig['kept']}, rejected {fig['rejected']}")
    print(f"reference extrapolated (by pairs) to this full run: {fig['ref_projected_seconds_full']:,.0f} s")
    print(f"52K run (all kept, {pairs_52k:,} pairs): reference {fig['ref_projected_hours_52k']:.1f} h; "
          f"ours {fig['fast_projected_seconds_52k']:.0f} s (fast), "
          f"{fig['detailed_projected_seconds_52k']:.0f} s (detailed)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)
    if not (fig["identical_on_subsample"] and fig["identical_fast_vs_detailed"]):
        sys.exit("MISMATCH with the reference")


if __name__ == "__main__":
    main()
