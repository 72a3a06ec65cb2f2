"""bench/grounding_probe.py on a tiny synth split and an untrained demo-architecture model: every section is
written, the numbers are in range, probe sizes add up, and the blank condition feeds background pixels only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import grounding_probe  # noqa: E402

from eval.runner import GenerationSettings, Generator  # noqa: E402
from mm.builder import build_vlm  # noqa: E402
from mm.config import VLMConfig  # noqa: E402

NUM_EVAL = 12


def demo_model_config() -> VLMConfig:
    """The model section of the demo's stage-1 recipe, its asset paths made absolute."""
    section = yaml.safe_load((REPO / "configs/demo/stage1_captions.yaml").read_text())["model"]["model"]
    section["vision"]["name_or_path"] = str(REPO / section["vision"]["name_or_path"])
    section["llm"] = {key: str(REPO / value) for key, value in section["llm"].items()}
    return VLMConfig.from_dict(section)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grounding") / "synth"
    mm_prep = Path(sys.executable).with_name("mm-prep")
    subprocess.run([str(mm_prep), "synth", "--out", str(out), "--num-train", "8", "--num-eval", str(NUM_EVAL),
                    "--max-objects", "2"], check=True, capture_output=True)
    return out


def saved_demo_model(directory: Path) -> Path:
    """An untrained model of the demo's architecture (seed 0), saved as `directory/model`."""
    torch.manual_seed(0)
    build_vlm(demo_model_config()).save_pretrained(directory / "model")
    return directory / "model"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return saved_demo_model(tmp_path_factory.mktemp("grounding"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: on a loaded 2-core machine, torch's thread pool costs more than it saves (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def probe_run(synth_dir, checkpoint, tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("grounding") / "probe.json"
    returned = grounding_probe.main(["--checkpoint", str(checkpoint), "--data", str(synth_dir), "--out", str(out),
                                     "--batch-size", "8"])
    return returned, json.loads(out.read_text())


def in_unit_interval(value) -> bool:
    return value is None or 0.0 <= value <= 1.0


def test_every_section_is_written(probe_run):
    returned, written = probe_run
    assert {"answers", "image_probes", "answer_probes", "attention"} <= set(written)
    assert written["scenes"] == NUM_EVAL and written["questions"] == written["answers"]["overall"]["n"]
    assert written["image_tokens"] == 16
    assert len(written["predictions"]) == written["questions"]
    assert set(written["predictions"][0]) >= {"question_id", "question_type", "truth", *grounding_probe.CONDITIONS}
    assert json.loads(json.dumps(returned)) == written


def test_answer_accuracies_are_fractions(probe_run):
    _, written = probe_run
    answers = written["answers"]
    assert sum(s["n"] for qtype, s in answers.items() if qtype != "overall") == written["questions"]
    for summary in answers.values():
        assert in_unit_interval(summary["majority"])
        for condition in grounding_probe.CONDITIONS:
            assert all(in_unit_interval(v) for v in summary[condition].values()), summary
        assert summary["real"]["same_as_real"] == 1.0


def test_image_probe_sizes(probe_run, synth_dir):
    _, written = probe_run
    scenes = json.loads((synth_dir / "eval" / "scenes.json").read_text())
    objects = sum(len(scene["objects"]) for scene in scenes.values())
    probes = written["image_probes"]
    assert probes["projector"]["grid"] == 4 and probes["vision_tower"]["grid"] == 8
    assert set(probes["projector"]["targets"]) == {"color", "shape", "size", "token_col", "token_row"}
    assert {"patch_col", "patch_row"} <= set(probes["vision_tower"]["targets"])
    for probe in probes.values():
        assert probe["objects"] == objects
        for result in probe["targets"].values():
            assert result["n_train"] + result["n_test"] == objects and result["n_test"] > 0
            assert in_unit_interval(result["accuracy"]) and in_unit_interval(result["majority"])


def test_answer_probe_and_attention_sizes(probe_run):
    _, written = probe_run
    layers = json.loads((REPO / "mm/assets/configs/llama.json").read_text())["num_hidden_layers"]
    yes_no = {qtype: s["n"] for qtype, s in written["answers"].items() if qtype in ("exist", "spatial", "compare_size",
                                                                                      "compare_color")}
    probes = written["answer_probes"]
    assert set(yes_no) <= set(probes) and "all yes/no" in probes
    for qtype, by_condition in probes.items():
        assert set(by_condition) == {"real", "blank"}
        for runs in by_condition.values():
            assert len(runs) == layers + 1
            expected = sum(yes_no.values()) if qtype == "all yes/no" else yes_no[qtype]
            assert all(r["n_train"] + r["n_test"] == expected and in_unit_interval(r["accuracy"]) for r in runs)
    for summary in written["attention"].values():
        assert len(summary["mass"]) == len(summary["ratio_to_uniform"]) == layers
        assert all(0.0 <= m <= 1.0 + 1e-6 for m in summary["mass"]) and all(r >= 0 for r in summary["ratio_to_uniform"])


def test_blank_condition_feeds_background_pixels(synth_dir, checkpoint):
    model = grounding_probe.load_model(str(checkpoint))
    data = grounding_probe.load_eval_data(synth_dir, None, model.image_transform_config)
    conditions = grounding_probe.condition_images(data.images, data.world.background, seed=0)
    generator = Generator(model, GenerationSettings(template=model.config.chat_template), torch.float32)
    background = torch.tensor(data.world.background, dtype=torch.uint8).view(1, 3, 1, 1)
    blank = generator.prepare(conditions["blank"]).views
    real = generator.prepare(conditions["real"]).views
    assert blank.shape == real.shape and bool((blank == background).all())
    assert all(bool((view != background).any()) for view in real)  # every scene has an object
    other = generator.prepare(conditions["other_scene"]).views
    matches = [[bool(torch.equal(o, r)) for r in real] for o in other]
    assert all(sum(row) >= 1 and not row[i] for i, row in enumerate(matches))  # another scene, never its own


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 10, 300):
        order = grounding_probe.derangement(n, seed=n)
        assert sorted(order) == list(range(n)) and all(order[i] != i for i in range(n))
    with pytest.raises(ValueError):
        grounding_probe.derangement(1, seed=0)
