"""Multiple choice: ScienceQA (LLaVA's option parsing), MMBench (circular, VLMEvalKit's rule-based matching),
SEED-Bench (exact letter)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from eval.scoring.common import fraction_percent, grouped_mean_percent

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
    data_type: str = "image"  # SEED-Bench's `data_type` ("image" or "video")


def scienceqa_metrics(items: Sequence[ChoiceItem]) -> dict:
    """Accuracy over the given problems (LLaVA's IMG-Accuracy on the image subset): correct / total * 100,
    2 decimals as LLaVA prints it; a missing prediction is "FAILED" as in LLaVA. Breakdown by subject."""
    parsed = [scienceqa_parse(i.prediction) if i.prediction is not None else "FAILED" for i in items]
    right = [scienceqa_choice_index(p, i.num_choices) == SCIENCEQA_LETTERS.index(i.answer)
             for p, i in zip(parsed, items)]
    return {
        "overall": round(fraction_percent(sum(right), len(items)), 2),
        "failed_to_parse": sum(p == "FAILED" for p in parsed),
        "per_subject": grouped_mean_percent(((i.group, float(r)) for i, r in zip(items, right)),
                                            to_percent=fraction_percent),
    }


_OPTION_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
# VLMEvalKit's marker of a failed judge call: such an answer never picks an option by its letter.
MMBENCH_API_FAILURE = "Failed to obtain answer via API"
# Refusals VLMEvalKit maps to "Z" (no option): matched case-sensitively anywhere in the answer.
MMBENCH_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer")
NO_OPTION = "Z"
# VLMEvalKit's `_VERBOSE_ANSWER_RE` (chain-of-thought answers: "The correct answer is **B**"); case-insensitive,
# so "the answer is a dog" picks option A; searched in the answer as given.
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def _choice_by_letter(text: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_option` (VERBOSE unset), in its order:
    1. an answer containing "Failed to obtain answer via API" is undecided here (option texts may still decide);
    2. a refusal is "Z";
    3. after turning `.()[],:;!*#{}` into spaces and splitting on whitespace: when exactly one option letter
       stands as a word, that option if the letter's first occurrence is among the last four words
       (`splits.index(ch) > len(splits) - 5`), else go on; when no option letter stands but "Z" does, "Z";
    4. "answer is X" / "correct answer is X" (`_VERBOSE_ANSWER_RE`) with X an option letter;
    5. else undecided."""
    if MMBENCH_API_FAILURE in text:
        return None
    if any(refusal in text for refusal in MMBENCH_REFUSALS):
        return NO_OPTION
    words = _OPTION_SEPARATORS.sub(" ", text).split()
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        if words.index(letters[0]) > len(words) - 5:
            return letters[0]
    elif not letters and NO_OPTION in words:
        return NO_OPTION
    match = _VERBOSE_ANSWER.search(text)
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    return None


def _choice_by_text(text: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_text`: nothing when the (lowercased) answer is longer than twice the option
    texts together; else the option whose text occurs in the answer, if exactly one does (case-insensitive)."""
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(str(option)) for option in options.values()):
        return None
    by_text = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return by_text[0] if len(by_text) == 1 else None


def extract_choice(text: str, options: dict[str, str]) -> str | None:
    """The option a free-form answer picks ("Z" for none), or None when it cannot be told.

    VLMEvalKit's rule-based `can_infer` (`vlmeval/utils/matching_util.py` at commit e8e78f05, 2026-08):
    letters first, then option texts whenever the letters do not decide. MMBench's GPT fallback is not used,
    so undecided answers count as wrong and are reported.
    """
    return _choice_by_letter(text, options) or _choice_by_text(text, options)


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
        "overall": round(fraction_percent(sum(circular.values()), len(circular)), 2),
        "single_pass": round(fraction_percent(sum(first_pass.values()), len(first_pass)), 2),
        "num_source_questions": len(circular),
        "unparsed": unparsed,
        "per_category": grouped_mean_percent(((heads[i].category, float(ok)) for i, ok in circular.items()),
                                             to_percent=fraction_percent),
        "per_l2_category": grouped_mean_percent(((heads[i].l2_category, float(ok)) for i, ok in circular.items()),
                                                to_percent=fraction_percent),
    }


def seed_metrics(items: Sequence[ChoiceItem]) -> dict:
    """SEED-Bench as LLaVA's `convert_seed_for_submission.py` scores it: the prediction text must equal the
    answer letter exactly; a question without a prediction is wrong; correct / count * 100, 2 decimals as it
    prints them. `overall` is its "image accuracy" line. Where video questions are among the items, also its
    three summary lines: `image` and `video` (the questions of that `data_type`) and `total` (all of them, its
    "Total accuracy"); `per_question_type` is over all items, as its per-type lines."""
    right = [i.prediction is not None and i.prediction == i.answer for i in items]
    image = [r for i, r in zip(items, right) if i.data_type == "image"]
    metrics = {"overall": round(fraction_percent(sum(image), len(image)), 2)}
    if any(i.data_type == "video" for i in items):
        video = [r for i, r in zip(items, right) if i.data_type == "video"]
        metrics.update({
            "image": metrics["overall"],
            "video": round(fraction_percent(sum(video), len(video)), 2),
            "total": round(fraction_percent(sum(right), len(right)), 2),
            "image_questions": len(image),
            "video_questions": len(video),
        })
    metrics["per_question_type"] = grouped_mean_percent(((i.group, float(r)) for i, r in zip(items, right)),
                                                        to_percent=fraction_percent)
    return metrics
