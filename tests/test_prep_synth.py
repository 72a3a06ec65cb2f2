"""mm-prep synth: every answer recomputed from the stored scene graph (geometry, not the generator's
code), eval splits in benchmark layouts, rendering matching the graph, determinism."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples
from data_prep.records import check_conversation

# The CLI defaults, written out here on purpose (the test must not reuse the generator's tables).
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 255), "yellow": (240, 220, 40),
          "purple": (170, 60, 220), "cyan": (40, 215, 225)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
SHORT = "\nAnswer the question using a single word or phrase."
CHOICE = "\nAnswer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--num-train", "80", "--num-eval", "40", "--seed", "5",
                 "--samples-per-shard", "30", "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    return out


def centre(obj):
    x0, y0, x1, y1 = obj["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def resolve(ref: str, objects: list[dict]) -> dict:
    """The one object a 'the small red circle' / 'the red object' expression denotes."""
    words = ref.removeprefix("the ").split()
    noun, adjectives = words[-1], words[:-1]
    assert noun in SHAPES or (noun == "object" and adjectives), ref
    matches = [o for o in objects if (noun == "object" or o["shape"] == noun)
               and all(o["color" if a in COLORS else "size"] == a for a in adjectives)]  # fmt: skip
    assert len(matches) == 1, f"ambiguous or empty reference {ref!r}"
    return matches[0]


def count_phrase(phrase: str, objects: list[dict]) -> int:
    words = phrase.split()
    noun = words[-1]
    shape = None if noun == "objects" else noun.removesuffix("s")
    assert shape in (None, *SHAPES), phrase
    return sum((shape is None or o["shape"] == shape) and all(o["color" if a in COLORS else "size"] == a for a in words[:-1])
               for o in objects)  # fmt: skip


def spatial(a: dict, b: dict, relation: str) -> str:
    """From the boxes: a relation holds when one box lies entirely beyond the other."""
    ax0, ay0, ax1, ay1 = a["bbox"]
    bx0, by0, bx1, by1 = b["bbox"]
    holds, opposite = {"to the left of": (ax1 < bx0, bx1 < ax0), "to the right of": (bx1 < ax0, ax1 < bx0),
                       "above": (ay1 < by0, by1 < ay0), "below": (by1 < ay0, ay1 < by0)}[relation]  # fmt: skip
    assert holds or opposite, "the boxes overlap along the asked axis: an ambiguous spatial question"
    return "yes" if holds else "no"


def area(obj):
    x0, y0, x1, y1 = obj["bbox"]
    return (x1 - x0) * (y1 - y0)


def answer(question: str, objects: list[dict]) -> tuple[str, str]:
    """(program family, answer) recomputed from the scene graph."""
    if m := re.fullmatch(r"What (color|shape|size) is (the [a-z ]+)\?", question):
        obj = resolve(m[2], objects)
        assert obj[m[1]] not in m[2].split(), "the reference gives the answer away"
        return f"attribute_{m[1]}", obj[m[1]]
    if m := re.fullmatch(r"How many ([a-z ]+) are there\?", question):
        return "count", str(count_phrase(m[1], objects))
    if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question):
        return "exist", "yes" if any(o["color"] == m[1] and o["shape"] == m[2] for o in objects) else "no"
    if m := re.fullmatch(r"Is (the [a-z ]+?) (to the left of|to the right of|above|below) (the [a-z ]+)\?", question):
        return "spatial", spatial(resolve(m[1], objects), resolve(m[3], objects), m[2])
    if m := re.fullmatch(r"Is (the [a-z ]+?) (larger|smaller) than (the [a-z ]+)\?", question):
        a, b = resolve(m[1], objects), resolve(m[3], objects)
        bigger, smaller = (a, b) if m[2] == "larger" else (b, a)  # boxes are rounded: compare with a margin
        return "compare_size", "yes" if area(bigger) > 1.1 * area(smaller) else "no"
    if m := re.fullmatch(r"Do (the [a-z ]+?) and (the [a-z ]+) have the same color\?", question):
        a, b = resolve(m[1], objects), resolve(m[2], objects)
        return "compare_color", "yes" if a["color"] == b["color"] else "no"
    raise AssertionError(f"unrecognised question {question!r}")


def position(obj, image_size=64):
    x, y = centre(obj)
    vertical = ("top", "middle", "bottom")[int(3 * y / image_size)]
    horizontal = ("left", "center", "right")[int(3 * x / image_size)]
    return "center" if (vertical, horizontal) == ("middle", "center") else f"{vertical} {horizontal}"


def check_description(text: str, objects: list[dict]) -> None:
    m = re.fullmatch(r"There (?:is one object|are (\d) objects): (.+)\.", text)
    assert m and int(m[1] or 1) == len(objects), text
    parts = re.split(r", | and (?=a )", m[2])
    described = sorted(tuple(re.fullmatch(r"a (\w+) (\w+) (\w+) at the ([a-z ]+)", p).groups()) for p in parts)
    assert described == sorted((o["size"], o["color"], o["shape"], position(o)) for o in objects)


def check_turn(human: str, reply: str, objects: list[dict]) -> str:
    human = human.removeprefix("<image>\n")
    if human == "Describe the image briefly.":
        check_description(reply, objects)
        return "describe"
    if human.endswith(CHOICE):
        question, *options = human.removesuffix(CHOICE).split("\n")
        assert [o[:3] for o in options] == ["A. ", "B. ", "C. ", "D. "]
        _, truth = answer(question, objects)
        values = [o[3:] for o in options]
        assert values.count(truth) == 1 and len(set(values)) == 4
        assert reply == "ABCD"[values.index(truth)]
        return "multiple_choice"
    assert human.endswith(SHORT), human
    program, truth = answer(human.removesuffix(SHORT), objects)
    assert reply == truth, (human, reply, truth)
    return program


def test_instruct_answers_match_the_scene_graphs(synth_dir):
    programs, yes_no = Counter(), Counter()
    samples = list(iter_samples(synth_dir / "instruct"))
    assert len(samples) == 80
    for sample in samples:
        record = sample.record
        check_conversation(record["conversations"], 1)
        objects = record["meta"]["scene"]["objects"]
        assert 1 <= len(objects) <= 4
        turns = record["conversations"]
        assert 2 <= len(turns) // 2 <= 5
        for human, gpt in zip(turns[0::2], turns[1::2]):
            programs[check_turn(human["value"], gpt["value"], objects)] += 1
            if gpt["value"] in ("yes", "no"):
                yes_no[gpt["value"]] += 1
    assert set(programs) == {"attribute_color", "attribute_shape", "attribute_size", "count", "exist", "spatial",
                             "compare_size", "compare_color", "multiple_choice", "describe"}  # fmt: skip
    assert 0.35 < yes_no["yes"] / sum(yes_no.values()) < 0.65  # yes/no programs are balanced


def test_align_captions_describe_the_scene(synth_dir):
    samples = list(iter_samples(synth_dir / "align"))
    assert len(samples) == 80
    for sample in samples:
        human, gpt = sample.record["conversations"]
        assert human["value"].count("<image>") == 1
        check_description(gpt["value"], sample.record["meta"]["scene"]["objects"])


def test_rendered_pixels_match_the_scene_graph(synth_dir):
    scenes = json.loads((synth_dir / "eval" / "scenes.json").read_text())
    for image_id, scene in scenes.items():
        pixels = np.asarray(Image.open(synth_dir / "eval" / "images" / f"{int(image_id):012d}.png").convert("RGB")).astype(int)
        assert pixels.shape == (64, 64, 3)
        occupied = set()
        for obj in scene["objects"]:
            x, y = centre(obj)
            if obj["shape"] == "triangle":
                y += (obj["bbox"][3] - obj["bbox"][1]) / 4  # the centroid sits lower than the box centre
            assert np.abs(pixels[int(y), int(x)] - COLORS[obj["color"]]).max() <= 12, (image_id, obj)
            occupied.add(tuple(obj["cell"]))
        for row in range(3):
            for col in range(3):
                if (row, col) not in occupied:  # an empty cell is plain background
                    cell = pixels[row * 64 // 3 + 2 : (row + 1) * 64 // 3 - 2, col * 64 // 3 + 2 : (col + 1) * 64 // 3 - 2]
                    assert (cell == 32).all()


def test_eval_vqa_layout_answers_and_chance(synth_dir):
    root = synth_dir / "eval"
    scenes = json.loads((root / "scenes.json").read_text())
    questions = json.loads((root / "vqa" / "questions.json").read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads((root / "vqa" / "annotations.json").read_text())["annotations"]}
    assert len(questions) == 40 * 3 == len(annotations)
    for q in questions:
        a = annotations[q["question_id"]]
        program, truth = answer(q["question"], scenes[str(q["image_id"])]["objects"])
        assert (a["question_type"], a["multiple_choice_answer"], a["image_id"]) == (program, truth, q["image_id"])
        assert a["answer_type"] == ("number" if program == "count" else "yes/no" if truth in ("yes", "no") else "other")
        assert a["answers"] == [{"answer": truth, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]
        assert (root / "images" / f"{q['image_id']:012d}.png").exists()
    chance = json.loads((root / "vqa" / "chance.json").read_text())
    expected = {"attribute_color": 1 / 6, "attribute_shape": 1 / 3, "attribute_size": 1 / 2, "count": 1 / 5,
                "exist": 1 / 2, "spatial": 1 / 2, "compare_size": 1 / 2, "compare_color": 1 / 2}  # fmt: skip
    assert chance == pytest.approx({**expected, "overall": chance["overall"]})
    types = Counter(a["question_type"] for a in annotations.values())
    assert chance["overall"] == pytest.approx(sum(expected[t] * n for t, n in types.items()) / len(annotations))


def _pope(root: Path, strategy: str) -> list[dict]:
    return [json.loads(line) for line in (root / "pope" / f"synth_pope_{strategy}.json").read_text().splitlines()]


def test_pope_splits(synth_dir):
    root = synth_dir / "eval"
    scenes = {f"{int(k):012d}.png": v["objects"] for k, v in json.loads((root / "scenes.json").read_text()).items()}
    present = {name: {(o["color"], o["shape"]) for o in objects} for name, objects in scenes.items()}
    frequency = Counter(c for cats in present.values() for c in cats)
    for strategy in ("random", "popular", "adversarial"):
        rows = _pope(root, strategy)
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        by_image: dict[str, list] = {}
        for row in rows:
            color, shape = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", row["text"]).groups()
            assert row["label"] == ("yes" if (color, shape) in present[row["image"]] else "no")
            by_image.setdefault(row["image"], []).append(((color, shape), row["label"]))
        assert set(by_image) == set(scenes)
        for image, pairs in by_image.items():
            labels = Counter(label for _, label in pairs)
            assert labels["yes"] == labels["no"] == min(3, len(present[image]))
            negatives = [c for c, label in pairs if label == "no"]
            if strategy == "popular":  # the most frequent absent categories
                absent = sorted((-frequency[c], c) for c in frequency if c not in present[image])
                assert sorted(negatives) == sorted(c for _, c in absent[: len(negatives)])
            if strategy == "adversarial":  # each shares a colour or a shape with something present
                assert all(any(n[0] == p[0] or n[1] == p[1] for p in present[image]) for n in negatives)
    assert _pope(root, "random") != _pope(root, "popular")


def test_multiple_choice_split(synth_dir):
    root = synth_dir / "eval"
    scenes = json.loads((root / "scenes.json").read_text())
    seed = json.loads((root / "mc" / "seed.json").read_text())
    assert seed["question_type"] == {"color": 1, "count": 2} and len(seed["questions"]) == 40
    for q in seed["questions"]:
        objects = scenes[str(int(q["data_id"].removesuffix(".png")))]["objects"]
        program, truth = answer(q["question"], objects)
        options = [q[f"choice_{x}"] for x in "abcd"]
        assert q["answer"] == "ABCD"[options.index(truth)] and options.count(truth) == 1
        assert q["question_type_id"] == (1 if program == "attribute_color" else 2) and q["data_type"] == "image"
    assert Counter(q["answer"] for q in seed["questions"]).most_common(1)[0][1] < 20  # letters are shuffled


def test_deterministic_and_disjoint(synth_dir, tmp_path):
    again = tmp_path / "again"
    assert main(["synth", "--out", str(again), "--num-train", "80", "--num-eval", "40", "--seed", "5",
                 "--samples-per-shard", "30", "--workers", "2", "--no-progress"]) == 0  # fmt: skip
    for sub in ("align", "instruct", "ifeval"):
        for shard in sorted((synth_dir / sub).glob("*.tar")):
            assert shard.read_bytes() == (again / sub / shard.name).read_bytes()
    for path in sorted((synth_dir / "eval").rglob("*.*")):
        assert path.read_bytes() == (again / path.relative_to(synth_dir)).read_bytes()
    other = tmp_path / "other"
    assert main(["synth", "--out", str(other), "--num-train", "5", "--num-eval", "5", "--seed", "6",
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    assert (other / "eval" / "scenes.json").read_bytes() != (synth_dir / "eval" / "scenes.json").read_bytes()
    train_ids = {s.record["meta"]["scene_id"] for s in iter_samples(synth_dir / "instruct")}
    eval_ids = {int(k) for k in json.loads((synth_dir / "eval" / "scenes.json").read_text())}
    assert not train_ids & eval_ids
    train_pixels = {s.images[0] for s in iter_samples(synth_dir / "instruct")}
    eval_pixels = {p.read_bytes() for p in (synth_dir / "eval" / "images").iterdir()}
    assert len(train_pixels & eval_pixels) < 5  # separate random streams: (almost) no identical images


def test_invalid_world_is_a_clear_error(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--shapes", "circle,hexagon", "--no-progress"]) == 2
    assert "valid shapes are circle, square, triangle, diamond" in capsys.readouterr().err


def test_ifeval_training_answers_follow_every_instruction_in_force(synth_dir):
    """Read back from the shards: each assistant turn follows every IFEval instruction given so far (a later
    turn's instructions add to the first turn's); every third sample has two turns."""
    from eval.ifeval import check_response

    samples = list(iter_samples(synth_dir / "ifeval"))
    assert len(samples) >= 75
    ids, two_turns = Counter(), 0
    for sample in samples:
        conversation = sample.record["conversations"]
        turns = sample.record["meta"]["instructions"]
        assert len(conversation) == 2 * len(turns) and conversation[0]["value"].startswith("<image>\n")
        two_turns += len(turns) == 2
        in_force: dict[str, dict] = {}
        for number, turn in enumerate(turns):
            in_force.update(zip(turn["instruction_id_list"], turn["kwargs"]))
            ids.update(turn["instruction_id_list"])
            answer = conversation[2 * number + 1]["value"]
            strict, _ = check_response(list(in_force), list(in_force.values()), conversation[2 * number]["value"], answer)
            assert all(strict), (sample.key, number, answer)
    assert two_turns >= 20 and len(ids) >= 10, (two_turns, ids)


def test_ifeval_eval_split_scores_100_with_the_generators_answers(synth_dir, tmp_path):
    """The held-out split reads as `ifeval_mm` (images found from the file's folder); the answers the
    generator would give score 100 strict; upper-cased they score lower, and a bare "ok" fails nearly all."""
    from data_prep.synth.generate import SynthConfig, ifeval_dialogue
    from data_prep.synth.world import Scene, WorldConfig
    from eval.cli import main as eval_main

    questions = synth_dir / "eval" / "ifeval" / "questions.jsonl"
    records = [json.loads(line) for line in questions.read_text().splitlines()]
    assert len(records) >= 35 and sum("turns" in r for r in records) >= 10
    scenes = json.loads((synth_dir / "eval" / "scenes.json").read_text())
    config = SynthConfig(num_train=80, num_eval=40, seed=5, world=WorldConfig())
    answers = {}
    for index, image_id in enumerate(sorted(scenes, key=int)):
        scene = Scene(scenes[image_id]["objects"], scenes[image_id]["relations"])
        dialogue = ifeval_dialogue(config, "eval", index, scene)
        for number, turn in enumerate(dialogue):
            answers[f"{image_id}/{number}" if len(dialogue) > 1 else image_id] = turn.answer
    for name, transform in (("right", str), ("upper", str.upper), ("ok", lambda _: "ok")):
        predictions = tmp_path / f"{name}.jsonl"
        predictions.write_text("".join(json.dumps({"question_id": k, "text": transform(v)}) + "\n"
                                       for k, v in answers.items()))
        assert eval_main(["score", "--task", "ifeval_mm", "--questions", str(questions), "--predictions",
                          str(predictions), "--out", str(tmp_path / name)]) == 0
    right = json.loads((tmp_path / "right" / "metrics.json").read_text())
    upper = json.loads((tmp_path / "upper" / "metrics.json").read_text())
    assert right["missing"] == 0 and right["prompt_strict"] == 100.0 and right["pif"] == 100.0
    bare = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert upper["prompt_strict"] < 100.0 and bare["prompt_strict"] < 25.0


def test_noise_is_planted_where_noise_jsonl_says_and_nowhere_else(synth_dir, tmp_path):
    """--noise 0.25: a quarter of the instruct samples, half wrong answers (every answer differs from the scene
    graph's), half another scene's image; every other sample is byte-identical to the clean run's."""
    noisy_dir = tmp_path / "noisy"
    assert main(["synth", "--out", str(noisy_dir), "--num-train", "80", "--num-eval", "40", "--seed", "5",
                 "--samples-per-shard", "30", "--workers", "1", "--no-progress", "--noise", "0.25"]) == 0
    noise = {r["id"]: r["kind"] for r in map(json.loads, (noisy_dir / "noise.jsonl").read_text().splitlines())}
    assert len(noise) == 20 and Counter(noise.values()) == {"wrong_answer": 10, "wrong_image": 10}
    clean = {s.record["id"]: s for s in iter_samples(synth_dir / "instruct")}
    clean_images = {s.images[0] for s in clean.values()}
    for sample in iter_samples(noisy_dir / "instruct"):
        original = clean[sample.record["id"]]
        kind = noise.get(sample.record["id"])
        if kind is None:
            assert sample.record == original.record and sample.images == original.images
        elif kind == "wrong_answer":
            truth = [qa["answer"] for qa in sample.record["meta"]["qa"]]
            answers = [m["value"] for m in sample.record["conversations"] if m["from"] == "gpt"]
            assert len(answers) == len(truth) and all(a != t for a, t in zip(answers, truth))
            assert sample.images == original.images
        else:
            assert sample.record["conversations"] == original.record["conversations"]
            assert sample.images != original.images and sample.images[0] in clean_images
    for sub in ("align", "ifeval"):  # only the instruct split is touched
        for shard in sorted((synth_dir / sub).glob("*.tar")):
            assert shard.read_bytes() == (noisy_dir / sub / shard.name).read_bytes()
