"""The watermark's reach: how often the detector finds it, and how often it flags unmarked text, by answer length.

    marked, unmarked = generate_for_reach(model, tokenizer, instructions, Watermark(), max_new_tokens=200)
    rows = detection_by_length(marked, unmarked, Watermark(), [8, 16, 32, 64, 128])
    shortest_reliable_length(rows)      # the shortest length from which detection is reliable

A length counts the tokens the detector scores: each distinct (previous, token) pair once, so for text that
does not repeat itself one less than its tokens. An answer is measured at length L on its shortest beginning
with L scored tokens; answers that never reach L are left out of that length. `benchmarks/bench_watermark_reach.py`
measures the default model (`watermark.MIN_WATERMARK_TOKENS` records the result).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .generate import generate_batch
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
                        watermark: Watermark, lengths: Sequence[int], z_threshold: float = 4.0) -> list[dict[str, Any]]:
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
                       seed: int = 0, batch_size: int = 8, **decoding) -> tuple[list[list[int]], list[list[int]]]:
    """Answer every instruction twice with the same sampling settings and seeds, with and without `watermark`;
    returns the (marked, unmarked) answers as the detector sees them: the shown text, tokenized again.

    `decoding` goes to `generate_batch` (temperature, top_p, top_k, ...; its defaults are the demo's sliders').
    Batch i is seeded with `seed + i`.
    """
    marked, unmarked = [], []
    starts = range(0, len(instructions), batch_size)
    for i, start in enumerate(tqdm(starts, desc="answers (marked and unmarked)", unit="batch")):
        chunk = list(instructions[start:start + batch_size])
        for mark, out in ((watermark, marked), (None, unmarked)):
            texts = generate_batch(model, tokenizer, chunk, max_new_tokens=max_new_tokens, seed=seed + i,
                                   watermark=mark, **decoding)
            out.extend(tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
    return marked, unmarked
