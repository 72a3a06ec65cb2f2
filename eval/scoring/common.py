"""Small helpers shared by the scorers."""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable


def percent(numerator: float, denominator: int) -> float:
    """100 * numerator / denominator, or 0.0 for an empty group (never a division error)."""
    return 100.0 * numerator / denominator if denominator else 0.0


def grouped_mean_percent(pairs: Iterable[tuple[Hashable, float]], digits: int | None = 2) -> dict:
    """{group: 100 * mean(score)} over (group, score) pairs, optionally rounded."""
    sums: dict = defaultdict(float)
    counts: dict = defaultdict(int)
    for group, score in pairs:
        sums[group] += score
        counts[group] += 1
    out = {}
    for group in sorted(sums, key=str):
        value = percent(sums[group], counts[group])
        out[str(group)] = round(value, digits) if digits is not None else value
    return out
