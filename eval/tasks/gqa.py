"""GQA testdev-balanced."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.scoring.gqa import GQAItem, gqa_metrics
from eval.tasks.base import SHORT_ANSWER, Question, TaskDataError, field_of, json_object, load_json, option
from eval.tasks.vqa import format_image_name


@dataclass
class GQAOptions:
    """Data options of GQA."""

    questions: str = option("testdev_balanced_questions.json", file_option=True)
    image_root: str = option("folder with the GQA images", "", file_option=True)
    image_pattern: str = option("image file name, formatted with imageId", "{imageId}.jpg")


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
        truth = GQAItem(field_of(record, "answer", where), None, types.get("structural", ""), types.get("semantic", ""))
        image_name = format_image_name(options.image_pattern, imageId=field_of(record, "imageId", where))
        image = Path(options.image_root) / image_name
        out.append(Question(qid, f"{field_of(record, 'question', where)}\n{SHORT_ANSWER}", (image,), truth))
    return out


def score_gqa(options, questions, answers) -> dict:
    items = [GQAItem(q.truth.answer, a, q.truth.structural, q.truth.semantic) for q, a in zip(questions, answers)]
    return gqa_metrics(items)
