"""Suite files: the shipped ones parse into valid task options; bad entries are clear errors."""

from pathlib import Path

import pytest

from eval.pipeline import build_options
from eval.suite import load_suite
from eval.tasks import TaskDataError

SUITES = Path(__file__).parents[1] / "eval" / "suites"


def test_llava15_suite_names_valid_options_for_every_task():
    entries = load_suite(SUITES / "llava15.yaml")
    assert [task for _, task, _ in entries] == ["vqav2", "gqa", "vizwiz", "scienceqa_img", "textvqa", "pope", "mme",
                                                "mmbench", "seed"]
    for _, task, values in entries:
        build_options(task, values)


def test_synth_suite_needs_data(tmp_path):
    with pytest.raises(TaskDataError, match="pass --data"):
        load_suite(SUITES / "synth.yaml")
    entries = load_suite(SUITES / "synth.yaml", data=str(tmp_path))
    expected = [(task, {"data": str(tmp_path)}) for task in ("synth_vqa", "synth_pope", "synth_mc")]
    assert [(task, values) for _, task, values in entries] == expected


def test_bad_suite_entries(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("tasks:\n  - task: vqav2\n    question: q.json\n")
    (name, task, values), = load_suite(bad)
    with pytest.raises(TaskDataError, match=r"unknown options \['question'\]"):
        build_options(task, values)
    bad.write_text("tasks:\n  - task: pope\n  - task: pope\n")
    with pytest.raises(TaskDataError, match="distinct 'name:'"):
        load_suite(bad)
    with pytest.raises(TaskDataError, match="given by --config"):
        load_suite(tmp_path / "missing.yaml")
