"""bench/grounding_controls.py: the prefix mask, the language tasks' answers, and each control end to end on an
untrained demo-architecture model (a few steps: the curve is written, accuracies are percentages)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import grounding_controls as controls  # noqa: E402

from mm.chat import IGNORE_INDEX  # noqa: E402
from test_grounding_probe import saved_demo_model  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return saved_demo_model(tmp_path_factory.mktemp("controls"))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_prefix_mask_is_bidirectional_over_the_prompt_and_causal_after():
    # row 0: 3 prompt tokens, 2 answer tokens; row 1: 2 prompt, 1 answer, 2 padding
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[IGNORE_INDEX] * 3 + [7, 8], [IGNORE_INDEX] * 2 + [9, IGNORE_INDEX, IGNORE_INDEX]])
    allowed = controls.prefix_attention_mask(mask, labels)[:, 0]
    expected_row0 = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(allowed[0], expected_row0.bool())
    # padding is never a key (its own diagonal aside); what padding queries see is never used
    expected_row1 = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 1]])
    assert torch.equal(allowed[1], expected_row1.bool())


def test_language_tasks_answer_from_their_context():
    words = [f"w{i}" for i in range(40)]
    rng = random.Random(0)
    answers = []
    for _ in range(300):
        context, question, answer = controls.pairs_task(rng, words)
        pairs = [tuple(p.split()) for p in context.split(", ")]
        asked = tuple(question.removeprefix("Is there a ").removesuffix("?").split())
        assert answer == ("yes" if asked in pairs else "no")
        answers.append(answer)
        context, question, answer = controls.recall_task(rng, words)
        listed = context.replace(",", "").split()
        assert listed[listed.index(question.split()[-1].rstrip("?")) + 1] == answer
        context, question, answer = controls.order_task(rng, words)
        first, second = question.removeprefix("Is ").removesuffix("?").split(" before ")
        assert answer == ("yes" if context.split().index(first) < context.split().index(second) else "no")
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def curve_is_sane(result: dict, steps: list[int], names: set[str]) -> None:
    history = result["history"]
    assert [row["step"] for row in history] == steps
    for row in history:
        assert names <= set(row)
        assert all(0.0 <= row[name] <= 100.0 for name in names)


@pytest.mark.parametrize("options", [["--input", "image", "--prefix-attention"], ["--input", "caption"]])
def test_answer_control_runs(checkpoint, tmp_path, options):
    out = tmp_path / "answer.json"
    result = controls.main(["answer", "--checkpoint", str(checkpoint), "--steps", "2", "--every", "1",
                            "--batch-size", "4", "--num-eval", "16", "--out", str(out), *options])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    curve_is_sane(result, [1, 2], {"overall"})


def test_tower_control_saves_a_tower_the_answer_control_loads(checkpoint, tmp_path):
    tower = tmp_path / "tower.safetensors"
    result = controls.main(["tower", "--checkpoint", str(checkpoint), "--steps", "2", "--every", "5",
                            "--batch-size", "4", "--num-eval", "8", "--save", str(tower)])
    curve_is_sane(result, [2], {"shape", "size"})
    assert tower.exists()
    controls.main(["answer", "--checkpoint", str(checkpoint), "--tower", str(tower), "--steps", "1",
                   "--batch-size", "2", "--num-eval", "4"])
    wrong = tmp_path / "wrong.safetensors"
    save_file({"not.a.tower.weight": torch.zeros(2)}, str(wrong))
    for bad in (wrong, tmp_path / "missing.safetensors"):
        with pytest.raises(SystemExit, match="not a tower of this checkpoint"):
            controls.main(["answer", "--checkpoint", str(checkpoint), "--tower", str(bad), "--steps", "1"])


def test_language_control_runs_and_refuses_unknown_tasks(checkpoint, tmp_path):
    result = controls.main(["language", "--checkpoint", str(checkpoint), "--steps", "2", "--every", "1",
                            "--batch-size", "4", "--num-eval", "8", "--save", str(tmp_path / "lm")])
    curve_is_sane(result, [1, 2], set(controls.LANGUAGE_TASKS) - {"induction"})
    assert (tmp_path / "lm" / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="unknown language task"):
        controls.main(["language", "--checkpoint", str(checkpoint), "--tasks", "copy,sing"])


def test_a_system_message_replaces_the_templates_own(checkpoint):
    from data_prep.synth.world import WorldConfig
    from mm.loading import load_pretrained

    vlm = load_pretrained(checkpoint)
    for system, opening in (("Chat.", "<s>Chat. USER: "), (None, "<s>A chat between")):
        data = controls.QuestionSamples(vlm, WorldConfig(max_objects=2), ("exist",), True, system)
        sample, program = data.draw(random.Random(0))
        text = vlm.tokenizer.decode(sample.input_ids)
        assert text.startswith(opening) and "<image>" not in text and not sample.images and program == "exist"
        assert "There is" in text or "There are" in text  # the scene's description stands in for the image
