"""The error bars every table of notebook 06 carries: a mean with its standard error, and a paired change.

`mean_se` is the one mean ± SE of the package: notebook 07's per-arm statistics (`understand.stats`) add their
95% interval to it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def mean_se(values: Iterable[float]) -> dict[str, Any]:
    """{mean, se, n}: the mean and its standard error (sample standard deviation / sqrt(n)); None when too few."""
    values = list(values)
    n = len(values)
    return {"mean": statistics.fmean(values) if n else None,
            "se": statistics.stdev(values) / math.sqrt(n) if n > 1 else None, "n": n}


def paired_change(before: Sequence[float | None], after: Sequence[float | None]) -> dict[str, Any]:
    """Mean change (after - before) over the items measured both times, with its paired standard error: both
    sides are measured on the same items, so the change is far more precise than either side alone."""
    return mean_se(b - a for a, b in zip(before, after, strict=True) if a is not None and b is not None)
