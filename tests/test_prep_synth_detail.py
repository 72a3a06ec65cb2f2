"""mm-prep synth --detail: every answer recomputed from the stored scene (geometry, not the generator's code),
the objects lost in the demo's 64-px single view and resolved at 3x that, the other splits untouched,
determinism, and `synth_detail` scoring a hand-made predictions file as computed by hand."""

from __future__ import annotations

import hashlib
import io
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples
from data_prep.records import check_conversation
from eval.predictions import read_predictions
from eval.scoring.evaluate import score_predictions
from eval.tasks import get_task

# The CLI defaults, written out here on purpose (the test must not reuse the generator's tables).
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 255), "yellow": (240, 220, 40),
          "purple": (170, 60, 220), "cyan": (40, 215, 225)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
BACKGROUND = np.array([32, 32, 32], dtype=float)
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SHORT = "\nAnswer the question using a single word or phrase."
ARGS = ["--num-train", "6", "--num-eval", "3", "--seed", "3", "--samples-per-shard", "40", "--workers", "1",
        "--no-progress", "--no-ifeval", "--no-pref"]  # fmt: skip
DETAIL = ["--detail", "--num-detail-train", "60", "--num-detail-eval", "150"]


def synth(out: Path, *extra: str) -> Path:
    assert main(["synth", "--out", str(out), *ARGS, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def detail_dir(tmp_path_factory) -> Path:
    return synth(tmp_path_factory.mktemp("detail"), *DETAIL)


def eval_scenes(root: Path) -> dict[int, dict]:
    return {int(k): v for k, v in json.loads((root / "eval/detail/scenes.json").read_text()).items()}


def quadrant(obj: dict, scene: dict) -> str:
    x0, y0, x1, y1 = obj["bbox"]
    left, right = x1 < scene["width"] / 2, x0 > scene["width"] / 2
    top, bottom = y1 < scene["height"] / 2, y0 > scene["height"] / 2
    assert (left or right) and (top or bottom), f"{obj} straddles a midline"
    return f"{'top' if top else 'bottom'} {'left' if left else 'right'}"


def true_answer(question: str, scene: dict) -> str:
    """The answer, recomputed from the scene's boxes and attributes."""
    objects = scene["objects"]
    if m := re.fullmatch(r"What (color|shape) is the tiny object in the (.+) of the image\?", question):
        there = [o for o in objects if quadrant(o, scene) == m[2]]
        assert len(there) == 1, question
        return there[0][m[1]]
    if m := re.fullmatch(r"How many tiny (?:(\w+) objects|objects|(\w+)s) are there\?", question):
        color, shape = m[1], m[2]
        assert color in (None, *COLORS) and shape in (None, *SHAPES), question
        return str(sum((color is None or o["color"] == color) and (shape is None or o["shape"] == shape) for o in objects))
    if m := re.fullmatch(r"In which part of the image is the tiny (.+)\?", question):
        words = m[1].split()
        assert len({quadrant(o, scene) for o in objects}) >= 2, "one occupied quadrant gives the answer away"
        matches = [o for o in objects if all(o["color"] == w if w in COLORS else w == "object" or o["shape"] == w
                                             for w in words)]  # fmt: skip
        assert len(matches) == 1, f"ambiguous or empty reference {m[1]!r}"
        return quadrant(matches[0], scene)
    raise AssertionError(f"unexpected question {question!r}")


def test_eval_answers_are_true_of_the_scenes(detail_dir):
    root = detail_dir / "eval/detail"
    questions = json.loads((root / "questions.json").read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads((root / "annotations.json").read_text())["annotations"]}
    scenes = eval_scenes(detail_dir)
    assert len(scenes) == 150 and len(questions) == len(annotations) >= 400
    for q in questions:
        a = annotations[q["question_id"]]
        assert a["multiple_choice_answer"] == true_answer(q["question"], scenes[q["image_id"]])
        assert [x["answer"] for x in a["answers"]] == [a["multiple_choice_answer"]] * 10
    kinds = {a["question_type"] for a in annotations.values()}
    assert kinds == {"detail_color", "detail_shape", "detail_count", "detail_where"}
    chance = json.loads((root / "chance.json").read_text())
    assert {k: round(v, 4) for k, v in chance.items() if k != "overall"} == {
        "detail_color": round(1 / 6, 4), "detail_shape": round(1 / 3, 4), "detail_count": 0.2, "detail_where": 0.25}
    by_kind = [a["question_type"] for a in annotations.values()]
    assert chance["overall"] == pytest.approx(sum(chance[k] for k in by_kind) / len(by_kind))


def test_training_dialogues_are_true_of_their_scenes(detail_dir):
    samples = list(iter_samples(detail_dir / "detail"))
    assert len(samples) == 60
    for sample in samples:
        conversations, scene = sample.record["conversations"], sample.record["meta"]["scene"]
        check_conversation(conversations, 1)
        assert conversations[0]["value"].startswith("<image>\n")
        for human, gpt in zip(conversations[::2], conversations[1::2]):
            question = human["value"].removeprefix("<image>\n")
            assert question.endswith(SHORT)
            assert gpt["value"] == true_answer(question.removesuffix(SHORT), scene)
        image = Image.open(io.BytesIO(sample.images[0]))
        assert image.size == (scene["width"], scene["height"])


def test_canvases_vary_and_objects_are_drawn_where_the_scene_says(detail_dir):
    scenes = eval_scenes(detail_dir)
    sizes = {(s["width"], s["height"]) for s in scenes.values()}
    assert all(192 <= max(size) <= 384 for size in sizes)
    assert {w > h for w, h in sizes} == {True, False} and len({round(max(s) / min(s), 1) for s in sizes}) >= 4
    for image_id, scene in list(scenes.items())[:40]:
        pixels = np.asarray(Image.open(detail_dir / f"eval/detail/images/{image_id:012d}.png").convert("RGB"), float)
        far = np.ones(pixels.shape[:2], bool)
        for obj in scene["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            far[max(0, int(y0) - 1):int(y1) + 2, max(0, int(x0) - 1):int(x1) + 2] = False
            centre = pixels[int(obj["center"][1]), int(obj["center"][0])] - BACKGROUND
            hue = {name: np.dot(centre, np.subtract(rgb, BACKGROUND)) / np.linalg.norm(np.subtract(rgb, BACKGROUND))
                   / max(np.linalg.norm(centre), 1e-9) for name, rgb in COLORS.items()}  # fmt: skip
            assert max(hue, key=hue.get) == obj["color"]
        assert (pixels[far] == BACKGROUND).all()  # nothing drawn outside the objects


def view(image: Image.Image, side: int) -> np.ndarray:
    """The image as a tower of `side` px sees it through LLaVA-1.5's pad-and-resize (mm's own transform); at
    side 192 that is the scale of the demo's anyres grid of up to 3 x 3 tiles of 64 px."""
    from mm.transforms import ImageTransform

    return ImageTransform(side, CLIP_MEAN, CLIP_STD, "pad")(image).permute(1, 2, 0).numpy().astype(float)


def isolated_objects(root: Path, side: int):
    """(object, what it adds to the `side`-px view around it) for every object with no other within 4 px of
    the 64-px view. What it adds: the view minus the view of the empty canvas (the padding and the canvas
    edges then cancel out)."""
    for image_id, scene in eval_scenes(root).items():
        image = Image.open(root / f"eval/detail/images/{image_id:012d}.png").convert("RGB")
        long, r = max(image.size), 3 if side == 64 else 7
        added = view(image, side) - view(Image.new("RGB", image.size, tuple(BACKGROUND.astype(int))), side)
        pixels, scale = np.pad(added, ((r, r), (r, r), (0, 0))), side / long
        shift = ((long - scene["width"]) / 2, (long - scene["height"]) / 2)
        for obj in scene["objects"]:
            near = [o for o in scene["objects"] if o is not obj and
                    max(abs(o["center"][i] - obj["center"][i]) for i in (0, 1)) < 4 * long / 64]  # fmt: skip
            if near:
                continue
            x, y = (int((obj["center"][i] + shift[i]) * scale) + r for i in (0, 1))
            yield obj, pixels[y - r:y + r + 1, x - r:x + r + 1]


def peak_contrast(obj: dict, patch: np.ndarray) -> float:
    """The largest share of the object's colour (against the background) any pixel near it keeps."""
    direction = np.subtract(COLORS[obj["color"]], BACKGROUND)
    return float((patch @ direction / (direction @ direction)).max())


def test_objects_fade_in_the_64px_view_and_stay_in_the_3x_view(detail_dir):
    small = [peak_contrast(o, p) for o, p in isolated_objects(detail_dir, 64)]
    large = [peak_contrast(o, p) for o, p in isolated_objects(detail_dir, 192)]
    assert len(small) == len(large) >= 200
    # At 64 px an object is under a pixel: its colour survives only as a faint blend with the background.
    assert max(small) < 0.8 and statistics.median(small) < 0.55
    # At 3x it is a 2-3 px blob at full contrast (above 1: the bicubic kernel's overshoot).
    assert min(large) > 0.85 and statistics.median(large) > 0.95


def shape_signature(patch: np.ndarray) -> np.ndarray:
    """Where an object's intensity lies, independent of where it sits (FFT magnitude) and of how bright or large
    it is (normalised mass): what is left to tell shapes apart."""
    mass = np.abs(patch).sum(axis=2)
    return np.abs(np.fft.fft2(mass / max(mass.sum(), 1e-9))).ravel()


def nearest_neighbour_shape_accuracy(root: Path, side: int) -> float:
    items = [(o["shape"], shape_signature(p)) for o, p in isolated_objects(root, side)]
    half = len(items) // 2
    train, test = items[:half], items[half:]
    references = np.stack([s for _, s in train])
    hits = [train[int(np.argmin(((references - s) ** 2).sum(1)))][0] == shape for shape, s in test]
    return sum(hits) / len(hits)


def test_shapes_cannot_be_told_apart_at_64px_but_can_at_3x(detail_dir):
    """A nearest-neighbour classifier on held-out objects: near chance (1/3) on the 64-px view, near perfect on
    the 3x view. Shapes are drawn with equal areas, so brightness gives nothing away."""
    assert nearest_neighbour_shape_accuracy(detail_dir, 64) < 0.6
    assert nearest_neighbour_shape_accuracy(detail_dir, 192) > 0.9


def digests(root: Path, skip=("manifest.json", "synth.json")) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}  # fmt: skip


def test_the_flag_leaves_every_other_split_byte_identical(detail_dir, tmp_path):
    plain = digests(synth(tmp_path / "plain"))
    with_detail = digests(detail_dir)
    assert plain and all(with_detail[name] == digest for name, digest in plain.items())
    assert not any(name.startswith(("detail/", "eval/detail/")) for name in plain)
    assert {n for n in with_detail if n not in plain} >= {"eval/detail/questions.json", "eval/detail/chance.json"}


def test_same_seed_same_bytes_other_seed_other_data(detail_dir, tmp_path):
    again = digests(synth(tmp_path / "again", *DETAIL))
    assert again == digests(detail_dir)
    other = tmp_path / "other"
    assert main(["synth", "--out", str(other), *ARGS[:4], "--seed", "4", *ARGS[6:], *DETAIL]) == 0
    assert (other / "eval/detail/scenes.json").read_bytes() != (detail_dir / "eval/detail/scenes.json").read_bytes()


def test_detail_counts_need_the_flag(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), *ARGS, "--num-detail-eval", "5"]) == 2
    assert "--num-detail-eval and --detail-object-px need --detail" in capsys.readouterr().err


