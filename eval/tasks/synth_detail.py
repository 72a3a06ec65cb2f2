"""`synth_detail`: the small-detail split of `mm-prep synth --detail` (tiny objects in large images), scored as
`synth_vqa` is: official VQA accuracy, each question type next to its chance accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.tasks.base import Question, option
from eval.tasks.vqa import read_vqav2_layout, score_vqav2, with_chance


@dataclass
class SynthDetailOptions:
    """Data options of `synth_detail`: the `mm-prep synth --detail` output folder."""

    data: str = option("output folder of `mm-prep synth --detail` (uses eval/detail/)", file_option=True)


def read_synth_detail(options: SynthDetailOptions) -> list[Question]:
    root = Path(options.data) / "eval" / "detail"
    return read_vqav2_layout(str(root / "questions.json"), str(root / "annotations.json"), str(root / "images"),
                             "{image_id:012d}.png")  # fmt: skip


def score_synth_detail(options: SynthDetailOptions, questions, answers) -> dict:
    return with_chance(score_vqav2(options, questions, answers), Path(options.data) / "eval" / "detail" / "chance.json")
