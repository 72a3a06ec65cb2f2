"""mm-prep synth pref/: hallucination preference pairs whose chosen reply is recomputed as true and whose
rejected reply is recomputed as false from the stored scene graph (the checkers of test_prep_synth, which
do not use the generator's code); determinism; training scenes only."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from test_prep_synth import COLORS, SHAPES, SHORT, SIZES, answer, check_description, position

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples
from mm.chat import check_conversation

CAPTION_PROMPTS = ("Describe the image briefly.", "Give a short description of the picture.",
                   "What does the image show? Answer in one sentence.", "Summarize the scene.")  # fmt: skip
ARGS = ["--num-train", "80", "--num-eval", "20", "--seed", "3", "--samples-per-shard", "30", "--no-ifeval", "--no-progress"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_pref")
    assert main(["synth", "--out", str(out), "--workers", "1", *ARGS]) == 0
    return out


def listed(text: str) -> tuple[int, list[tuple]]:
    """(the count the description states, its objects as (size, colour, shape, position))."""
    m = re.fullmatch(r"There (?:is one object|are (\d) objects): (.+)\.", text)
    assert m, text
    parts = re.split(r", | and (?=a )", m[2])
    return int(m[1] or 1), sorted(tuple(re.fullmatch(r"a (\w+) (\w+) (\w+) at the ([a-z ]+)", p).groups()) for p in parts)


def test_chosen_is_true_and_rejected_false_of_the_scene_graph(synth_dir):
    samples = list(iter_samples(synth_dir / "pref"))
    assert len(samples) == 80
    kinds, forms, programs = Counter(), Counter(), Counter()
    for sample in samples:
        record = sample.record
        assert list(record) == ["id", "source", "conversations", "chosen", "rejected", "images", "image_sizes", "meta"]
        assert record["id"].startswith("synth-pref-") and len(sample.images) == 1
        (prompt,) = record["conversations"]
        check_conversation(record["conversations"], 1, prompt=True)
        for reply in (record["chosen"], record["rejected"]):
            check_conversation([prompt, {"from": "gpt", "value": reply}], 1)
        objects = record["meta"]["scene"]["objects"]
        question = prompt["value"].removeprefix("<image>\n")
        corruption = record["meta"]["corruption"]
        kinds[corruption["kind"]] += 1
        if question in CAPTION_PROMPTS:
            forms["describe"] += 1
            check_description(record["chosen"], objects)
            count, described = listed(record["rejected"])
            truth = sorted((o["size"], o["color"], o["shape"], position(o)) for o in objects)
            assert count == len(objects) and described != truth  # same length, one object changed
            assert sum((Counter(described) - Counter(truth)).values()) == 1
            (changed,) = Counter(described) - Counter(truth)
            (original,) = Counter(truth) - Counter(described)
            differs = [name for name, a, b in zip(("size", "color", "shape", "position"), original, changed) if a != b]
            expected = {"object": [["color", "shape"], ["shape"], ["color"]], "attribute": [["size"], ["color"], ["shape"]],
                        "relation": [["position"]]}[corruption["kind"]]  # fmt: skip
            assert differs in expected, (corruption, original, changed)
            if corruption["kind"] == "object":  # a hallucinated object: its category is nowhere in the scene
                assert (changed[1], changed[2]) not in {(o["color"], o["shape"]) for o in objects}
        else:
            forms["vqa"] += 1
            assert question.endswith(SHORT), question
            program, truth = answer(question.removesuffix(SHORT), objects)
            programs[program] += 1
            assert record["chosen"] == truth and record["rejected"] != truth
            space = {"yes", "no"} | set(COLORS) | set(SHAPES) | set(SIZES) | {str(n) for n in range(5)}
            assert record["rejected"] in space
            kind = {"exist": "object", "count": "count", "spatial": "relation"}.get(program, "attribute")
            assert corruption["kind"] == kind and corruption["program"] == program
    assert set(kinds) == {"object", "attribute", "count", "relation"} and min(kinds.values()) >= 8
    assert min(forms.values()) >= 20 and {"exist", "count", "spatial"} <= set(programs)


def test_deterministic_training_scenes_only_and_no_pref(synth_dir, tmp_path):
    again = tmp_path / "again"
    assert main(["synth", "--out", str(again), "--workers", "2", *ARGS]) == 0
    shards = sorted((synth_dir / "pref").glob("*.tar"))
    assert shards and all(s.read_bytes() == (again / "pref" / s.name).read_bytes() for s in shards)
    assert json.loads((synth_dir / "synth.json").read_text())["config"]["pref"] is True
    samples = list(iter_samples(synth_dir / "pref"))
    instruct = {s.record["meta"]["scene_id"]: s.images[0] for s in iter_samples(synth_dir / "instruct")}
    assert all(instruct[s.record["meta"]["scene_id"]] == s.images[0] for s in samples)  # the training scenes
    eval_scenes = json.loads((synth_dir / "eval" / "scenes.json").read_text())
    assert not {s.record["meta"]["scene_id"] for s in samples} & {int(k) for k in eval_scenes}
    other = tmp_path / "other"
    assert main(["synth", "--out", str(other), "--num-train", "5", "--num-eval", "5", "--no-progress", "--no-pref"]) == 0
    assert not (other / "pref").exists() and (other / "align").is_dir()
    assert json.loads((other / "synth.json").read_text())["config"]["pref"] is False
