"""The statistics every benchmark and figure-recording test uses, so tail figures across docs compare.

One percentile definition (nearest rank on the sorted samples, ``round(q * (n - 1))``), one spread of
repeated measurements (median, min, max), one markdown table.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of the samples; ValueError for none."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no samples")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Repeated measurements of one figure: their median and range."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
