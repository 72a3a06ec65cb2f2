"""GQA: the official `eval.py` on balanced questions after LLaVA-1.5's preparation of predictions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from eval.scoring.common import fraction_percent, grouped_mean_percent

# Steps `getStepsNum` leaves out: a semantic step whose "operation: argument" contains one of these.
_NOT_A_STEP = ("exist", "query: name", "choose name")


def gqa_prepare(text: str) -> str:
    """LLaVA's `convert_gqa_for_eval.py`: strip trailing periods, lowercase."""
    return text.rstrip(".").lower()


def gqa_words(question: str) -> int:
    """`getWordsNum`: words of the question text (whitespace split)."""
    return len(question.split())


def gqa_steps(semantic: Sequence[dict]) -> int:
    """`getStepsNum`: steps of the question's semantic program, without those whose "operation: argument"
    contains "exist", "query: name" or "choose name" (the final querying step adds no reasoning)."""
    return len([step for step in semantic
                if not any(o in f"{step['operation']}: {step['argument']}" for o in _NOT_A_STEP)])


@dataclass(frozen=True)
class GQAItem:
    """A balanced GQA question: gold answer, structural / semantic type, prediction, and what the official
    length and distribution metrics need (words, reasoning steps, `groups.global`)."""

    answer: str
    prediction: str | None
    structural: str = ""
    semantic: str = ""
    words: int = 0
    steps: int = 0
    global_group: str | None = None


def gqa_chi_square(items: Sequence[GQAItem], predicted: Sequence[str | None]) -> float | None:
    """`chiSquare(dist["gold"], dist["predicted"])`: per `groups.global` group (questions with a null group are
    left out), sum over the group's gold answers a of (o - e)^2 / e, e = questions whose gold answer is a,
    o = predictions equal to a (predicted answers that are no gold answer of the group add nothing); the group
    sums are averaged weighted by the group's question count. Every group counts, however few questions it has.
    None where no question has a group (the official script divides by zero there)."""
    gold: dict = defaultdict(lambda: defaultdict(int))
    guessed: dict = defaultdict(lambda: defaultdict(int))
    for item, prediction in zip(items, predicted):
        if item.global_group is None:
            continue
        gold[item.global_group][item.answer] += 1
        if prediction is not None:  # a missing prediction (the official script refuses the file) matches no answer
            guessed[item.global_group][prediction] += 1
    sum_score, sum_overall = 0.0, 0
    for group, answers in gold.items():
        score, overall = 0.0, 0
        for answer, e in answers.items():
            o = guessed[group].get(answer, 0)
            score += float(o - e) ** 2 / e
            overall += e
        sum_score += score * overall
        sum_overall += overall
    return float(sum_score) / sum_overall if sum_overall else None


def _by_number(items: Sequence[GQAItem], right: Sequence[bool], key) -> dict:
    """{n: {"accuracy": avg * 100 (2 decimals), "questions": count}} in increasing n, as `eval.py` prints
    "Accuracy / steps number" and "Accuracy / words number"."""
    groups: dict[int, list[bool]] = defaultdict(list)
    for item, ok in zip(items, right):
        groups[key(item)].append(ok)
    return {str(n): {"accuracy": round(fraction_percent(sum(groups[n]), len(groups[n])), 2),
                     "questions": len(groups[n])} for n in sorted(groups)}


def gqa_metrics(items: Sequence[GQAItem]) -> dict:
    """What GQA's `eval.py --tier testdev_balanced` prints from the questions file alone: accuracy, binary
    (structural type other than query) and open (query) accuracy, accuracy per structural / semantic type, per
    number of reasoning steps and per number of question words (avg * 100, 2 decimals), and the distribution
    score (chi-square / 100, 2 decimals, lower is better)."""
    predicted = [None if i.prediction is None else gqa_prepare(i.prediction) for i in items]
    right = [p is not None and p == i.answer for i, p in zip(items, predicted)]
    open_ = [r for i, r in zip(items, right) if i.structural == "query"]
    binary = [r for i, r in zip(items, right) if i.structural != "query"]
    chi_square = gqa_chi_square(items, predicted)
    return {
        "overall": round(fraction_percent(sum(right), len(items)), 2),
        "binary": round(fraction_percent(sum(binary), len(binary)), 2),
        "open": round(fraction_percent(sum(open_), len(open_)), 2),
        "distribution": None if chi_square is None else round(chi_square / 100, 2),
        "per_structural_type": grouped_mean_percent(((i.structural, float(r)) for i, r in zip(items, right)),
                                                    to_percent=fraction_percent),
        "per_semantic_type": grouped_mean_percent(((i.semantic, float(r)) for i, r in zip(items, right)),
                                                  to_percent=fraction_percent),
        "per_reasoning_steps": _by_number(items, right, lambda i: i.steps),
        "per_question_words": _by_number(items, right, lambda i: i.words),
    }