def test_object_size_is_a_knob(tmp_path):
    out = synth(tmp_path / "big", "--detail", "--num-detail-train", "6", "--num-detail-eval", "6",
                "--detail-object-px", "2.0", "2.5")
    sizes = []
    for sample in iter_samples(out / "detail"):
        meta = sample.record["meta"]
        scene = meta["scene"] if "scene" in meta else meta["record_extra"]["scene"]
        unit = max(scene["width"], scene["height"]) / 64
        sizes += [obj["size"] / unit for obj in scene["objects"]]
    assert sizes and all(1.95 <= size <= 2.55 for size in sizes), sizes


def write_detail_split(root: Path) -> None:
    """Four questions, one per program, in the layout `mm-prep synth --detail` writes."""
    rows = [(1, "What color is the tiny object in the top left of the image?", "red", "detail_color", "other"),
            (2, "What shape is the tiny object in the bottom left of the image?", "circle", "detail_shape", "other"),
            (3, "How many tiny objects are there?", "2", "detail_count", "number"),
            (4, "In which part of the image is the tiny blue object?", "top left", "detail_where", "other")]  # fmt: skip
    folder = root / "eval/detail"
    folder.mkdir(parents=True)
    (folder / "questions.json").write_text(json.dumps(
        {"questions": [{"question_id": qid, "image_id": 7, "question": q} for qid, q, *_ in rows]}))
    (folder / "annotations.json").write_text(json.dumps({"annotations": [
        {"question_id": qid, "image_id": 7, "question_type": qtype, "answer_type": atype, "multiple_choice_answer": a,
         "answers": [{"answer": a, "answer_id": i} for i in range(1, 11)]} for qid, _, a, qtype, atype in rows]}))
    (folder / "chance.json").write_text(json.dumps(
        {"detail_color": 1 / 8, "detail_shape": 1 / 4, "detail_count": 1 / 5, "detail_where": 1 / 4, "overall": 0.2}))


