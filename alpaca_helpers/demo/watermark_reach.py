"""The watermark's reach: how often the detector finds it, and how often it flags unmarked text, by answer length;
and its cost: how much less likely the watermarked answers are under the model without the watermark.

    marked, unmarked = generate_for_reach(model, tokenizer, instructions, Watermark(), max_new_tokens=200)
    rows = detection_by_length(marked, unmarked, Watermark(), [8, 16, 32, 64, 128])
    shortest_reliable_length(rows)      # the shortest length from which detection is reliable

A length counts the tokens the detector scores: each distinct (previous, token) pair once, so for text that
does not repeat itself one less than its tokens. An answer is measured at length L on its shortest beginning
with L scored tokens; answers that never reach L are left out of that length. `benchmarks/bench_watermark_reach.py`
measures the default model (`watermark.MIN_WATERMARK_TOKENS` records the result).

    cost = perplexity_cost(model, tokenizer, instructions, Watermark(), max_new_tokens=48)
    cost["perplexity"], cost["ratio"], cost["log_change"]   # plain vs marked, and the paired change per answer
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..prompts import format_prompt
from .decoding import Decoding
from .generate import continuation_nlls, extract_response, generate_batch, generate_tokens, prompt_batch
from .watermark import Watermark, detect_ids


def _first_pair_ends(ids: np.ndarray) -> np.ndarray:
    """For each distinct (previous, token) pair in order of first appearance, the prefix length that first holds it."""
    if ids.size < 2:
        return np.zeros(0, dtype=np.int64)
    pairs = np.stack([ids[:-1], ids[1:]], axis=1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    return np.sort(first) + 2


def scored_prefix(token_ids: Sequence[int] | np.ndarray, length: int) -> np.ndarray | None:
    """The shortest beginning of `token_ids` in which the detector scores `length` tokens (None if it has fewer)."""
    ids = np.asarray(token_ids, dtype=np.int64).ravel()
    ends = _first_pair_ends(ids)
    return ids[:ends[length - 1]] if 0 < length <= len(ends) else None


def _rate(flags: list[bool]) -> tuple[float, float]:
    """A proportion and its binomial standard error (NaN for no answers)."""
    if not flags:
        return math.nan, math.nan
    p = sum(flags) / len(flags)
    return p, math.sqrt(p * (1 - p) / len(flags))


def detection_by_length(marked_ids: Sequence[Sequence[int]], unmarked_ids: Sequence[Sequence[int]],
                        watermark: Watermark, lengths: Sequence[int],
                        z_threshold: float = 4.0) -> list[dict[str, Any]]:
    """For each length L: the share of marked answers with z > `z_threshold` on their first L scored tokens
    (`detection`), the same share of unmarked ones (`false_positive`), with binomial standard errors, mean z-scores
    and how many answers reached L (`n_marked`, `n_unmarked`). Short texts are judged by z alone here (the
    detector's own `min_tokens` gate is off), which is what this measures."""
    rows = []
    for length in lengths:
        if length < 1:
            raise ValueError(f"lengths must be at least 1 token, got {length}")
        row: dict[str, Any] = {"length": int(length)}
        for name, answers, rate in (("marked", marked_ids, "detection"), ("unmarked", unmarked_ids, "false_positive")):
            prefixes = [p for p in (scored_prefix(a, length) for a in answers) if p is not None]
            found = [detect_ids(p, watermark, z_threshold, min_tokens=0) for p in prefixes]
            row[rate], row[f"{rate}_se"] = _rate([f.detected for f in found])
            row[f"mean_z_{name}"] = float(np.mean([f.z for f in found])) if found else math.nan
            row[f"n_{name}"] = len(found)
        rows.append(row)
    return rows


def shortest_reliable_length(rows: Sequence[dict[str, Any]], min_detection: float = 0.95,
                             max_false_positive: float = 0.01, min_answers: int = 10) -> int | None:
    """The smallest measured length from which on, at every longer measured length too, detection is at least
    `min_detection` and false positives at most `max_false_positive` (None if there is none). Lengths with fewer
    than `min_answers` marked or unmarked answers are too thin to judge and are skipped."""
    judged = sorted((r for r in rows if min(r["n_marked"], r["n_unmarked"]) >= min_answers),
                    key=lambda r: r["length"])
    shortest = None
    for row in reversed(judged):
        if row["detection"] < min_detection or row["false_positive"] > max_false_positive:
            break
        shortest = row["length"]
    return shortest


def generate_for_reach(model, tokenizer, instructions: Sequence[str], watermark: Watermark, max_new_tokens: int,
                       seed: int = 0, batch_size: int = 8, **sampling: Any) -> tuple[list[list[int]], list[list[int]]]:
    """Answer every instruction twice with the same sampling settings and seeds, with and without `watermark`;
    returns the (marked, unmarked) answers as the detector sees them: the shown text, tokenized again.

    `sampling` holds the other `Decoding` settings (temperature, top_p, top_k, ...; by default the demo's).
    Batch i is seeded with `seed + i`.
    """
    marked, unmarked = [], []
    starts = range(0, len(instructions), batch_size)
    for i, start in enumerate(tqdm(starts, desc="answers (marked and unmarked)", unit="batch")):
        chunk = list(instructions[start:start + batch_size])
        for mark, out in ((watermark, marked), (None, unmarked)):
            decoding = Decoding(max_new_tokens=max_new_tokens, seed=seed + i, watermark=mark, **sampling)
            texts = generate_batch(model, tokenizer, chunk, decoding=decoding)
            out.extend(tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
    return marked, unmarked


def perplexity_cost(model, tokenizer, instructions: Sequence[str], watermark: Watermark, max_new_tokens: int = 96,
                    seed: int = 0, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> dict[str, Any]:
    """What the watermark costs in perplexity. Every instruction is answered twice, without and with `watermark`,
    in one batched `generate` call (the watermark only on the second copy of each prompt), with the same sampling
    settings and exactly `max_new_tokens` tokens each (no early end, so both sides have the same length). Both
    answers are then scored under the same model *without* the watermark (Kirchenbauer et al. score under a
    larger model; here the model itself judges how natural the text is).

    Returns `perplexity` {plain, marked}: exp(mean loss per token) over all answer tokens of each side, and their
    `ratio` (marked / plain); `log_change`: the paired per-answer change of log-perplexity (marked - plain),
    {mean, se, n} over the n instructions; `tokens`: answer tokens per answer; `texts` {plain, marked}: the
    answers' text, in instruction order. The default sampling (temperature 1, no top-p or top-k cut) is the
    paper's: the watermark shows most there, and costs most.
    """
    prompts = [format_prompt({"instruction": i}) for i in instructions] * 2
    decoding = Decoding(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                        min_new_tokens=max_new_tokens, seed=seed, stop_at_markers=False, watermark=watermark)
    rows = generate_tokens(model, tokenizer, prompts, decoding=decoding,
                           watermark_rows=[False] * len(instructions) + [True] * len(instructions))
    batch = prompt_batch(tokenizer, prompts)
    prompt_rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    scored = continuation_nlls(model, tokenizer, prompt_rows, rows)
    n = len(instructions)
    sides = {"plain": slice(0, n), "marked": slice(n, 2 * n)}
    perplexity = {side: math.exp(sum(x for x, _ in scored[part]) / max(sum(t for _, t in scored[part]), 1))
                  for side, part in sides.items()}
    changes = [m / tm - p / tp for (p, tp), (m, tm) in zip(scored[:n], scored[n:]) if tp and tm]
    return {"perplexity": perplexity, "ratio": perplexity["marked"] / perplexity["plain"],
            "log_change": {"mean": statistics.fmean(changes) if changes else None,
                           "se": statistics.stdev(changes) / math.sqrt(len(changes)) if len(changes) > 1 else None,
                           "n": len(changes)},
            "tokens": max_new_tokens,
            "texts": {side: [extract_response(t) for t in tokenizer.batch_decode(rows[part], skip_special_tokens=True)]
                      for side, part in sides.items()}}


COST_NOISE_NOTE = "too few answers to tell the cost from sampling noise"


def cost_report(cost: dict[str, Any]) -> str:
    """`perplexity_cost`'s result as lines to read: both perplexities and their ratio, the paired change per answer,
    and a note when that change is within two standard errors of zero (too few answers to tell)."""
    ppl, change = cost["perplexity"], cost["log_change"]
    n = change["n"]
    lines = [f"perplexity under the model without the watermark, over all {n} x {cost['tokens']} answer tokens "
             f"of each side: plain {ppl['plain']:.1f}, watermarked {ppl['marked']:.1f} "
             f"({cost['ratio']:.2f} times as high)"]
    if change["mean"] is not None:
        se = f" ± {change['se']:.2f}" if change["se"] is not None else ""
        lines.append(f"change of log-perplexity per answer (watermarked - plain): {change['mean']:+.2f}{se} "
                     f"(mean ± one standard error over n = {n} instructions, each answered both ways)")
    if change["se"] is None or change["mean"] is None or abs(change["mean"]) < 2 * change["se"]:
        lines.append(f"Note: with n = {n} this is within two standard errors of zero: {COST_NOISE_NOTE} (at "
                     "temperature 1 one answer's perplexity varies a lot). More instructions narrow it; "
                     "Kirchenbauer et al., on hundreds of texts, find the cost grows with delta.")
    return "\n".join(lines)
