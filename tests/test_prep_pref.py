"""mm-prep pref: preference shards (record layout, bytes kept, rejections with reasons, resume) from the
llava layout and from tiny files in the released layouts of RLHF-V (parquet, jsonl) and VLFeedback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.cli import main
from data_prep.inspect_shards import contact_sheet, format_report, inspect_directory, iter_samples
from mm.chat import check_conversation
from test_prep_llava import gpt, human, image_bytes

RECORD_KEYS = ["id", "source", "conversations", "chosen", "rejected", "images", "image_sizes", "meta"]


def run(tmp_path: Path, annotations: Path, fmt: str, root: Path, out: str = "out", *extra: str) -> Path:
    target = tmp_path / out
    assert main(["pref", "--annotations", str(annotations), "--format", fmt, "--image-root", str(root),
                 "--out", str(target), "--workers", "1", "--no-progress", "--samples-per-shard", "3", *extra]) == 0  # fmt: skip
    return target


def read(out: Path) -> dict:
    records = {}
    for sample in iter_samples(out):
        record = sample.record
        assert list(record) == RECORD_KEYS  # the layout the DPO stage reads
        for reply in (record["chosen"], record["rejected"]):  # what training encodes: prompt + either reply
            check_conversation([*record["conversations"], gpt(reply)], len(record["images"]))
        check_conversation(record["conversations"], len(record["images"]), prompt=True)
        assert record["images"] == [f"img{i}.{name.split('.')[-1]}" for i, name in enumerate(record["images"])]
        records[record["id"]] = (record, sample.images)
    return records


def rejected(out: Path) -> dict:
    return {row["id"]: row["reason"] for row in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


def test_llava_layout_pairs_and_rejections(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(image_bytes("JPEG"))
    (root / "sub" / "b.png").write_bytes(image_bytes("PNG", color=(0, 0, 255)))
    good = [
        {"id": "one", "image": "a.jpg", "conversations": [human("<image>\nWhat colour?")], "chosen": "Red.",
         "rejected": "Blue.", "judge": "human"},
        {"id": "multi", "image": ["a.jpg", "sub/b.png"], "conversations": [
            {"from": "system", "value": "Be brief."}, human("<image>\nFirst."), gpt("Red."), human("<image>\nAnd this?")],
         "chosen": "Blue.", "rejected": "Green."},
        {"id": 7, "conversations": [human("Say hi.")], "chosen": "Hi!", "rejected": "No."},
    ]  # fmt: skip
    bad = {
        "missing_image": {"id": "b-missing", "image": "nope.jpg", "conversations": [human("<image>\nx")], "chosen": "a", "rejected": "b"},
        "image_count_mismatch": {"id": "b-count", "image": "a.jpg", "conversations": [human("no placeholder")], "chosen": "a", "rejected": "b"},
        "empty_response": {"id": "b-empty", "conversations": [human("x")], "chosen": "a", "rejected": "  "},
        "identical_responses": {"id": "b-same", "conversations": [human("x")], "chosen": "same", "rejected": "same "},
        "non_alternating_roles": {"id": "b-ends-gpt", "conversations": [human("x"), gpt("y")], "chosen": "a", "rejected": "b"},
        "malformed_record": {"id": "b-no-chosen", "conversations": [human("x")], "rejected": "b"},
        "undecodable_image": {"id": "b-bytes", "image": "bad.jpg", "conversations": [human("<image>")], "chosen": "a", "rejected": "b"},
        "duplicate_id": {"id": "one", "conversations": [human("x")], "chosen": "a", "rejected": "b"},
    }  # fmt: skip
    (root / "bad.jpg").write_bytes(b"not an image")
    lines = [json.dumps(r) for r in [*good, *bad.values()]]
    lines.append('{"id": "b-text", "conversations": [{"from": "human", "value": "x"}], "chosen": "\\ud800", "rejected": "b"}')
    lines.append(json.dumps({"id": "b-image-in-reply", "conversations": [human("x")], "chosen": "<image>", "rejected": "b"}))
    annotations = tmp_path / "pairs.jsonl"
    annotations.write_text("\n".join(lines) + "\n")
    out = run(tmp_path, annotations, "llava", root)

    records = read(out)
    assert set(records) == {"one", "multi", 7}
    record, images = records["one"]
    assert (record["chosen"], record["rejected"], record["source"]) == ("Red.", "Blue.", "pairs")
    assert images == [(root / "a.jpg").read_bytes()] and record["image_sizes"] == [[32, 24]]  # bytes kept
    assert record["meta"]["record_extra"] == {"judge": "human"} and record["meta"]["image_paths"] == ["a.jpg"]
    assert records["multi"][1] == [(root / "a.jpg").read_bytes(), (root / "sub" / "b.png").read_bytes()]
    assert records[7][0]["images"] == [] and records[7][0]["conversations"] == [human("Say hi.")]

    reasons = rejected(out)
    assert reasons == {**{r["id"]: reason for reason, r in bad.items() if reason != "duplicate_id"}, "one": "duplicate_id",
                       "b-text": "bad_text", "b-image-in-reply": "image_count_mismatch"}  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_input_records"] == len(lines) and manifest["num_records_written"] == 3
    assert manifest["input"]["format"] == "llava"

    shards = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert len(shards) == 2  # 4 planned samples (the undecodable image is found while writing), 3 per shard
    run(tmp_path, annotations, "llava", root)  # resume: complete shards are kept as they are
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == shards
    again = run(tmp_path, annotations, "llava", root, "again")
    assert {p.name: p.read_bytes() for p in again.glob("*.tar")} == shards  # deterministic


def test_inspect_counts_the_chosen_answer_as_the_trained_turn(tmp_path):
    annotations = tmp_path / "pairs.jsonl"
    annotations.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "conversations": [human("Say hi.")], "chosen": "Hi!", "rejected": "Go away now."},
        {"id": "b", "conversations": [human("One."), gpt("Two."), human("Three?")], "chosen": "Four.", "rejected": "5"},
    ]) + "\n")  # fmt: skip
    out = run(tmp_path, annotations, "llava", tmp_path)
    report = inspect_directory(out)
    assert report["turns"]["min"] == 1 and report["turns"]["max"] == 2
    assert report["characters"]["max"] == len("One.Two.Three?Four.")
    assert report["chosen characters"]["max"] == 5 and report["rejected characters"]["max"] == len("Go away now.")
    assert "rejected characters: min 1" in format_report(report)
    page = contact_sheet(list(iter_samples(out)))
    assert '<p class="chosen"><b>chosen:</b> Hi!</p><p class="rejected"><b>rejected:</b> Go away now.</p>' in page


RLHF_V_PAIRS = [
    {"question": "What is in the image?", "chosen": "A red block on a table.", "rejected": "A red block next to a dog."},
    {"question": "<image>\nDescribe the colours.", "chosen": "Mostly blue.", "rejected": "Mostly green and yellow."},
    {"question": "Is there a cat?", "chosen": "No.", "rejected": "No."},  # identical
]


def rlhf_v_rows(images: list[bytes]) -> list[dict]:
    """The released columns: ds_name, image {bytes, path}, text (JSON string), origin_dataset, origin_split, idx, image_path."""
    return [{"ds_name": "RLHF-V", "image": {"bytes": data, "path": f"{i}.jpg"}, "text": json.dumps(pair),
             "origin_dataset": "VQAv2", "origin_split": json.dumps({"model": "m", "type": "detailed_description"}),
             "idx": 100 + i, "image_path": f"coco/{i}.jpg"} for i, (pair, data) in enumerate(zip(RLHF_V_PAIRS, images))]  # fmt: skip


def test_rlhf_v_parquet_with_embedded_images(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images = [image_bytes("JPEG"), image_bytes("PNG", color=(0, 0, 255)), image_bytes("JPEG", color=(0, 200, 0))]
    path = tmp_path / "RLHF-V-Dataset.parquet"
    pq.write_table(pa.Table.from_pylist(rlhf_v_rows(images)), path)
    out = run(tmp_path, path, "rlhf-v", tmp_path / "unused")
    records = read(out)
    assert set(records) == {0, 1}
    record, data = records[0]
    assert record["conversations"] == [human("<image>\nWhat is in the image?")]  # placeholder added
    assert (record["chosen"], record["rejected"]) == (RLHF_V_PAIRS[0]["chosen"], RLHF_V_PAIRS[0]["rejected"])
    assert data == [images[0]] and record["images"] == ["img0.jpg"]  # embedded bytes kept
    assert records[1][0]["conversations"] == [human("<image>\nDescribe the colours.")] and records[1][1] == [images[1]]
    extra = record["meta"]["record_extra"]
    assert extra["idx"] == 100 and extra["ds_name"] == "RLHF-V" and extra["image_path"] == "coco/0.jpg"
    rows = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["index"], r["reason"]) for r in rows] == [(2, "identical_responses")]
    assert rows[0]["record"]["image"]["bytes"] == f"<{len(images[2])} bytes>"  # not the bytes themselves


def test_rlhf_v_jsonl_with_image_paths_and_rlaif_v_columns(tmp_path):
    root = tmp_path / "images"
    (root / "coco").mkdir(parents=True)
    (root / "coco" / "0.jpg").write_bytes(image_bytes("JPEG"))
    rows = rlhf_v_rows([b"", b"", b""])[:2]
    for row in rows:
        row["image"] = None  # the older JSON release: images by path
    rows[1]["image_path"] = "coco/missing.jpg"
    rlaif = {"ds_name": "RLAIF-V", "image": {"bytes": None, "path": None}, "image_path": "coco/0.jpg", "idx": "x",
             "question": "What is it?", "chosen": "A block.", "rejected": "A dog."}  # fmt: skip
    path = tmp_path / "rlhf.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rlaif]))
    out = run(tmp_path, path, "rlhf-v", root)
    records = read(out)
    assert set(records) == {0, 2}
    assert records[0][1] == [(root / "coco" / "0.jpg").read_bytes()]
    assert records[2][0]["chosen"] == "A block." and records[2][0]["meta"]["image_paths"] == ["coco/0.jpg"]
    assert rejected(out) == {1: "missing_image"}  # ids: the row index


def completion(model: str, response: str, helpful, faithful, ethical) -> dict:
    return {"model": model, "response": response, "annotations": {
        "Helpfulness": {"Rating": str(helpful), "Rationale": "..."},
        "Visual Faithfulness": {"Rating": str(faithful), "Rationale": "..."},
        "Ethical Considerations": {"Rating": str(ethical), "Rationale": "..."},
    }}  # fmt: skip


VLFEEDBACK = [
    {"id": "svit-1", "prompt": "What is the man holding?", "models": ["a", "b", "c", "d"], "completions": [
        completion("a", "A kite.", 5, 5, 5), completion("b", "An umbrella.", 2, 1, 5),
        completion("c", "A kite, I think.", 5, 5, 5), completion("d", "A red kite.", 4, 5, "N/A")]},
    {"id": "tie", "prompt": "Describe it.", "models": ["a", "b"], "completions": [
        completion("a", "A cat.", 4, 4, 4), completion("b", "A small cat.", 3, 5, 4)]},
    {"id": "lonely", "prompt": "Describe it.", "models": ["a", "b"], "completions": [
        completion("a", "A cat.", 4, 4, 4), completion("b", "", 1, 1, 1)]},
    {"id": "no-image", "prompt": "Describe it.", "models": ["a", "b"], "completions": [
        completion("a", "A cat.", 5, 5, 5), completion("b", "A dog.", 1, 1, 1)]},
]  # fmt: skip


def check_vlfeedback(out: Path, images: dict[str, bytes]) -> None:
    records = read(out)
    assert set(records) == {"svit-1"}
    record, data = records["svit-1"]
    # means: a 5, b 8/3, c 5, d 4.5 (N/A left out): the first best (a) against the worst (b)
    assert (record["chosen"], record["rejected"]) == ("A kite.", "An umbrella.")
    assert record["conversations"] == [human("<image>\nWhat is the man holding?")]
    meta = record["meta"]
    assert (meta["chosen_model"], meta["rejected_model"]) == ("a", "b")
    assert meta["ratings"] == pytest.approx([5, 8 / 3, 5, 4.5]) and "mean" in meta["rating"]
    assert data == [images["svit-1"]]
    assert rejected(out) == {"tie": "tied_ratings", "lonely": "too_few_completions", "no-image": "missing_image"}


def test_vlfeedback_jsonl_with_merged_images(tmp_path):
    root = tmp_path / "merged_images"
    root.mkdir()
    images = {"svit-1": image_bytes("JPEG"), "tie": image_bytes("JPEG"), "lonely": image_bytes("JPEG")}
    for name, data in images.items():
        (root / f"{name}.jpg").write_bytes(data)
    path = tmp_path / "vlfeedback_80k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in VLFEEDBACK))
    out = run(tmp_path, path, "vlfeedback", root)
    check_vlfeedback(out, images)
    assert json.loads((out / "manifest.json").read_text())["input"]["rating"].startswith("mean")


def test_vlfeedback_parquet_and_struct_of_lists(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images = {"svit-1": image_bytes("PNG")}
    rows = [dict(r, image={"bytes": images.get(r["id"]), "path": None}) for r in VLFEEDBACK]
    rows = [dict(r, image=None) if r["image"]["bytes"] is None else r for r in rows]
    root = tmp_path / "merged_images"
    root.mkdir()
    for name in ("tie", "lonely"):
        (root / f"{name}.jpg").write_bytes(image_bytes("JPEG"))
    path = tmp_path / "vlfeedback.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)  # completions: list<struct>, as released
    check_vlfeedback(run(tmp_path, path, "vlfeedback", root), images)
    # `datasets` hands a Sequence of structs over as a struct of lists (e.g. in a to_json export)
    columns = [dict(r, completions={k: [c[k] for c in r["completions"]] for k in ("model", "response", "annotations")})
               for r in rows]  # fmt: skip
    for row in columns:
        row["image"] = None
    (root / "svit-1.jpg").write_bytes(images["svit-1"])
    path = tmp_path / "vlfeedback_columns.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in columns))
    check_vlfeedback(run(tmp_path, path, "vlfeedback", root, "columns"), images)


def test_unreadable_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["pref", "--annotations", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "mm-prep pref: error:" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    pytest.importorskip("pyarrow")
    assert main(["pref", "--annotations", str(bad), "--format", "rlhf-v", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "not a parquet file" in capsys.readouterr().err