def test_synth_detail_scores_a_hand_made_predictions_file(tmp_path):
    write_detail_split(tmp_path)
    predictions = tmp_path / "predictions.jsonl"
    # "Red." -> red (right); question 2 missing; "two" -> 2 (right, VQA's number words); "bottom left" (wrong)
    predictions.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question_id": 1, "text": "Red."}, {"question_id": 3, "text": "two"}, {"question_id": 4, "text": "bottom left"}]))
    task = get_task("synth_detail")
    options = task.options_type(data=str(tmp_path))
    questions = task.read(options)
    assert questions[0].images == (tmp_path / "eval/detail/images/000000000007.png",)
    assert questions[0].prompt == "What color is the tiny object in the top left of the image?" + SHORT
    metrics = score_predictions(task, options, questions, read_predictions(predictions))
    assert metrics["overall"] == 50.0 and metrics["missing"] == 1
    assert metrics["vs_chance"] == {"detail_color": {"accuracy": 100.0, "chance": 12.5},
                                    "detail_shape": {"accuracy": 0.0, "chance": 25.0},
                                    "detail_count": {"accuracy": 100.0, "chance": 20.0},
                                    "detail_where": {"accuracy": 0.0, "chance": 25.0}}  # fmt: skip
    assert metrics["chance_overall"] == 20.0


def test_synth_detail_reads_the_generated_split(detail_dir):
    task = get_task("synth_detail")
    options = task.options_type(data=str(detail_dir))
    questions = task.read(options)
    assert all(image.is_file() for q in questions for image in q.images)
    oracle = [{"question_id": q.question_id, "text": q.truth.answers[0]} for q in questions]
    assert score_predictions(task, options, questions, oracle)["overall"] == 100.0
    always_one = [{"question_id": q.question_id, "text": "1"} for q in questions]
    counts = [q.truth.answers[0] for q in questions if q.truth.question_type == "detail_count"]
    metrics = score_predictions(task, options, questions, always_one)
    assert metrics["per_question_type"]["detail_count"] == round(100 * counts.count("1") / len(counts), 2)
