"""Academic VQA in the official VQAv2 layout -> instruction samples.

The target is the most frequent human answer (answers compared after stripping surrounding
whitespace and lower-casing); a tie goes to the tied answer given first in the annotation's
`answers` list. With `group_by_image`, all questions about one image become one multi-turn sample
(questions in question_id order, `<image>` in the first turn only).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from data_prep.records import (
    DUPLICATE_ID, EMPTY_MESSAGE, IMAGE_TOKEN, MALFORMED_RECORD, MAX_RECORD_DEPTH, NO_ANSWER, SHORT_ANSWER_SUFFIX,
    ImageRef, RecordError, Rejection, Sample, check_conversation, check_depth, check_text, image_path, nesting_depth,
)  # fmt: skip

DEFAULT_IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


def most_frequent_answer(answers: list[dict]) -> tuple[str, dict[str, int]]:
    """The most frequent answer and all counts; ties go to the answer listed first."""
    if not isinstance(answers, list):
        raise RecordError(MALFORMED_RECORD, f"annotation 'answers' is a {type(answers).__name__}, not a list")
    texts = [a["answer"].strip().lower() for a in answers if isinstance(a, dict) and isinstance(a.get("answer"), str)]
    texts = [t for t in texts if t]
    if not texts:
        raise RecordError(NO_ANSWER, "annotation has no non-empty answers")
    counts = Counter(texts)
    best = max(counts.values())
    return next(t for t in texts if counts[t] == best), dict(counts)


def load_prompt_pool(path: str | Path) -> list[str]:
    """Prompt suffixes, one per line (blank lines ignored), or a JSON list of strings."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
        pool = json.loads(text) if text.lstrip().startswith("[") else [line.strip() for line in text.splitlines()]
    except UnicodeDecodeError as error:
        raise ValueError(f"--prompt-pool {path}: not UTF-8 at byte {error.start} ({error.reason})") from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"--prompt-pool {path}: starts with '[' but is not a JSON list ({error})") from None
    pool = [p for p in pool if isinstance(p, str) and p.strip()]
    if not pool:
        raise ValueError(f"{path}: the prompt pool is empty")
    return pool


def _load_json(path: str | Path, key: str) -> tuple[dict, list]:
    with open(path, "rb") as file:
        data = file.read()
    try:
        data = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 at byte {error.start} ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply for Python's JSON reader") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected an object with a '{key}' list (official VQAv2 layout)")
    return data, data[key]


def _question_turn(question: dict, suffix: str, first: bool) -> dict:
    text = f"{question['question'].strip()}\n{suffix}" if suffix else question["question"].strip()
    return {"from": "human", "value": f"{IMAGE_TOKEN}\n{text}" if first else text}


def _check_pattern(pattern: str) -> None:
    """Only the two fields, plain: `{image_id.__class__}` would reach into Python objects, and a width like
    `{image_id:>999999999}` would build a gigabyte name."""
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as error:
        raise ValueError(f"--image-pattern {pattern!r} cannot be formatted: {error}") from None
    for name, spec in fields:
        if name not in ("image_id", "data_subtype"):
            raise ValueError(f"--image-pattern {pattern!r} cannot be formatted: field {{{name}}} is not {{image_id}} "
                             "or {data_subtype}")  # fmt: skip
        if "{" in spec or re.search(r"\d{4,}", spec):
            raise ValueError(f"--image-pattern {pattern!r} cannot be formatted: {spec!r} is not a plain format "
                             "(a width under 1000)")  # fmt: skip


def _image_name(image_id: int, pattern: str, data_subtype: str | None) -> str:
    _check_pattern(pattern)
    try:
        name = pattern.format(image_id=image_id, data_subtype=data_subtype)
    except (KeyError, ValueError, IndexError) as error:
        raise ValueError(f"--image-pattern {pattern!r} cannot be formatted: {error}") from None
    if "{data_subtype}" in pattern and data_subtype is None:
        raise ValueError("the questions file has no 'data_subtype'; pass --image-pattern without {data_subtype}")
    return name


