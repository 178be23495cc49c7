"""Mean ± standard error per arm, and paired differences against a baseline arm, paired by seed.

Every arm is trained once per seed; seed s of every arm shares the data order, so the difference between two
arms at the same seed cancels part of the seed's luck. The 95% interval of a mean or of a mean difference uses
Student's t with n - 1 degrees of freedom: with 2 seeds it is 12.7 standard errors wide on each side, which is
what 2 seeds can tell.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

# Student's t, 97.5% quantile, for 1..30 degrees of freedom (beyond: the normal quantile, corrected).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (the 95% two-sided interval's factor)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(0.975)  # Cornish-Fisher expansion: within 0.001 of the exact value from df 31 on
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_se(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard error of the mean (sample standard deviation / sqrt(n); None for n < 2), n, and the
    95% interval (None for n < 2)."""
    n = len(values)
    mean = statistics.fmean(values) if n else None
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    half = t_quantile(n - 1) * se if se is not None else None
    return {"mean": mean, "se": se, "n": n, "low": mean - half if half is not None else None,
            "high": mean + half if half is not None else None}


def by_arm_and_seed(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """{arm: {seed: value}} of one metric over result rows (rows whose value is None are left out)."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        value = row["metrics"].get(metric)
        if value is not None:
            out.setdefault(row["arm"], {})[row["seed"]] = float(value)
    return out


def paired_difference(arm: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, Any]:
    """Mean ± SE of arm - baseline over the seeds both have, with the 95% interval and the seeds used."""
    seeds = sorted(set(arm) & set(baseline))
    return {**mean_se([arm[s] - baseline[s] for s in seeds]), "seeds": seeds}


def summarize(rows: Sequence[Mapping[str, Any]], baseline: str, metrics: Sequence[str],
              arms: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per arm and metric: mean ± SE over seeds and the paired difference against `baseline`
    (`diff`, `diff_se`, `diff_low`, `diff_high`, `pairs`; None for the baseline itself)."""
    order = list(arms) if arms is not None else list(dict.fromkeys(r["arm"] for r in rows))
    table = []
    for metric in metrics:
        values = by_arm_and_seed(rows, metric)
        for arm in order:
            if arm not in values:
                continue
            stats = mean_se(list(values[arm].values()))
            row = {"arm": arm, "metric": metric, "n": stats["n"], "mean": stats["mean"], "se": stats["se"],
                   "low": stats["low"], "high": stats["high"], "diff": None, "diff_se": None, "diff_low": None,
                   "diff_high": None, "pairs": 0}
            if arm != baseline and baseline in values:
                d = paired_difference(values[arm], values[baseline])
                row.update(diff=d["mean"], diff_se=d["se"], diff_low=d["low"], diff_high=d["high"], pairs=d["n"])
            table.append(row)
    return table


def told_apart(row: Mapping[str, Any]) -> bool:
    """Whether a `summarize` row's paired difference is told from zero: its 95% interval has width and excludes 0."""
    return row["diff_low"] is not None and bool(row["diff_se"]) and (row["diff_low"] > 0 or row["diff_high"] < 0)


def conclusion(row: Mapping[str, Any], baseline: str) -> str:
    """One sentence on an arm's paired difference, worded as its 95% interval allows."""
    name, metric = row["arm"], row["metric"]
    if row["arm"] == baseline:
        return f"{name} is the baseline for {metric}."
    if row["diff"] is None:
        return f"{name} vs {baseline} on {metric}: no paired seeds, nothing to compare."
    if row["diff_low"] is None:
        return (f"{name} vs {baseline} on {metric}: {row['diff']:+.4g} from {row['pairs']} seed; one seed gives no "
                "error bar, so no conclusion.")
    if row["diff_se"] == 0:
        return (f"{name} vs {baseline} on {metric}: {row['diff']:+.4g} at each of {row['pairs']} seeds; the seeds agree "
                "exactly, so the interval has no width: too few seeds to say how much it varies, no conclusion.")
    interval = f"{row['diff']:+.4g} (95% interval {row['diff_low']:+.4g} to {row['diff_high']:+.4g}, {row['pairs']} seeds)"
    if told_apart(row):
        direction = "higher" if row["diff"] > 0 else "lower"
        return f"{name} gives a {direction} {metric} than {baseline}: {interval}; the interval excludes no difference."
    return f"{name} vs {baseline} on {metric}: {interval}; no difference can be told at this scale."
