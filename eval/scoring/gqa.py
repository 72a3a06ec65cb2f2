"""GQA: exact match on balanced questions after LLaVA-1.5's preparation of predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from eval.scoring.common import grouped_mean_percent, percent


def gqa_prepare(text: str) -> str:
    """LLaVA's `convert_gqa_for_eval.py`: strip trailing periods, lowercase."""
    return text.rstrip(".").lower()


@dataclass(frozen=True)
class GQAItem:
    """A balanced GQA question: gold answer, structural / semantic type, prediction."""

    answer: str
    prediction: str | None
    structural: str = ""
    semantic: str = ""


def gqa_metrics(items: Sequence[GQAItem]) -> dict:
    """Accuracy, binary (structural type verify/logical/choose/compare) vs open (query) accuracy and
    per-type accuracy, as percentages with 2 decimals (the official script prints %.2f)."""
    right = [i.prediction is not None and gqa_prepare(i.prediction) == i.answer for i in items]
    open_ = [r for i, r in zip(items, right) if i.structural == "query"]
    binary = [r for i, r in zip(items, right) if i.structural != "query"]
    return {
        "overall": round(percent(sum(right), len(items)), 2),
        "binary": round(percent(sum(binary), len(binary)), 2),
        "open": round(percent(sum(open_), len(open_)), 2),
        "per_structural_type": grouped_mean_percent((i.structural, float(r)) for i, r in zip(items, right)),
        "per_semantic_type": grouped_mean_percent((i.semantic, float(r)) for i, r in zip(items, right)),
    }
