"""GQA: exact match on balanced questions after LLaVA-1.5's preparation of predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from eval.scoring.common import fraction_percent, grouped_mean_percent


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
    """Accuracy, binary (structural type other than query) vs open (query) accuracy and per-type
    accuracy, as the official `eval.py` prints them: mean * 100, 2 decimals."""
    right = [i.prediction is not None and gqa_prepare(i.prediction) == i.answer for i in items]
    open_ = [r for i, r in zip(items, right) if i.structural == "query"]
    binary = [r for i, r in zip(items, right) if i.structural != "query"]
    return {
        "overall": round(fraction_percent(sum(right), len(items)), 2),
        "binary": round(fraction_percent(sum(binary), len(binary)), 2),
        "open": round(fraction_percent(sum(open_), len(open_)), 2),
        "per_structural_type": grouped_mean_percent(((i.structural, float(r)) for i, r in zip(items, right)),
                                                    to_percent=fraction_percent),
        "per_semantic_type": grouped_mean_percent(((i.semantic, float(r)) for i, r in zip(items, right)),
                                                  to_percent=fraction_percent),
    }
