"""Intervals for figures measured over a few seeds (``unlearn bench`` and the benchmarks)."""

from __future__ import annotations

import math
import statistics

# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval (0 for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
