"""Checking a judge: does it agree with people, and does it favour a position?

A judge is only worth its verdicts if it agrees with people on the same items. Agreement is reported as the
share of (item, person) pairs on which the judge's outcome (win, tie or loss for the model) equals the
person's, and as Cohen's kappa, the agreement beyond what two raters with these label frequencies would
reach by chance: kappa = (p_o - p_e) / (1 - p_e), 0 for chance, 1 for full agreement. Position bias: every
item is asked in both orders, so a judge with no bias picks position 1 in half of its decisive verdicts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .outcomes import UNPARSED
from .stats import mean_se
from .votes import last_votes


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when chance agreement is already 1 (both
    raters always gave the same single label) or there are no items."""
    n = len(a)
    if n != len(b):
        raise ValueError(f"{n} labels against {len(b)}: kappa needs both raters' labels of the same items")
    if not n:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[label] * count_b[label] for label in count_a) / n ** 2
    return None if expected == 1 else (observed - expected) / (1 - expected)


def judge_human_agreement(judge_results: Iterable[Mapping[str, Any]],
                          human_outcomes: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """Agreement of the judge's outcome per item with each person's vote on it.

    `judge_results`: rows with `id` and `outcome` (unparsed ones are left out); `human_outcomes`: rows with
    `rater`, `id`, `outcome` (`votes.vote_outcomes`). Returns n (compared pairs), n_items, raters,
    percent (share that agree, with its standard error) and kappa, plus the confusion counts.
    """
    judged = {r["id"]: r["outcome"] for r in judge_results if r["outcome"] != UNPARSED}
    compared = [h for h in human_outcomes if h["id"] in judged]
    pairs = [(judged[h["id"]], h["outcome"]) for h in compared]
    agree = mean_se(100.0 * (j == h) for j, h in pairs)
    return {"n": len(pairs), "n_items": len({h["id"] for h in compared}),
            "raters": sorted({h["rater"] for h in compared}), "percent": agree["mean"], "percent_se": agree["se"],
            "kappa": cohen_kappa([j for j, _ in pairs], [h for _, h in pairs]),
            "confusion": {f"judge {j}, people {h}": c for (j, h), c in sorted(Counter(pairs).items())}}


def position_bias(verdicts: Iterable[Sequence[str | None]]) -> dict[str, Any]:
    """Share of a judge's decisive verdicts ("1" or "2") that chose position 1, with its standard error.

    `verdicts`: per item the verdicts of both orders (as `judge_item` and `judge_item_weighted` return them).
    """
    share = mean_se(float(v == "1") for pair in verdicts for v in pair if v in ("1", "2"))
    return {"first_position_share": share["mean"], "se": share["se"], "n": share["n"]}


def human_position_bias(rows: Iterable[Mapping[str, str]], item_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """The same for people: the share of their decisive votes ("A" or "B", each rater's last per item, only on
    `item_ids` when given) that chose the answer shown first (A)."""
    keep = None if item_ids is None else set(item_ids)
    return position_bias([[{"A": "1", "B": "2"}.get(choice)] for (_, item), choice in last_votes(rows).items()
                          if keep is None or item in keep])


JUDGE_POSITION_NOTE = "it picks the first position whatever the answers"


def judge_caveat(bias: Mapping[str, Any], tally: Mapping[str, Any]) -> str | None:
    """A note for a degenerate pairwise judge (None otherwise): one whose decisive verdicts nearly all chose the
    first position (at least 90% of at least 2), or whose both-order tally is all ties."""
    share, n = bias.get("first_position_share"), bias.get("n") or 0
    all_ties = bool(tally.get("n")) and tally.get("ties") == tally.get("n")
    if not ((share is not None and n >= 2 and share >= 0.9) or all_ties):
        return None
    return (f"Note: {JUDGE_POSITION_NOTE} (first position in {share or 0:.0%} of {n} decisive verdicts), so asked "
            "in both orders it contradicts itself and the tally is all or mostly ties. Expected of the default judge: "
            "a 135M model always says '1'. A strong judge at `judge_base_url` (AlpacaEval uses GPT-4 Turbo) "
            "gives decisive, order-independent verdicts.")
