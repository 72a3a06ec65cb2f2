"""POPE (adversarial / popular / random) and the synthetic `synth_pope` split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.scoring.yesno import YesNoItem, pope_metrics
from eval.tasks.base import (SHORT_ANSWER, Question, TaskDataError, field_of, json_object, load_json_lines, option,
                             require_path)

POPE_SPLITS = ("adversarial", "popular", "random")


@dataclass
class POPEOptions:
    """Data options of POPE."""

    annotation_dir: str = option("folder with coco_pope_{adversarial,popular,random}.json (JSON lines)", file_option=True)
    image_root: str = option("folder with the COCO val2014 images", "", file_option=True)
    splits: str = option("comma-separated splits to evaluate", ",".join(POPE_SPLITS))


def _splits(value: str) -> list[str]:
    splits = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(splits) - set(POPE_SPLITS))
    if unknown or not splits:
        raise TaskDataError(f"--splits {value!r}: unknown {unknown}; valid: {', '.join(POPE_SPLITS)}")
    return splits


def read_pope_files(annotation_dir: str, prefix: str, image_root: str, splits: list[str]) -> list[Question]:
    """Question ids are "{split}/{question_id}" since each split numbers its questions from 1."""
    require_path(annotation_dir, "annotation_dir", directory=True)
    out = []
    for split in splits:
        path = Path(annotation_dir) / f"{prefix}{split}.json"
        for number, record in enumerate(load_json_lines(path, "annotation_dir"), 1):
            where = f"{path} question {json_object(record, f'{path} record {number}').get('question_id')}"
            label = field_of(record, "label", where)
            if label not in ("yes", "no"):
                raise TaskDataError(f"{where}: label must be 'yes' or 'no', got {label!r}")
            truth = (split, label == "yes")
            image = Path(image_root) / field_of(record, "image", where)
            prompt = f"{field_of(record, 'text', where)}\n{SHORT_ANSWER}"
            out.append(Question(f"{split}/{field_of(record, 'question_id', where)}", prompt, (image,), truth))
    return out


def read_pope(options: POPEOptions) -> list[Question]:
    return read_pope_files(options.annotation_dir, "coco_pope_", options.image_root, _splits(options.splits))


def score_pope(options, questions, answers) -> dict:
    """Per split: LLaVA's accuracy, precision, recall, F1, yes-ratio (fractions); headline: mean F1
    over the splits, in percent, as the LLaVA-1.5 paper reports POPE."""
    per_split = {}
    for split in dict.fromkeys(q.truth[0] for q in questions):
        items = [YesNoItem(q.truth[1], a) for q, a in zip(questions, answers) if q.truth[0] == split]
        per_split[split] = pope_metrics(items)
    mean_f1 = sum(m["f1"] for m in per_split.values()) / len(per_split) if per_split else 0.0
    return {"overall": round(100.0 * mean_f1, 2), "splits": per_split}


@dataclass
class SynthPOPEOptions:
    """Data options of `synth_pope`."""

    data: str = option("output folder of `mm-prep synth` (uses eval/pope/ and eval/images/)", file_option=True)


def read_synth_pope(options: SynthPOPEOptions) -> list[Question]:
    root = Path(options.data) / "eval"
    return read_pope_files(str(root / "pope"), "synth_pope_", str(root / "images"), list(POPE_SPLITS))
