"""The model's outcome on one item against the reference answer, and their counts.

An outcome is a win, loss or tie for the model, or unparsed (a judge's reply without a verdict). Votes from
people (`votes.vote_outcomes`) and judges (`judge.judge_item`, `weighted_judge.judge_item_weighted`) give
outcomes; `tally` counts them into Alpaca's "90 vs 89" record and a win rate with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MODEL, REFERENCE = "model", "reference"
WIN, LOSS, TIE, UNPARSED = "win", "loss", "tie", "unparsed"


def tally(outcomes: Iterable[str]) -> dict[str, Any]:
    """Wins, losses, ties and unparsed counts, and the model's win rate with its standard error.

    Win rate counts a tie as half a win, over the parsed items; its standard error is the sample standard
    deviation of the per-item scores (1, 0.5, 0) over sqrt(n); both are None when there are too few items
    (0, or 1 for the error). `record` is Alpaca's "90 vs 89" style.
    """
    outcomes = list(outcomes)
    counts = {k: outcomes.count(k) for k in (WIN, LOSS, TIE, UNPARSED)}
    unknown = set(outcomes) - set(counts)
    if unknown:
        raise ValueError(f"unknown outcomes: {sorted(unknown)}")
    scores = [{WIN: 1.0, TIE: 0.5, LOSS: 0.0}[o] for o in outcomes if o != UNPARSED]
    n = len(scores)
    rate = sum(scores) / n if n else None
    se = math.sqrt(sum((s - rate) ** 2 for s in scores) / (n - 1) / n) if n > 1 else None
    return {"wins": counts[WIN], "losses": counts[LOSS], "ties": counts[TIE], "unparsed": counts[UNPARSED],
            "n": n, "win_rate": rate, "win_rate_se": se, "record": f"{counts[WIN]} vs {counts[LOSS]}"}


def tally_by(outcomes: Sequence[str], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`tally` per group (for example per `motivation_app`), groups in order of size."""
    by: dict[str, list[str]] = {}
    for outcome, group in zip(outcomes, groups, strict=True):
        by.setdefault(group, []).append(outcome)
    return {g: tally(by[g]) for g in sorted(by, key=lambda g: (-len(by[g]), g))}


def format_tally(result: Mapping[str, Any]) -> str:
    """One line for a `tally` result, e.g. "90 vs 89 (ties 3, unparsed 0), win rate 0.50 ± 0.04"."""
    line = f"{result['record']} (ties {result['ties']}, unparsed {result['unparsed']})"
    if result["win_rate"] is not None:
        line += f", win rate {result['win_rate']:.2f}"
        if result["win_rate_se"] is not None:
            line += f" ± {result['win_rate_se']:.2f}"
    return line


def mean_words(texts: Iterable[str]) -> float:
    """Average answer length in words (judges tend to favour the longer side)."""
    lengths = [len(t.split()) for t in texts]
    return sum(lengths) / len(lengths) if lengths else 0.0
