"""GQA testdev-balanced."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from eval.scoring.gqa import GQAItem, gqa_metrics, gqa_steps, gqa_words
from eval.tasks.base import SHORT_ANSWER, Question, TaskDataError, field_of, json_object, load_json, option
from eval.tasks.vqa import format_image_name


@dataclass
class GQAOptions:
    """Data options of GQA."""

    questions: str = option("testdev_balanced_questions.json", file_option=True)
    image_root: str = option("folder with the GQA images", "", file_option=True)
    image_pattern: str = option("image file name, formatted with imageId", "{imageId}.jpg")


def _steps(record: dict, where: str) -> int:
    """Reasoning steps of the question's `semantic` program (the official `getStepsNum`)."""
    program = field_of(record, "semantic", where)
    if not isinstance(program, list):
        raise TaskDataError(f"{where}: semantic must be a list of steps, got {program!r}"[:200])
    for number, step in enumerate(program):
        step = json_object(step, f"{where} semantic step {number}")
        field_of(step, "operation", f"{where} semantic step {number}")
        field_of(step, "argument", f"{where} semantic step {number}")
    return gqa_steps(program)


def _global_group(record: dict, where: str) -> str | None:
    """`groups.global`, the answer-distribution group (null for questions in none)."""
    group = json_object(field_of(record, "groups", where), f"{where} groups")
    return field_of(group, "global", f"{where} groups")


def read_gqa(options: GQAOptions) -> list[Question]:
    """The balanced questions (the official script scores only those)."""
    questions = load_json(options.questions, "questions")
    if not isinstance(questions, dict):
        raise TaskDataError(f"{options.questions} (--questions): expected a JSON object keyed by question id")
    out = []
    for qid, record in questions.items():
        where = f"{options.questions} question {qid}"
        if not json_object(record, where).get("isBalanced", True):
            continue
        types = json_object(field_of(record, "types", where), f"{where} types")
        question = field_of(record, "question", where)
        if not isinstance(question, str):
            raise TaskDataError(f"{where}: question must be a string, got {question!r}")
        truth = GQAItem(field_of(record, "answer", where), None, types.get("structural", ""), types.get("semantic", ""),
                        words=gqa_words(question), steps=_steps(record, where), global_group=_global_group(record, where))
        image_name = format_image_name(options.image_pattern, imageId=field_of(record, "imageId", where))
        image = Path(options.image_root) / image_name
        out.append(Question(qid, f"{question}\n{SHORT_ANSWER}", (image,), truth))
    return out


def score_gqa(options, questions, answers) -> dict:
    items = [replace(q.truth, prediction=a) for q, a in zip(questions, answers)]
    return gqa_metrics(items)
