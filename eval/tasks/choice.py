"""Multiple-choice tasks: ScienceQA-IMG, SEED-Bench (image) and the synthetic `synth_mc` split."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from eval.scoring.choice import SCIENCEQA_LETTERS, ChoiceItem, scienceqa_metrics, seed_metrics
from eval.tasks.base import (LETTER_ANSWER, Question, TaskDataError, field_of, format_options, json_object, load_json,
                             option)
from eval.tasks.vqa import format_image_name

SEED_LETTERS = ("A", "B", "C", "D")


@dataclass
class ScienceQAOptions:
    """Data options of ScienceQA-IMG."""

    problems: str = option("ScienceQA problems.json", file_option=True)
    pid_splits: str = option("ScienceQA pid_splits.json", file_option=True)
    image_root: str = option("folder holding {pid}/image.png of the split (e.g. ScienceQA/images/test)", "",
                             file_option=True)
    split: str = option("split of pid_splits.json to evaluate", "test")


def _scienceqa_prompt(problem: dict, where: str) -> str:
    choices = field_of(problem, "choices", where)
    if not 2 <= len(choices) <= len(SCIENCEQA_LETTERS):
        raise TaskDataError(f"{where}: {len(choices)} choices (expected 2 to {len(SCIENCEQA_LETTERS)})")
    context = (problem.get("hint") or "").strip()
    head = f"Context: {context}\n" if context else ""
    return f"{head}{field_of(problem, 'question', where)}\n{format_options(SCIENCEQA_LETTERS, choices)}\n{LETTER_ANSWER}"


def read_scienceqa(options: ScienceQAOptions) -> list[Question]:
    """The split's problems that have an image (the IMG subset LLaVA reports)."""
    problems = json_object(load_json(options.problems, "problems"), f"{options.problems} (--problems)")
    splits = json_object(load_json(options.pid_splits, "pid_splits"), f"{options.pid_splits} (--pid-splits)")
    if options.split not in splits:
        raise TaskDataError(f"--split {options.split!r} not in {options.pid_splits}; valid: {', '.join(sorted(splits))}")
    if not isinstance(splits[options.split], list):
        raise TaskDataError(f"{options.pid_splits} (--pid-splits): split {options.split!r} is not a list of problem ids")
    out = []
    for pid in splits[options.split]:
        if not isinstance(pid, str) or pid not in problems:
            raise TaskDataError(f"{options.pid_splits} (--pid-splits): split {options.split!r} lists problem "
                                f"{json.dumps(pid)[:40]}, which is not in {options.problems}")
        where = f"{options.problems} problem {pid}"
        problem = json_object(problems[pid], where)
        if not problem.get("image"):
            continue
        answer = field_of(problem, "answer", where)
        if answer not in range(len(SCIENCEQA_LETTERS)):
            raise TaskDataError(f"{where}: answer must be a choice number 0 to {len(SCIENCEQA_LETTERS) - 1}, got {answer!r}")
        answer = SCIENCEQA_LETTERS[answer]
        truth = ChoiceItem(answer, None, len(problem["choices"]), problem.get("subject", ""))
        image = Path(options.image_root) / pid / problem["image"]
        out.append(Question(pid, _scienceqa_prompt(problem, where), (image,), truth))
    return out


def score_scienceqa(options, questions, answers) -> dict:
    items = [ChoiceItem(q.truth.answer, a, q.truth.num_choices, q.truth.group) for q, a in zip(questions, answers)]
    return scienceqa_metrics(items)


@dataclass
class SEEDOptions:
    """Data options of SEED-Bench (image questions)."""

    questions: str = option("SEED-Bench.json", file_option=True)
    image_root: str = option("folder with the SEED-Bench images (SEED-Bench-image)", "", file_option=True)
    image_pattern: str = option("image file name, formatted with data_id", "{data_id}")
    video_frames: str = option("video questions too, each shown as one frame (LLaVA: the middle frame, "
                               "SEED-Bench-video-image/): the frame's path, formatted with data_id, question_id "
                               "and question_type_id; empty: video questions are left out", "")


def _video_frame(pattern: str, record: dict, where: str) -> Path:
    values = {key: field_of(record, key, where) for key in ("data_id", "question_id", "question_type_id")}
    try:
        return Path(pattern.format(**values))
    except (KeyError, ValueError, IndexError) as error:
        raise TaskDataError(f"--video-frames {pattern!r} cannot be filled with {sorted(values)}: {error}") from None


def read_seed_layout(path: str, image_root: str, image_pattern: str, option_name: str = "questions",
                     video_frames: str = "") -> list[Question]:
    """Image questions of a SEED-Bench-layout JSON, and its video questions when `video_frames` names their
    frames; per-type breakdown uses its `question_type` names."""
    data = json_object(load_json(path, option_name), path)
    type_names = {number: name for name, number in json_object(data.get("question_type", {}), path).items()}
    out = []
    for number, record in enumerate(field_of(data, "questions", path), 1):
        where = f"{path} question {json_object(record, f'{path} questions entry {number}').get('question_id')}"
        data_type = field_of(record, "data_type", where)
        if data_type != "image" and not (data_type == "video" and video_frames):
            continue
        choices = [field_of(record, f"choice_{letter.lower()}", where) for letter in SEED_LETTERS]
        answer = field_of(record, "answer", where)
        if answer not in SEED_LETTERS:
            raise TaskDataError(f"{where}: answer must be one of {SEED_LETTERS}, got {answer!r}")
        qtype = record.get("question_type_id")
        truth = ChoiceItem(answer, None, 4, type_names.get(qtype, str(qtype)), data_type=data_type)
        if data_type == "video":
            image = _video_frame(video_frames, record, where)
        else:
            image = Path(image_root) / format_image_name(image_pattern, data_id=field_of(record, "data_id", where))
        prompt = f"{field_of(record, 'question', where)}\n{format_options(SEED_LETTERS, choices)}\n{LETTER_ANSWER}"
        out.append(Question(field_of(record, "question_id", where), prompt, (image,), truth))
    return out


def read_seed(options: SEEDOptions) -> list[Question]:
    return read_seed_layout(options.questions, options.image_root, options.image_pattern,
                            video_frames=options.video_frames)


def score_seed(options, questions, answers) -> dict:
    return seed_metrics([replace(q.truth, prediction=a) for q, a in zip(questions, answers)])


@dataclass
class SynthMCOptions:
    """Data options of `synth_mc`."""

    data: str = option("output folder of `mm-prep synth` (uses eval/mc/seed.json and eval/images/)", file_option=True)


def read_synth_mc(options: SynthMCOptions) -> list[Question]:
    root = Path(options.data) / "eval"
    return read_seed_layout(str(root / "mc" / "seed.json"), str(root / "images"), "{data_id}", option_name="data")
