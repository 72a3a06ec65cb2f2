"""MME: per-subtask folders of images and question/answer text files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.scoring.yesno import MME_COGNITION, MME_PERCEPTION, MMEItem, mme_metrics
from eval.tasks.base import SHORT_ANSWER, Question, TaskDataError, option, read_text, require_path

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


@dataclass
class MMEOptions:
    """Data options of MME."""

    mme_root: str = option("MME_Benchmark_release_version folder (one sub-folder per subtask)", file_option=True)


def _subtask_files(folder: Path) -> list[tuple[Path, Path]]:
    """(question file, image) pairs; subtasks keep them side by side or in
    questions_answers_YN/ and images/."""
    if (folder / "questions_answers_YN").is_dir():
        text_dir, image_dir = folder / "questions_answers_YN", folder / "images"
    else:
        text_dir = image_dir = folder
    pairs = []
    for text_file in sorted(text_dir.glob("*.txt")):
        images = [image_dir / (text_file.stem + s) for s in IMAGE_SUFFIXES if (image_dir / (text_file.stem + s)).is_file()]
        if not images:
            raise TaskDataError(f"MME: no image for {text_file} in {image_dir} (--mme-root)")
        pairs.append((text_file, images[0]))
    return pairs


def _read_pairs(text_file: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(read_text(text_file, "mme_root").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2 or parts[1].strip() not in ("Yes", "No"):
            raise TaskDataError(f"{text_file}:{number}: expected 'question<TAB>Yes|No', got {line!r}")
        pairs.append((parts[0], parts[1].strip()))
    return pairs


def read_mme(options: MMEOptions) -> list[Question]:
    root = require_path(options.mme_root, "mme_root", directory=True)
    subtasks = [name for name in MME_PERCEPTION + MME_COGNITION if (root / name).is_dir()]
    if not subtasks:
        expected = ", ".join(MME_PERCEPTION + MME_COGNITION)
        raise TaskDataError(f"--mme-root {root}: none of the MME subtask folders ({expected})")
    out = []
    for subtask in subtasks:
        for text_file, image in _subtask_files(root / subtask):
            for k, (question, answer) in enumerate(_read_pairs(text_file)):
                truth = MMEItem(subtask, image.name, answer, None)
                out.append(Question(f"{subtask}/{image.name}/{k}", f"{question}\n{SHORT_ANSWER}", (image,), truth))
    return out


def score_mme(options, questions, answers) -> dict:
    """MME eval tool semantics; predictions have tabs/newlines flattened to spaces first (the tool
    reads tab-separated lines)."""
    items = [MMEItem(q.truth.subtask, q.truth.image, q.truth.answer,
                     None if a is None else a.replace("\t", " ").replace("\n", " ")) for q, a in zip(questions, answers)]
    return mme_metrics(items)
