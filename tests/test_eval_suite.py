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
    expected.append(("ifeval_mm", {"questions": f"{tmp_path}/eval/ifeval/questions.jsonl"}))
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


@pytest.mark.parametrize("content, message", [
    (b"tasks: [vqav2\n  name: x\n", "{path} (--config): not valid YAML: line 2, column 7: expected ',' or ']', but got ':'"),
    (b"tasks:\n  - task: caf\xe9\n", "{path}:2 (--config): not UTF-8 text (byte 0xe9 at offset 20)"),
    (b"- task: vqav2\n", "{path}: expected a mapping with a non-empty 'tasks:' list"),
    (b"tasks:\n  - task: vqa2\n", "{path}: tasks entry 1: unknown task 'vqa2'; valid tasks: gqa, ifeval_mm, llava_bench, "
                                   "mmbench, mme, mmvet, okvqa, pope, scienceqa_img, seed, synth_detail, synth_mc, synth_pope, "
                                   "synth_vqa, textvqa, vizwiz, vqav2"),
    (b"tasks:\n  - task: [pope]\n", "{path}: tasks entry 1: unknown task ['pope']; valid tasks: gqa, ifeval_mm, "
                                    "llava_bench, mmbench, mme, mmvet, okvqa, pope, scienceqa_img, seed, synth_detail, "
                                    "synth_mc, synth_pope, synth_vqa, textvqa, vizwiz, vqav2"),
    (b"tasks:\n  - task: pope\n    image_root: /x\n", "{path} entry 'pope': missing options ['annotation_dir']"),
    (b"tasks:\n  - task: seed\n    questions: 5\n    image_pattern: {data_id}\n",
     "{path} entry 'seed': options must be strings (quote them in YAML), got {{'questions': 5, 'image_pattern': {{'data_id': None}}}}"),
])  # fmt: skip
def test_mm_eval_suite_with_a_bad_config_is_one_error_line(tmp_path, capsys, content, message):
    from eval.cli import main

    path = tmp_path / "suite.yaml"
    path.write_bytes(content)
    # The suite is checked before the checkpoint is loaded, so a missing one is never reached.
    rc = main(["suite", "--config", str(path), "--checkpoint", str(tmp_path / "no-ckpt"), "--out", str(tmp_path / "o")])
    assert (rc, capsys.readouterr().err) == (2, f"mm-eval: error: {message.format(path=path)}\n")
