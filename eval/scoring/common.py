"""Small helpers shared by the scorers."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable, Iterable


def percent(numerator: float, denominator: int) -> float:
    """100 * numerator / denominator (the VQA evaluation's order of operations), 0.0 for an empty group."""
    return 100.0 * numerator / denominator if denominator else 0.0


def fraction_percent(numerator: float, denominator: int) -> float:
    """(numerator / denominator) * 100, 0.0 for an empty group.

    Most reference scripts take the fraction first; the two orders can differ in the last bit, which
    can flip a 2-decimal rounding, so each scorer uses its reference's order.
    """
    return numerator / denominator * 100.0 if denominator else 0.0


def grouped_mean_percent(pairs: Iterable[tuple[Hashable, float]], digits: int | None = 2,
                         to_percent: Callable[[float, int], float] = percent) -> dict:
    """{group: mean score as a percentage} over (group, score) pairs, optionally rounded."""
    sums: dict = defaultdict(float)
    counts: dict = defaultdict(int)
    for group, score in pairs:
        sums[group] += score
        counts[group] += 1
    out = {}
    for group in sorted(sums, key=str):
        value = to_percent(sums[group], counts[group])
        out[str(group)] = round(value, digits) if digits is not None else value
    return out