def load_vqa(questions_path: str | Path, annotations_path: str | Path, image_root: str | Path, *, source: str = "vqav2",
             image_pattern: str = DEFAULT_IMAGE_PATTERN, prompt_pool: list[str] | None = None,
             group_by_image: bool = False, seed: int = 0,
             allow_outside_root: bool = False) -> tuple[list[Sample], list[Rejection], int]:  # fmt: skip
    """Questions + annotations -> (samples, rejections, number of input questions).

    Duplicate question_ids: without grouping the sample id is the question_id and `convert` keeps
    the first copy that passes every check (its image included); grouped, the first valid question
    keeps it.
    """
    questions_file, questions = _load_json(questions_path, "questions")
    _, annotations = _load_json(annotations_path, "annotations")
    data_subtype = questions_file.get("data_subtype")
    by_question = {a["question_id"]: a for a in annotations if isinstance(a, dict) and isinstance(a.get("question_id"), int)}
    pool = prompt_pool if prompt_pool is not None else [SHORT_ANSWER_SUFFIX]
    rejections, valid, seen = [], [], set() if group_by_image else None
    for index, question in enumerate(questions):
        try:
            valid.append(_parse_question(question, index, by_question, seen))
        except RecordError as bad:
            qid = question.get("question_id") if isinstance(question, dict) else None
            rejections.append(Rejection(index, qid, bad.reason, bad.detail, _writable(question)))
    groups = _group(valid, group_by_image)
    samples = []
    for group in groups:
        first = group[0]
        suffixes = [random.Random(f"{seed}:{item['question']['question_id']}").choice(pool) for item in group]
        conversations = []
        for position, (item, suffix) in enumerate(zip(group, suffixes)):
            conversations += [_question_turn(item["question"], suffix, position == 0), {"from": "gpt", "value": item["answer"]}]
        name = _image_name(first["question"]["image_id"], image_pattern, data_subtype)
        sample_id = f"image-{first['question']['image_id']}" if group_by_image else first["question"]["question_id"]
        meta = {
            "index": first["index"],
            "image_id": first["question"]["image_id"],
            "image_paths": [name],
            "question_ids": [item["question"]["question_id"] for item in group],
            "answer_counts": [item["counts"] for item in group],
        }
        covers = [(item["index"], item["question"]["question_id"]) for item in group]
        original = None if group_by_image else first["question"]
        sample = Sample(first["index"], sample_id, source, conversations, [], meta, covers=covers, original=original)
        try:
            check_conversation(conversations, 1)
            sample.images = [ImageRef(name=name, path=image_path(str(image_root), name, allow_outside_root))]
        except RecordError as bad:
            rejections += sample.reject(bad.reason, bad.detail)
            continue
        samples.append(sample)
    return samples, rejections, len(questions)


def _parse_question(question: Any, index: int, by_question: dict, seen: set[int] | None) -> dict:
    """A valid question with its target; only a valid question takes its question_id."""
    check_depth(question, "question")
    check_text(question, "question")
    if not isinstance(question, dict) or not isinstance(question.get("question"), str):
        raise RecordError(MALFORMED_RECORD, "question is not an object with a 'question' string")
    if not isinstance(question.get("question_id"), int) or not isinstance(question.get("image_id"), int):
        raise RecordError(MALFORMED_RECORD, "question needs integer 'question_id' and 'image_id'")
    if not question["question"].strip():
        raise RecordError(EMPTY_MESSAGE, f"question {question['question_id']} is empty")
    annotation = by_question.get(question["question_id"])
    if annotation is None:
        raise RecordError(NO_ANSWER, f"no annotation for question_id {question['question_id']}")
    check_depth(annotation, f"annotation of question_id {question['question_id']}")
    check_text(annotation.get("answers"), f"annotation of question_id {question['question_id']}: answers")
    answer, counts = most_frequent_answer(annotation.get("answers") or [])
    if seen is not None:
        if question["question_id"] in seen:
            raise RecordError(DUPLICATE_ID, f"question_id {question['question_id']} appeared earlier")
        seen.add(question["question_id"])
    return {"index": index, "question": question, "answer": answer, "counts": counts}


def _writable(question: Any) -> Any:
    """The question as rejected.jsonl keeps it; one nested too deeply to write back as JSON is named, not copied."""
    if nesting_depth(question) > MAX_RECORD_DEPTH:
        return f"<a value nested deeper than {MAX_RECORD_DEPTH} levels: see the questions file>"
    return question


def _group(items: list[dict], group_by_image: bool) -> list[list[dict]]:
    if not group_by_image:
        return [[item] for item in items]
    groups: dict[int, list[dict]] = defaultdict(list)
    for item in items:
        groups[item["question"]["image_id"]].append(item)
    return [sorted(group, key=lambda item: item["question"]["question_id"]) for group in groups.values()]
