"""mm-prep vqa: most frequent answer, prompt suffixes, grouping by image, accounting."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples
from data_prep.records import RecordError
from data_prep.vqa import load_vqa, most_frequent_answer


def answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def test_most_frequent_answer_and_ties():
    assert most_frequent_answer(answers("two", "2", "2", "two ", "2"))[0] == "2"
    assert most_frequent_answer(answers("Yes", "yes", "no"))[0] == "yes"  # case and spaces folded
    assert most_frequent_answer(answers("red", "blue", "blue", "red"))[0] == "red"  # tie: listed first
    assert most_frequent_answer(answers("blue", "red", "red", "blue"))[0] == "blue"
    assert most_frequent_answer(answers("a", "b", "b"))[1] == {"a": 1, "b": 2}
    with pytest.raises(RecordError):
        most_frequent_answer(answers("", "  "))


@pytest.fixture
def vqa(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for image_id in (1, 2):
        out = io.BytesIO()
        Image.new("RGB", (16, 16), (image_id * 50, 0, 0)).save(out, "JPEG")
        (images / f"COCO_val2014_{image_id:012d}.jpg").write_bytes(out.getvalue())
    questions = [
        {"question_id": 12, "image_id": 1, "question": "What color is it?"},
        {"question_id": 11, "image_id": 1, "question": "How many?"},
        {"question_id": 21, "image_id": 2, "question": "Is it red?"},
        {"question_id": 31, "image_id": 3, "question": "Image file missing?"},
        {"question_id": 41, "image_id": 2, "question": "No annotation?"},
        {"question_id": 21, "image_id": 2, "question": "Repeated id?"},
        {"question_id": "x", "image_id": 2, "question": "Bad id type"},
    ]
    annotations = [
        {"question_id": 12, "image_id": 1, "answers": answers("red", "dark red", "red")},
        {"question_id": 11, "image_id": 1, "answers": answers("3", "three", "three", "3", "three")},
        {"question_id": 21, "image_id": 2, "answers": answers("yes", "no", "no", "yes")},
        {"question_id": 31, "image_id": 3, "answers": answers("yes")},
    ]
    qpath, apath = tmp_path / "q.json", tmp_path / "a.json"
    qpath.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    apath.write_text(json.dumps({"annotations": annotations}))
    return qpath, apath, images


def _rejected(out):
    return {(row["id"], row["reason"]) for row in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


def test_one_sample_per_question(vqa, tmp_path):
    qpath, apath, images = vqa
    out = tmp_path / "out"
    assert main(["vqa", "--questions", str(qpath), "--annotations", str(apath), "--image-root", str(images),
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    samples = {s.record["id"]: s for s in iter_samples(out)}
    assert sorted(samples) == [11, 12, 21]
    assert samples[12].record["conversations"] == [
        {"from": "human", "value": "<image>\nWhat color is it?\nAnswer the question using a single word or phrase."},
        {"from": "gpt", "value": "red"},
    ]
    assert samples[11].record["conversations"][1]["value"] == "three"
    assert samples[21].record["conversations"][1]["value"] == "yes"  # 2-2 tie: "yes" is listed first
    assert samples[12].images[0] == (images / "COCO_val2014_000000000001.jpg").read_bytes()
    assert samples[12].record["meta"]["answer_counts"] == [{"red": 2, "dark red": 1}]
    assert _rejected(out) == {(31, "missing_image"), (41, "no_answer"), (21, "duplicate_id"), ("x", "malformed_record")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_input_records"] == 7 and manifest["num_records_written"] == 3


def test_group_by_image_and_prompt_pool(vqa, tmp_path):
    qpath, apath, images = vqa
    pool = tmp_path / "pool.txt"
    pool.write_text("Answer briefly.\n\nOne word please.\n")
    out = tmp_path / "out"
    assert main(["vqa", "--questions", str(qpath), "--annotations", str(apath), "--image-root", str(images),
                 "--image-pattern", "COCO_val2014_{image_id:012d}.jpg", "--prompt-pool", str(pool),
                 "--group-by-image", "--out", str(out), "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    samples = {s.record["id"]: s for s in iter_samples(out)}
    assert sorted(samples) == ["image-1", "image-2"]
    turns = samples["image-1"].record["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
    assert turns[0]["value"].startswith("<image>\nHow many?\n")  # question_id order: 11 before 12
    assert turns[2]["value"].startswith("What color is it?\n") and "<image>" not in turns[2]["value"]
    assert [t["value"] for t in turns[1::2]] == ["three", "red"]
    suffixes = {t["value"].split("\n")[-1] for s in samples.values() for t in s.record["conversations"][0::2]}
    assert suffixes <= {"Answer briefly.", "One word please."}
    assert samples["image-1"].record["meta"]["question_ids"] == [11, 12]
    manifest = json.loads((out / "manifest.json").read_text())
    # 7 questions: 3 written in 2 samples, 4 rejected (one per question, even when grouped)
    assert (manifest["num_records_written"], manifest["num_samples"], manifest["num_rejected"]) == (3, 2, 4)


def test_pool_choice_is_deterministic(vqa, tmp_path):
    qpath, apath, images = vqa
    pool = ["A.", "B.", "C.", "D."]
    first = load_vqa(qpath, apath, images, prompt_pool=pool, seed=3)[0]
    second = load_vqa(qpath, apath, images, prompt_pool=pool, seed=3)[0]
    assert [s.conversations for s in first] == [s.conversations for s in second]


def test_bad_layout_and_pattern_are_clear_errors(vqa, tmp_path, capsys):
    qpath, apath, images = vqa
    args = ["vqa", "--questions", str(apath), "--annotations", str(apath), "--image-root", str(images), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "expected an object with a 'questions' list" in capsys.readouterr().err
    args = ["vqa", "--questions", str(qpath), "--annotations", str(apath), "--image-root", str(images),
            "--image-pattern", "{nope}.jpg", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    assert "cannot be formatted" in capsys.readouterr().err


def _vqa(qpath, apath, images, out, *extra) -> int:
    return main(["vqa", "--questions", str(qpath), "--annotations", str(apath), "--image-root", str(images),
                 "--out", str(out), "--workers", "1", "--no-progress", *extra])  # fmt: skip


def test_image_pattern_must_stay_inside_the_image_root(vqa, tmp_path):
    qpath, apath, images = vqa
    (images / "sub-folder").mkdir()
    outside = ["--image-pattern", "../COCO_val2014_{image_id:012d}.jpg"]
    assert _vqa(qpath, apath, images / "sub-folder", tmp_path / "out", *outside) == 0
    outside_root = {(qid, "image_outside_root") for qid in (11, 12, 21, 31)}
    assert _rejected(tmp_path / "out") == outside_root | {(41, "no_answer"), ("x", "malformed_record")}
    assert not list(iter_samples(tmp_path / "out"))
    assert _vqa(qpath, apath, images / "sub-folder", tmp_path / "allowed", *outside, "--allow-outside-root") == 0
    assert sorted(s.record["id"] for s in iter_samples(tmp_path / "allowed")) == [11, 12, 21]


def test_bad_text_and_a_bad_first_copy_are_per_question(vqa, tmp_path):
    qpath, apath, images = vqa
    data = json.loads(qpath.read_text())
    data["questions"] += [{"question_id": 51, "image_id": 2, "question": "Bad \ud800 text?"},
                          {"question_id": 61, "image_id": 3, "question": "First copy, image missing?"},
                          {"question_id": 61, "image_id": 2, "question": "Second copy, image here?"}]  # fmt: skip
    qpath.write_text(json.dumps(data))
    annotations = json.loads(apath.read_text())
    annotations["annotations"] += [{"question_id": 51, "answers": answers("yes")}, {"question_id": 61, "answers": answers("no")}]
    apath.write_text(json.dumps(annotations))
    assert _vqa(qpath, apath, images, tmp_path / "out") == 0
    assert {(61, "missing_image"), (51, "bad_text")} <= _rejected(tmp_path / "out")
    written = {s.record["id"]: s.record["conversations"][0]["value"] for s in iter_samples(tmp_path / "out")}
    assert "Second copy" in written[61]
