"""Yes/no benchmarks: POPE (LLaVA's `eval_pope.py` mapping) and MME (its official eval tool)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence


def pope_answer_is_yes(text: str) -> bool:
    """LLaVA's POPE mapping: keep the first sentence, drop commas, split on single spaces; the answer
    is "no" if one of the words is exactly "No", "not" or "no", otherwise "yes"."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


@dataclass(frozen=True)
class YesNoItem:
    """Ground-truth label and prediction text (None when missing)."""

    label_is_yes: bool
    prediction: str | None


def pope_metrics(items: Sequence[YesNoItem]) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio over the answered items (as fractions, like
    `eval_pope.py`, which prints them raw). Missing predictions are counted, not scored."""
    tp = fp = tn = fn = 0
    for item in items:
        if item.prediction is None:
            continue
        said_yes = pope_answer_is_yes(item.prediction)
        if said_yes and item.label_is_yes:
            tp += 1
        elif said_yes:
            fp += 1
        elif item.label_is_yes:
            fn += 1
        else:
            tn += 1
    answered = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / answered if answered else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / answered if answered else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "missing": len(items) - answered,
    }


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_parse(text: str) -> str:
    """The MME eval tool's parsing of a lowercased answer: "yes"/"no" exactly, else by the first four
    characters ("yes" checked first), else "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


@dataclass(frozen=True)
class MMEItem:
    """One MME question: its subtask, image, ground truth ("Yes"/"No") and prediction."""

    subtask: str
    image: str
    answer: str
    prediction: str | None


def _mme_subtask_scores(items: Sequence[MMEItem]) -> dict:
    correct_by_image: dict[str, list[bool]] = defaultdict(list)
    others = 0
    for item in items:
        parsed = "other" if item.prediction is None else mme_parse(item.prediction)
        others += parsed == "other"
        correct_by_image[item.image].append(parsed == item.answer.lower())
    correct = sum(sum(flags) for flags in correct_by_image.values())
    # acc+ : an image counts when both of its questions are right.
    both = sum(all(flags) and len(flags) == 2 for flags in correct_by_image.values())
    # The tool's order of operations (fraction first, then * 100), so totals match to the last bit.
    acc = correct / len(items) * 100
    acc_plus = both / len(correct_by_image) * 100
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "other": others,
            "num_questions": len(items), "num_images": len(correct_by_image)}


def mme_metrics(items: Sequence[MMEItem]) -> dict:
    """Per subtask acc, acc+ and score (= acc + acc+, in percent); perception and cognition totals
    are sums of subtask scores over the subtasks present, added in the tool's subtask order.
    Headline: perception total."""
    by_subtask: dict[str, list[MMEItem]] = defaultdict(list)
    for item in items:
        by_subtask[item.subtask].append(item)
    subtasks = {name: _mme_subtask_scores(group) for name, group in sorted(by_subtask.items())}
    perception = sum(subtasks[name]["score"] for name in MME_PERCEPTION if name in subtasks)
    cognition = sum(subtasks[name]["score"] for name in MME_COGNITION if name in subtasks)
    return {"overall": perception, "perception": perception, "cognition": cognition, "subtasks": subtasks}
