"""Open-ended VQA tasks: VQAv2, OK-VQA, VizWiz, TextVQA and the synthetic `synth_vqa` split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from eval.scoring.vqa import TEXTVQA_NUM_ANSWERS, VQAItem, textvqa_metrics, vizwiz_question_accuracy, vqa_metrics
from eval.tasks.base import SHORT_ANSWER, Question, TaskDataError, field_of, load_json, option

VIZWIZ_SUFFIX = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER


@dataclass
class VQAv2Options:
    """Data options of VQAv2-layout tasks (VQAv2 val, OK-VQA val)."""

    questions: str = option("OpenEnded questions JSON (e.g. v2_OpenEnded_mscoco_val2014_questions.json)", file_option=True)
    annotations: str = option("annotations JSON (e.g. v2_mscoco_val2014_annotations.json)", file_option=True)
    image_root: str = option("folder with the images", "", file_option=True)
    image_pattern: str = option("image file name, formatted with image_id", "COCO_val2014_{image_id:012d}.jpg")


def format_image_name(pattern: str, **values) -> str:
    """The pattern filled in, or a clear error naming the bad pattern."""
    try:
        return pattern.format(**values)
    except (KeyError, ValueError, IndexError) as error:
        raise TaskDataError(f"--image-pattern {pattern!r} cannot be filled with {sorted(values)}: {error}") from None


def read_vqav2_layout(questions_file: str, annotations_file: str, image_root: str, image_pattern: str) -> list[Question]:
    """Questions joined with their annotations; every question must have one."""
    questions = field_of(load_json(questions_file, "questions"), "questions", questions_file)
    annotations = field_of(load_json(annotations_file, "annotations"), "annotations", annotations_file)
    by_id = {field_of(a, "question_id", annotations_file): a for a in annotations}
    out = []
    for record in questions:
        qid = field_of(record, "question_id", questions_file)
        if qid not in by_id:
            raise TaskDataError(f"question {qid} of {questions_file} has no annotation in {annotations_file}")
        ann = by_id[qid]
        answers = tuple(field_of(a, "answer", annotations_file) for a in field_of(ann, "answers", annotations_file))
        truth = VQAItem(answers, None, ann.get("question_type", ""), ann.get("answer_type", ""))
        image_id = field_of(record, "image_id", questions_file)
        image = Path(image_root) / format_image_name(image_pattern, image_id=image_id, question_id=qid)
        prompt = f"{field_of(record, 'question', questions_file)}\n{SHORT_ANSWER}"
        out.append(Question(qid, prompt, (image,), truth))
    return out


def _with_predictions(questions: Sequence[Question], answers: Sequence[str | None]) -> list[VQAItem]:
    return [VQAItem(q.truth.answers, a, q.truth.question_type, q.truth.answer_type) for q, a in zip(questions, answers)]


def read_vqav2(options: VQAv2Options) -> list[Question]:
    return read_vqav2_layout(options.questions, options.annotations, options.image_root, options.image_pattern)


def score_vqav2(options, questions: Sequence[Question], answers: Sequence[str | None]) -> dict:
    """Official VQA accuracy on EvalAI-processed predictions (LLaVA-1.5's submission path)."""
    return vqa_metrics(_with_predictions(questions, answers))


@dataclass
class VizWizOptions:
    """Data options of VizWiz val."""

    annotations: str = option("VizWiz annotation JSON (val.json: image, question, answers, answer_type)",
                              file_option=True)
    image_root: str = option("folder with the VizWiz val images", "", file_option=True)


def read_vizwiz(options: VizWizOptions) -> list[Question]:
    """VizWiz keys questions by image file name (one question per image), as its evaluation does."""
    records = load_json(options.annotations, "annotations")
    if not isinstance(records, list):
        raise TaskDataError(f"{options.annotations} (--annotations): expected a JSON list of VizWiz records")
    out = []
    for record in records:
        image = field_of(record, "image", options.annotations)
        where = f"{options.annotations} record {image}"
        answers = tuple(field_of(a, "answer", where) for a in field_of(record, "answers", where))
        truth = VQAItem(answers, None, "", record.get("answer_type", ""))
        prompt = f"{field_of(record, 'question', options.annotations)}\n{VIZWIZ_SUFFIX}"
        out.append(Question(image, prompt, (Path(options.image_root) / image,), truth))
    return out


def score_vizwiz(options, questions, answers) -> dict:
    """VizWiz's evaluation: predictions normalised, ground truths never; per answer type
    (incl. "unanswerable"). VizWiz has no question types."""
    metrics = vqa_metrics(_with_predictions(questions, answers), question_accuracy=vizwiz_question_accuracy)
    metrics.pop("per_question_type")
    return metrics


@dataclass
class TextVQAOptions:
    """Data options of TextVQA val."""

    annotations: str = option("TextVQA_0.5.1_val.json", file_option=True)
    image_root: str = option("folder with the TextVQA train/val images", "", file_option=True)
    image_pattern: str = option("image file name, formatted with image_id", "{image_id}.jpg")
    ocr_tokens: str = option("Rosetta OCR JSON (TextVQA_Rosetta_OCR_v0.2_val.json): adds 'Reference OCR token: ...' "
                             "to each prompt (LLaVA's OCR variant)", "", file_option=True)


def _ocr_tokens_by_image(path: str) -> dict[str, list[str]]:
    data = field_of(load_json(path, "ocr_tokens"), "data", path)
    return {field_of(r, "image_id", path): list(field_of(r, "ocr_tokens", path)) for r in data}


def read_textvqa(options: TextVQAOptions) -> list[Question]:
    data = field_of(load_json(options.annotations, "annotations"), "data", options.annotations)
    ocr = _ocr_tokens_by_image(options.ocr_tokens) if options.ocr_tokens else None
    out = []
    for record in data:
        image_id = field_of(record, "image_id", options.annotations)
        prompt = field_of(record, "question", options.annotations)
        if ocr is not None:
            if image_id not in ocr:
                raise TaskDataError(f"image {image_id} has no entry in --ocr-tokens {options.ocr_tokens}")
            if ocr[image_id]:
                prompt += "\nReference OCR token: " + ", ".join(ocr[image_id])
        qid = field_of(record, "question_id", options.annotations)
        answers = tuple(field_of(record, "answers", options.annotations))
        if len(answers) != TEXTVQA_NUM_ANSWERS or not all(isinstance(a, str) for a in answers):
            raise TaskDataError(f"question {qid} of {options.annotations}: TextVQA's evaluator needs exactly "
                                f"{TEXTVQA_NUM_ANSWERS} string answers, got {list(answers)!r}")
        truth = VQAItem(answers, None)
        image = Path(options.image_root) / format_image_name(options.image_pattern, image_id=image_id)
        out.append(Question(qid, f"{prompt}\n{SHORT_ANSWER}", (image,), truth))
    return out


def score_textvqa(options: TextVQAOptions, questions, answers) -> dict:
    metrics = textvqa_metrics(_with_predictions(questions, answers))
    metrics["ocr_tokens_in_prompt"] = bool(options.ocr_tokens)
    return metrics


@dataclass
class SynthVQAOptions:
    """Data options of `synth_vqa`: the `mm-prep synth` output folder."""

    data: str = option("output folder of `mm-prep synth` (uses eval/vqa/ and eval/images/)", file_option=True)


def read_synth_vqa(options: SynthVQAOptions) -> list[Question]:
    root = Path(options.data) / "eval"
    return read_vqav2_layout(str(root / "vqa" / "questions.json"), str(root / "vqa" / "annotations.json"),
                             str(root / "images"), "{image_id:012d}.png")


def score_synth_vqa(options: SynthVQAOptions, questions, answers) -> dict:
    """VQA accuracy, with each question program's accuracy next to its chance accuracy."""
    metrics = vqa_metrics(_with_predictions(questions, answers))
    return with_chance(metrics, Path(options.data) / "eval" / "vqa" / "chance.json")


def with_chance(metrics: dict, chance_file: Path) -> dict:
    """VQA `metrics` with each question type's accuracy next to its chance accuracy (`vs_chance`, percent),
    from a `mm-prep synth` chance file ({question_type: fraction, "overall": fraction})."""
    chance = load_json(chance_file, "data")
    metrics["vs_chance"] = {
        qtype: {"accuracy": acc, "chance": round(100.0 * chance[qtype], 2) if qtype in chance else None}
        for qtype, acc in metrics["per_question_type"].items()
    }
    if "overall" in chance:
        metrics["chance_overall"] = round(100.0 * chance["overall"], 2)
    return metrics
