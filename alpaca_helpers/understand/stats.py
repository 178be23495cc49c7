"""Mean ± standard error per arm, and paired differences against a baseline arm, paired by seed.

Every arm is trained once per seed; seed s of every arm shares the data order, so the difference between two
arms at the same seed cancels part of the seed's luck. The 95% interval of a mean or of a mean difference uses
Student's t with n - 1 degrees of freedom: with 2 seeds it is 12.7 standard errors wide on each side, which is
what 2 seeds can tell.

What an interval covers depends on what the seed changes. Where an arm's data is drawn at random with the seed,
the spread over seeds holds the luck of the draw and training noise; where the data is the same at every seed
(all of the pool, the longest N, the best graded), the seed only reorders the same records, and two seeds can
agree to the fourth digit: a narrow interval that says nothing about another draw of the data. `conclusion`
says which, and concludes nothing from fewer than `MIN_SEEDS` seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

from ..evaluate.stats import mean_se

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


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """`evaluate.stats.mean_se` (mean, standard error, n) with the 95% interval, `low` and `high` (None for
    n < 2)."""
    stats = mean_se(values)
    mean, se = stats["mean"], stats["se"]
    half = t_quantile(stats["n"] - 1) * se if se is not None else None
    return {**stats, "low": mean - half if half is not None else None,
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
    return {**mean_interval([arm[s] - baseline[s] for s in seeds]), "seeds": seeds}


def summarize(rows: Sequence[Mapping[str, Any]], baseline: str, metrics: Sequence[str],
              arms: Sequence[str] | None = None,
              data_varies: Mapping[str, bool] | None = None) -> list[dict[str, Any]]:
    """One row per arm and metric: mean ± SE over seeds and the paired difference against `baseline`
    (`diff`, `diff_se`, `diff_low`, `diff_high`, `pairs`; None for the baseline itself).

    `data_varies` says, per arm, whether its training data changes with the seed (a random draw) or is the
    same at every seed (all of the pool, the longest N, the best graded). Each row then carries `covers`: what
    its seed-to-seed spread, and so its interval, is made of (`COVERS`); "unknown" without `data_varies`.
    """
    order = list(arms) if arms is not None else list(dict.fromkeys(r["arm"] for r in rows))
    table = []
    for metric in metrics:
        values = by_arm_and_seed(rows, metric)
        for arm in order:
            if arm not in values:
                continue
            stats = mean_interval(list(values[arm].values()))
            row = {"arm": arm, "metric": metric, "n": stats["n"], "mean": stats["mean"], "se": stats["se"],
                   "low": stats["low"], "high": stats["high"], "diff": None, "diff_se": None, "diff_low": None,
                   "diff_high": None, "pairs": 0, "covers": _covers(data_varies, arm, baseline)}
            if arm != baseline and baseline in values:
                d = paired_difference(values[arm], values[baseline])
                row.update(diff=d["mean"], diff_se=d["se"], diff_low=d["low"], diff_high=d["high"], pairs=d["n"])
            table.append(row)
    return table


MIN_SEEDS = 3  # fewer paired seeds than this give no conclusion, whatever the interval says
COVERS = {  # what the seed-to-seed spread of a paired difference is made of, by `covers`
    "training": "training noise only (the data is the same at every seed; the seed changes the order it is "
                "trained in)",
    "data and training": "the seed's draw of the data and training noise",
    "unknown": "what the seeds change",
}


def _covers(data_varies: Mapping[str, bool] | None, arm: str, baseline: str) -> str:
    if data_varies is None or arm not in data_varies:
        return "unknown"
    varies = data_varies[arm] or (arm != baseline and data_varies.get(baseline, False))
    return "data and training" if varies else "training"


def told_apart(row: Mapping[str, Any]) -> bool:
    """Whether a `summarize` row's paired difference is told from zero: at least `MIN_SEEDS` paired seeds, and
    a 95% interval that has width and excludes 0. Over seeds that vary only training noise, "told apart" is
    about this data, trained in another order, not about another draw of it (`conclusion` says so)."""
    return (row["diff_low"] is not None and bool(row["diff_se"]) and row["pairs"] >= MIN_SEEDS
            and (row["diff_low"] > 0 or row["diff_high"] < 0))


def _decimals(*values: float, digits: int = 3) -> int:
    """Decimals that show the largest of `values` to `digits` significant digits (at least 0)."""
    largest = max((abs(v) for v in values if v), default=0.0)
    return max(0, digits - 1 - math.floor(math.log10(largest))) if largest else digits


def conclusion(row: Mapping[str, Any], baseline: str) -> str:
    """One sentence on an arm's paired difference against `baseline`, rounded to 3 significant digits, saying
    over how many seeds it is and what its 95% interval covers, and concluding only what the interval allows:
    nothing from fewer than `MIN_SEEDS` seeds, and, where no arm's data varies with the seed, only about this
    data (the interval then covers training noise alone)."""
    name, metric, pairs = row["arm"], row["metric"], row["pairs"]
    if name == baseline:
        return f"{name} is the baseline for {metric}."
    if row["diff"] is None:
        return f"{name} vs {baseline} on {metric}: no paired seeds, nothing to compare."
    what = f"{name} − {baseline} on {metric}"
    if row["diff_low"] is None:
        d = _decimals(row["diff"])
        return f"{what}: {row['diff']:+.{d}f} from 1 seed; one seed gives no interval, so no conclusion."
    covers = row.get("covers", "unknown")
    if row["diff_se"] == 0:
        d = _decimals(row["diff"])
        return (f"{what}: {row['diff']:+.{d}f} at each of {pairs} seeds; the seeds agree exactly, so the interval "
                "has no width and says nothing about the spread: no conclusion.")
    d = _decimals(row["diff"], row["diff_low"], row["diff_high"])
    stated = (f"{what}: {row['diff']:+.{d}f}, 95% interval {row['diff_low']:+.{d}f} to {row['diff_high']:+.{d}f} over "
              f"{pairs} paired seeds; it covers {COVERS.get(covers, COVERS['unknown'])}")
    excludes = row["diff_low"] > 0 or row["diff_high"] < 0
    if pairs < MIN_SEEDS:
        return (f"{stated}. {pairs} seeds are too few to conclude anything (at least {MIN_SEEDS} are needed), "
                f"whether or not the interval includes 0.")
    if not excludes:
        return f"{stated}. The interval includes 0: no difference can be told at this scale (no evidence either way)."
    direction = "higher" if row["diff"] > 0 else "lower"
    if covers == "training":
        return (f"{stated}. The interval excludes 0: on this data, {name} gives a {direction} {metric} than "
                f"{baseline} across the training orders tried; another draw of the data is not covered.")
    return f"{stated}. The interval excludes 0: {name} gives a {direction} {metric} than {baseline}."


def conclusions_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """The line under a list of `conclusion`s: how many comparisons are told apart, and, where seeds are too few or
    some intervals cover training noise only, what that means and how to get an answer."""
    compared = [r for r in rows if r["diff"] is not None]
    separated = sum(told_apart(r) for r in compared)
    note = (f"{separated} of {len(compared)} comparisons are told apart (a 95% interval over at least {MIN_SEEDS} "
            "seeds that excludes 0).")
    fewest = min((r["pairs"] for r in compared), default=0)
    if compared and fewest < MIN_SEEDS:
        note += (f" With {fewest} seed{'s' if fewest != 1 else ''} none can be: rerun with more seeds, e.g. "
                 f"seeds=[0, 1, 2, 3, 4], for conclusions.")
    if any(r.get("covers") == "training" for r in compared):
        note += (" Where an arm and the baseline train on the same data at every seed, the interval covers training "
                 "noise only (the order of the records), not another draw of the data.")
    return note


def summary_markdown(table: Sequence[Mapping[str, Any]], arms: Sequence[str], metrics: Sequence[str],
                     digits: int = 3, columns: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """`summarize`'s rows as a Markdown table: per arm (in `arms`' order, those with rows), any extra `columns`
    ({title: {arm: value}}), then each metric's mean ± SE over seeds with the paired difference against the
    baseline and its 95% interval."""
    columns = dict(columns or {})
    cells = {(t["arm"], t["metric"]): t for t in table}

    def cell(t: Mapping[str, Any] | None) -> str:
        if t is None or t["mean"] is None:
            return ""
        text = f"{t['mean']:.{digits}f}" + (f" ± {t['se']:.{digits}f}" if t["se"] is not None else "")
        if t["diff"] is not None and t["diff_low"] is not None:
            text += f" (Δ {t['diff']:+.{digits}f} [{t['diff_low']:+.{digits}f}, {t['diff_high']:+.{digits}f}])"
        return text

    present = {t["arm"] for t in table}
    lines = ["| arm | " + "".join(f"{c} | " for c in columns) + " | ".join(metrics) + " |",
             "|---|" + "---:|" * (len(columns) + len(metrics))]
    for arm in (a for a in arms if a in present):
        extra = "".join(f"{values.get(arm, '')} | " for values in columns.values())
        lines.append(f"| {arm} | {extra}" + " | ".join(cell(cells.get((arm, m))) for m in metrics) + " |")
    return "\n".join(lines)

