"""Summary statistics for the benchmark: percentiles of one repeat, medians across repeats.

Every scenario runs R repeats. Each repeat yields raw samples (latencies, gaps) or one number (a rate);
`summarize` reduces a repeat's samples to p50/p99/mean, and `across_repeats` reports, for every statistic,
the median over the repeats plus the smallest and largest value so the spread stays visible.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

__all__ = ["across_repeats", "linear_slope", "most_at_once", "percentile", "summarize"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linearly interpolated (NumPy's default)."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    weight = rank - low
    return float(sorted_values[low] * (1 - weight) + sorted_values[high] * weight)


def summarize(values: Iterable[float]) -> dict[str, float]:
    """p50, p90, p99, mean, min, max and count of one repeat's samples."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "p50": percentile(data, 50),
        "p90": percentile(data, 90),
        "p99": percentile(data, 99),
        "mean": statistics.fmean(data),
        "min": float(data[0]),
        "max": float(data[-1]),
    }


def across_repeats(repeats: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """For each statistic present in the repeats: median, min and max over the repeats."""
    keys = [key for key in repeats[0] if all(key in rep for rep in repeats)] if repeats else []
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(rep[key]) for rep in repeats if not math.isnan(float(rep[key]))]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def linear_slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (used for RSS in MB per hour over a soak)."""
    if len(points) < 2:
        return math.nan
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    if var_x == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x


def most_at_once(starts: Sequence[float], ends: Sequence[float]) -> int:
    """The largest number of intervals [start, end] that overlap at one moment (a sweep over the ends;
    an interval ending at the moment another starts still counts as overlapping it)."""
    points = sorted([(start, 0) for start in starts] + [(end, 1) for end in ends])
    running = most = 0
    for _, is_end in points:
        running += -1 if is_end else 1
        most = max(most, running)
    return most
