"""Multiple choice: ScienceQA (LLaVA's option parsing), MMBench (circular), SEED-Bench (exact letter)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from eval.scoring.common import grouped_mean_percent, percent

SCIENCEQA_LETTERS = ("A", "B", "C", "D", "E")
# LLaVA's pattern, including its unescaped "." (any character after the letter).
_SCIENCEQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def scienceqa_parse(text: str) -> str:
    """LLaVA's `eval_science_qa.py` parsing: a bare letter; "X. ..." ; exactly one "The answer is X";
    otherwise "FAILED"."""
    if text in SCIENCEQA_LETTERS:
        return text
    if len(text) >= 3 and text[0] in SCIENCEQA_LETTERS and text[1:3] == ". ":
        return text[0]
    found = _SCIENCEQA_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def scienceqa_choice_index(letter: str, num_choices: int) -> int:
    """Index of the parsed letter among the problem's choices, -1 when it is not one of them."""
    letters = SCIENCEQA_LETTERS[:num_choices]
    return letters.index(letter) if letter in letters else -1


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question: correct letter (or index), options, grouping, prediction."""

    answer: str
    prediction: str | None
    num_choices: int = 4
    group: str = ""
    subgroup: str = ""


def scienceqa_metrics(items: Sequence[ChoiceItem]) -> dict:
    """Accuracy over the given problems (LLaVA's IMG-Accuracy on the image subset), 2 decimals as
    LLaVA prints it; a missing prediction is "FAILED" as in LLaVA. Breakdown by subject."""
    parsed = [scienceqa_parse(i.prediction) if i.prediction is not None else "FAILED" for i in items]
    right = [scienceqa_choice_index(p, i.num_choices) == SCIENCEQA_LETTERS.index(i.answer)
             for p, i in zip(parsed, items)]
    return {
        "overall": round(percent(sum(right), len(items)), 2),
        "failed_to_parse": sum(p == "FAILED" for p in parsed),
        "per_subject": grouped_mean_percent((i.group, float(r)) for i, r in zip(items, right)),
    }


_OPTION_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")


def extract_choice(text: str, options: dict[str, str]) -> str | None:
    """The option a free-form answer picks, or None when it cannot be told.

    First a letter of the options standing alone as a word (after punctuation becomes spaces), if
    exactly one such letter occurs; otherwise the option whose text occurs in the answer, if exactly
    one does (case-insensitive). This is MMBench's rule-based matching; its ChatGPT fallback is not
    used, so unparsable answers count as wrong and are reported.
    """
    words = _OPTION_SEPARATORS.sub(" ", text).split()
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        return letters[0]
    if letters:
        return None
    lowered = text.lower()
    by_text = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return by_text[0] if len(by_text) == 1 else None


@dataclass(frozen=True)
class CircularItem:
    """One rotation of an MMBench question; `source_index` groups rotations of the same question."""

    source_index: int
    answer: str
    options: dict[str, str]
    prediction: str | None
    category: str = ""
    l2_category: str = ""


def mmbench_metrics(items: Sequence[CircularItem]) -> dict:
    """Circular accuracy: a question is right only when every one of its rotations is right.
    Also the single-pass accuracy on the first rotation and per (l2-)category circular accuracy."""
    rotations: dict[int, list[CircularItem]] = defaultdict(list)
    for item in items:
        rotations[item.source_index].append(item)
    unparsed = 0
    circular: dict[int, bool] = {}
    first_pass: dict[int, bool] = {}
    for index, group in rotations.items():
        verdicts = []
        for item in group:
            choice = None if item.prediction is None else extract_choice(item.prediction, item.options)
            unparsed += item.prediction is not None and choice is None
            verdicts.append(choice == item.answer)
        circular[index] = all(verdicts)
        first_pass[index] = verdicts[0]
    heads = {index: group[0] for index, group in rotations.items()}
    return {
        "overall": round(percent(sum(circular.values()), len(circular)), 2),
        "single_pass": round(percent(sum(first_pass.values()), len(first_pass)), 2),
        "num_source_questions": len(circular),
        "unparsed": unparsed,
        "per_category": grouped_mean_percent((heads[i].category, float(ok)) for i, ok in circular.items()),
        "per_l2_category": grouped_mean_percent((heads[i].l2_category, float(ok)) for i, ok in circular.items()),
    }


def seed_metrics(items: Sequence[ChoiceItem]) -> dict:
    """SEED-Bench: the prediction text must equal the answer letter exactly; per question type
    (`group`) and overall, 2-decimal percentages as LLaVA's converter prints them."""
    right = [i.prediction is not None and i.prediction == i.answer for i in items]
    return {
        "overall": round(percent(sum(right), len(items)), 2),
        "per_question_type": grouped_mean_percent((i.group, float(r)) for i, r in zip(items, right)),
    }
