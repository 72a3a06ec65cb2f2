"""mm-prep llava: round trip, webdataset compatibility, rejections, resume, determinism."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

import data_prep.convert as convert_module
from data_prep.cli import main
from data_prep.convert import ConvertOptions, OutputDirError, convert
from data_prep.inspect_shards import iter_samples
from data_prep.llava import load_llava


def image_bytes(fmt: str, size=(32, 24), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


GOOD = [
    {"id": "text-only", "conversations": [human("Hi there"), gpt("Hello."), human("How are you?"), gpt("Fine.")]},
    {"id": "before", "image": "a.jpg", "conversations": [human("<image>\nWhat is shown?"), gpt("A red block.")]},
    {"id": 7, "image": "b.png", "conversations": [
        {"from": "system", "value": "Be brief."}, human("Describe this.\n<image>"), gpt("Blue."), human("Sure?"), gpt("Yes."),
    ]},  # fmt: skip
    {"id": "multi", "image": ["a.jpg", "sub/f.jpg"],
     "conversations": [human("<image>\nFirst."), gpt("Red."), human("<image>\nAnd this?"), gpt("Green.")]},  # fmt: skip
    {"id": "dots.in.id", "image": "c.jpg", "conversations": [human("<image> Kind?"), gpt("PNG really.")], "model": "x"},
]
BAD = {  # reason -> record
    "missing_image": {"id": "bad-missing", "image": "nope.jpg", "conversations": [human("<image>"), gpt("?")]},
    "undecodable_image": {"id": "bad-bytes", "image": "e.jpg", "conversations": [human("<image>"), gpt("?")]},
    "image_count_mismatch": {"id": "bad-count", "image": "a.jpg", "conversations": [human("no placeholder"), gpt("?")]},
    "empty_conversation": {"id": "bad-empty", "conversations": []},
    "non_alternating_roles": {"id": "bad-order", "conversations": [human("a"), human("b")]},
    "unknown_role": {"id": "bad-role", "conversations": [{"from": "user", "value": "a"}, gpt("b")]},
    "empty_message": {"id": "bad-value", "conversations": [human("   "), gpt("b")]},
    "duplicate_id": {"id": "before", "image": "a.jpg", "conversations": [human("<image>\nAgain"), gpt("Red.")]},
    "malformed_record": ["not", "a", "dict"],
}
EXTRA_BAD = [  # more cases for the same reasons
    ("undecodable_image", {"id": "bad-trunc", "image": "d.jpg", "conversations": [human("<image>"), gpt("?")]}),
    ("image_count_mismatch", {"id": "bad-two", "image": "a.jpg", "conversations": [human("<image><image>"), gpt("?")]}),
    ("image_count_mismatch", {"id": "bad-gpt", "conversations": [human("x"), gpt("<image>")]}),
    ("non_alternating_roles", {"id": "bad-end", "conversations": [human("a"), gpt("b"), human("c")]}),
    ("malformed_record", {"id": "bad-noconv"}),
]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path, list]:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(image_bytes("JPEG"))
    (root / "b.png").write_bytes(image_bytes("PNG", (20, 40), (0, 0, 255)))
    (root / "c.jpg").write_bytes(image_bytes("PNG", (8, 8)))  # PNG bytes behind a .jpg name
    (root / "sub" / "f.jpg").write_bytes(image_bytes("JPEG", (16, 16), (0, 255, 0)))
    (root / "d.jpg").write_bytes(image_bytes("JPEG", (64, 64))[:-40])  # cut short
    (root / "e.jpg").write_bytes(b"\xff\xd8 this is not an image")
    records = [*GOOD, *BAD.values(), *(record for _, record in EXTRA_BAD)]
    annotations = tmp_path / "data.json"
    annotations.write_text(json.dumps(records))
    return annotations, root, records


def run(annotations, root, out, **options) -> convert_module.ConvertResult:
    samples, rejections, total = load_llava(annotations, root, "fixture")
    options.setdefault("progress", False)
    options.setdefault("command", ["mm-prep", "test"])
    return convert(samples, rejections, ConvertOptions(out_dir=str(out), **options), num_input_records=total, source="fixture")


def test_round_trip_equals_input(dataset, tmp_path):
    annotations, root, _ = dataset
    out = tmp_path / "out"
    run(annotations, root, out, samples_per_shard=2)
    read = {sample.record["id"]: sample for sample in iter_samples(out)}
    assert sorted(read, key=str) == sorted((r["id"] for r in GOOD), key=str)
    for record in GOOD:
        sample = read[record["id"]]
        paths = record.get("image", [])
        paths = [paths] if isinstance(paths, str) else paths
        assert sample.record["conversations"] == record["conversations"]
        assert sample.record["source"] == "fixture"
        assert sample.images == [(root / p).read_bytes() for p in paths]
        assert sample.record["meta"]["image_paths"] == paths
        assert "." not in sample.key
    assert read["dots.in.id"].record["images"] == ["img0.png"]  # format from the bytes, not the name
    assert read["dots.in.id"].record["meta"]["record_extra"] == {"model": "x"}
    assert read["multi"].record["images"] == ["img0.jpg", "img1.jpg"]
    assert read["multi"].record["image_sizes"] == [[32, 24], [16, 16]]
    assert read[7].record["image_sizes"] == [[20, 40]]
    assert read["text-only"].record["images"] == [] and read["text-only"].images == []


def test_webdataset_reads_the_shards(dataset, tmp_path):
    import webdataset as wds

    annotations, root, _ = dataset
    out = tmp_path / "out"
    run(annotations, root, out, samples_per_shard=2)
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / shard["name"]) for shard in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == len(GOOD) == manifest["num_samples"]
    by_id = {json.loads(s["json"])["id"]: s for s in samples}
    assert by_id["multi"]["img0.jpg"] == (root / "a.jpg").read_bytes()
    assert by_id["multi"]["img1.jpg"] == (root / "sub" / "f.jpg").read_bytes()
    assert by_id["dots.in.id"]["img0.png"] == (root / "c.jpg").read_bytes()
    assert {k for k in by_id["text-only"] if not k.startswith("__")} == {"json"}


def test_every_rejection_reason_is_recorded(dataset, tmp_path):
    annotations, root, records = dataset
    out = tmp_path / "out"
    result = run(annotations, root, out)
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    got = {(row["index"], row["reason"]) for row in rejected}
    expected = {(records.index(record), reason) for reason, record in [*BAD.items(), *EXTRA_BAD]}
    assert got == expected
    assert all(row["detail"] and row["record"] == records[row["index"]] for row in rejected)  # nothing lost
    manifest = result.manifest
    assert manifest["num_input_records"] == len(records)
    assert manifest["num_samples"] + manifest["num_rejected"] == len(records)
    assert manifest["rejected_by_reason"]["undecodable_image"] == 2
    assert manifest["rejected_by_reason"]["image_count_mismatch"] == 3


def test_jsonl_input_with_a_broken_line(dataset, tmp_path):
    _, root, _ = dataset
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(json.dumps(GOOD[1]) + "\n\n{broken json\n" + json.dumps(GOOD[0]) + "\n")
    out = tmp_path / "out"
    result = run(jsonl, root, out)
    assert result.manifest["num_input_records"] == 3 and result.manifest["num_samples"] == 2
    (row,) = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert row["reason"] == "malformed_record" and row["record"] == "{broken json"


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_same_seed_same_bytes_regardless_of_workers(dataset, tmp_path):
    annotations, root, _ = dataset
    run(annotations, root, tmp_path / "one", samples_per_shard=2, workers=1)
    run(annotations, root, tmp_path / "two", samples_per_shard=2, workers=2)
    run(annotations, root, tmp_path / "other", samples_per_shard=2, seed=1)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one == two and len([n for n in one if n.endswith(".tar")]) == 4
    other = _files(tmp_path / "other")
    assert [one[n] for n in sorted(one) if n.endswith(".tar")] != [other[n] for n in sorted(other) if n.endswith(".tar")]


def test_resume_after_crash_gives_identical_output(dataset, tmp_path, monkeypatch):
    annotations, root, _ = dataset
    clean = tmp_path / "clean"
    run(annotations, root, clean, samples_per_shard=1)
    crashed = tmp_path / "crashed"
    real_write_shard, calls = convert_module.write_shard, []

    def dying_write_shard(task, report):
        calls.append(task.name)
        if len(calls) == 3:  # die in the middle of the third shard
            (Path(task.out_dir) / f"{task.name}.tmp").write_bytes(b"half a tar")
            raise KeyboardInterrupt("simulated kill")
        return real_write_shard(task, report)

    monkeypatch.setattr(convert_module, "write_shard", dying_write_shard)
    with pytest.raises(KeyboardInterrupt):
        run(annotations, root, crashed, samples_per_shard=1)
    assert not (crashed / "manifest.json").exists()
    assert (crashed / "shard-000002.tar.tmp").exists() and not (crashed / "shard-000002.tar").exists()
    first_done = {name: (crashed / name).stat().st_mtime_ns for name in calls[:2]}
    monkeypatch.setattr(convert_module, "write_shard", real_write_shard)
    result = run(annotations, root, crashed, samples_per_shard=1)
    assert result.shards_skipped == 2 and result.shards_written == result.manifest["num_shards"] - 2
    assert {name: (crashed / name).stat().st_mtime_ns for name in first_done} == first_done  # not rewritten
    assert _files(crashed) == _files(clean)  # shards, manifest, sizes, rejected: identical, no .tmp left
    again = run(annotations, root, crashed, samples_per_shard=1)  # a complete run reruns as a no-op
    assert again.shards_written == 0 and _files(crashed) == _files(clean)
    lines = (crashed / "rejected.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == result.manifest["num_rejected"]


def test_refuses_a_directory_from_a_different_conversion(dataset, tmp_path):
    annotations, root, _ = dataset
    out = tmp_path / "out"
    run(annotations, root, out, samples_per_shard=2)
    with pytest.raises(OutputDirError):
        run(annotations, root, out, samples_per_shard=3)
    result = run(annotations, root, out, samples_per_shard=3, overwrite=True)
    assert sorted(p.name for p in out.glob("*.tar")) == [s["name"] for s in result.manifest["shards"]]


def test_manifest_and_sizes(dataset, tmp_path):
    annotations, root, _ = dataset
    out = tmp_path / "out"
    assert main(["llava", "--annotations", str(annotations), "--image-root", str(root), "--out", str(out),
                 "--samples-per-shard", "2", "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    sizes = json.loads((out / "sizes.json").read_text())
    assert manifest["command"][:2] == ["mm-prep", "llava"] and manifest["mm_version"]
    assert manifest["source"] == "data"
    assert sizes == {s["name"]: s["num_samples"] for s in manifest["shards"]}
    # 7 records pass the structural checks and are planned 2 per shard; 2 of them fail the image check
    assert len(manifest["shards"]) == 4 and sum(sizes.values()) == 5 and max(sizes.values()) == 2
    for shard in manifest["shards"]:
        assert (out / shard["name"]).stat().st_size == shard["num_bytes"]
    assert manifest["num_bytes"] == sum(s["num_bytes"] for s in manifest["shards"])
    assert manifest["num_images"] == 5


def test_max_shard_bytes_limits_shards(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    records = []
    for i in range(6):
        (root / f"{i}.bmp").write_bytes(image_bytes("BMP", (64, 64), (40 * i, 0, 0)))
        records.append({"id": i, "image": f"{i}.bmp", "conversations": [human("<image>"), gpt("x")]})
    (tmp_path / "d.json").write_text(json.dumps(records))
    limit = 45_000  # each 64x64 BMP is 12,342 bytes: two samples fit with the tar overhead, three do not
    result = run(tmp_path / "d.json", root, tmp_path / "out", max_shard_bytes=limit)
    assert [s["num_samples"] for s in result.manifest["shards"]] == [2, 2, 2]
    assert all(s["num_bytes"] <= limit for s in result.manifest["shards"])


def test_max_image_side_reencodes_only_large_images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "big.jpg").write_bytes(image_bytes("JPEG", (200, 100)))
    (root / "small.png").write_bytes(image_bytes("PNG", (40, 20)))
    records = [{"id": "big", "image": "big.jpg", "conversations": [human("<image>"), gpt("x")]},
               {"id": "small", "image": "small.png", "conversations": [human("<image>"), gpt("x")]}]  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(records))
    run(tmp_path / "d.json", root, tmp_path / "out", max_image_side=64)
    read = {s.record["id"]: s for s in iter_samples(tmp_path / "out")}
    big = read["big"]
    assert big.record["image_sizes"] == [[64, 32]] and big.record["meta"]["resized"] == [{"image": 0, "from": [200, 100]}]
    assert Image.open(io.BytesIO(big.images[0])).size == (64, 32) and big.record["images"] == ["img0.jpg"]
    assert read["small"].images[0] == (root / "small.png").read_bytes() and "resized" not in read["small"].record["meta"]


@pytest.mark.parametrize(("name", "size"), [("a.json", 0), ("k" * 80 + ".img12.jpeg", 123_456_789), ("x-1_y.img0.png", 511)])
def test_tar_headers_equal_tarfiles(name, size):
    import tarfile

    from data_prep.shards import ustar_header

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def test_shards_are_standard_tars_with_matching_checksums(dataset, tmp_path):
    import tarfile
    import zlib

    annotations, root, _ = dataset
    out = tmp_path / "out"
    result = run(annotations, root, out, samples_per_shard=3)
    for shard in result.manifest["shards"]:
        data = (out / shard["name"]).read_bytes()
        assert f"{zlib.crc32(data):08x}" == shard["crc32"] and len(data) % tarfile.RECORDSIZE == 0
        with tarfile.open(out / shard["name"]) as tar:
            members = tar.getmembers()
        assert all(m.isfile() and m.mtime == 0 and m.mode == 0o644 for m in members)
        assert sum(m.name.endswith(".json") for m in members) == shard["num_samples"]


class _DieWhenUnpickled:
    """Kills the worker process that receives it (simulates a worker killed from outside)."""

    def __reduce__(self):
        import os

        return os._exit, (3,)


def test_a_dead_worker_is_a_clear_resumable_error(dataset, tmp_path):
    from data_prep.convert import ConversionInterrupted

    annotations, root, _ = dataset
    samples, rejections, total = load_llava(annotations, root, "fixture")
    samples[0].meta["poison"] = _DieWhenUnpickled()
    options = ConvertOptions(out_dir=str(tmp_path / "out"), workers=2, samples_per_shard=1, progress=False)
    with pytest.raises(ConversionInterrupted, match="rerun the same command to resume"):
        convert(samples, rejections, options, num_input_records=total, source="fixture")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_source_by_image_dir_names_the_sub_datasets_of_a_mixture():
    from data_prep.llava import source_by_image_dir

    assert source_by_image_dir("mix665k", ["coco/train2017/000000033471.jpg"]) == "mix665k/coco"
    assert source_by_image_dir("mix665k", ["ocr_vqa/images/1.jpg", "gqa/images/2.jpg"]) == "mix665k/ocr_vqa"
    assert source_by_image_dir("mix665k", []) == "mix665k/text"
    assert source_by_image_dir("mix665k", ["top.jpg"]) == "mix665k/."


def write_numbered_jpegs(tmp_path, count: int) -> Path:
    """`count` small JPEGs in tmp_path/images (returned) and their annotations in tmp_path/d.json (enough
    work to interrupt a running mm-prep)."""
    root = tmp_path / "images"
    root.mkdir()
    data = image_bytes("JPEG", (16, 16))
    records = []
    for i in range(count):
        (root / f"{i}.jpg").write_bytes(data)
        records.append({"id": i, "image": f"{i}.jpg", "conversations": [human("<image>\nWhat?"), gpt(f"Number {i}.")]})
    (tmp_path / "d.json").write_text(json.dumps(records))
    return root


def test_resume_after_sigkill_of_the_real_command(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = write_numbered_jpegs(tmp_path, 600)

    def command(out):
        return ["llava", "--annotations", str(tmp_path / "d.json"), "--image-root", str(root), "--out", str(out),
                "--samples-per-shard", "4", "--workers", "1", "--no-progress"]  # fmt: skip

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", "import sys; from data_prep.cli import main; sys.exit(main(sys.argv[1:]))",
                                *command(out)], stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(out.glob("shard-*.tar"))) < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = sorted(out.glob("shard-*.tar"))
    assert 5 <= len(written) < 150 and not (out / "manifest.json").exists(), "the kill must land mid-run"
    before = {p.name: p.stat().st_mtime_ns for p in written}
    assert main(command(out)) == 0
    assert all(out.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in before.items())  # kept, not redone
    clean = tmp_path / "clean"
    assert main(command(clean)) == 0
    finished, reference = _files(out), _files(clean)
    manifests = [json.loads(files.pop("manifest.json")) for files in (finished, reference)]
    commands = [m.pop("command") for m in manifests]
    assert [c[c.index("--out") + 1] for c in commands] == [str(out), str(clean)]  # the only difference
    assert manifests[0] == manifests[1] and finished == reference


def test_unreadable_annotation_files_are_clear_errors(tmp_path, capsys):
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[0]) + "\n")
    assert main(["llava", "--annotations", str(lines), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "must be named *.jsonl" in capsys.readouterr().err
    (tmp_path / "obj.json").write_text(json.dumps({"data": []}))
    assert main(["llava", "--annotations", str(tmp_path / "obj.json"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "expected a JSON list" in capsys.readouterr().err
    assert main(["llava", "--annotations", str(tmp_path / "none.json"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "No such file" in capsys.readouterr().err
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD[0]]).encode())
    assert main(["llava", "--annotations", str(bom), "--out", str(tmp_path / "b"), "--workers", "1", "--no-progress"]) == 0


# Trust: inputs are confined, and a bad record is rejected on its own (never stops the run).


def _prep(annotations, root, out, *extra) -> int:
    return main(["llava", "--annotations", str(annotations), "--image-root", str(root), "--out", str(out),
                 "--workers", "1", "--no-progress", *extra])  # fmt: skip


def _rejections(out) -> dict:
    return {row["id"]: row for row in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


def test_image_paths_must_stay_inside_the_image_root(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "a.jpg").write_bytes(image_bytes("JPEG"))
    (outside / "secret.jpg").write_bytes(image_bytes("JPEG", color=(1, 2, 3)))
    (root / "inside-link.jpg").symlink_to(root / "a.jpg")
    (root / "outside-link.jpg").symlink_to(outside / "secret.jpg")
    (root / "outside-dir").symlink_to(outside)
    paths = {"good": "a.jpg", "inside-link": "inside-link.jpg", "dotdot": "../outside/secret.jpg",
             "absolute": str(outside / "secret.jpg"), "passwd": "/etc/passwd", "link": "outside-link.jpg",
             "dir-link": "outside-dir/secret.jpg"}  # fmt: skip
    records = [{"id": name, "image": path, "conversations": [human("<image>\nWhat?"), gpt("A block.")]}
               for name, path in paths.items()]  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(records))
    assert _prep(tmp_path / "data.json", root, tmp_path / "out") == 0
    written = {sample.record["id"]: sample.images for sample in iter_samples(tmp_path / "out")}
    assert sorted(written) == ["good", "inside-link"]
    rejected = _rejections(tmp_path / "out")
    assert {name: row["reason"] for name, row in rejected.items()} == dict.fromkeys(list(paths)[2:], "image_outside_root")
    assert "--allow-outside-root" in rejected["dotdot"]["detail"]

    assert _prep(tmp_path / "data.json", root, tmp_path / "allowed", "--allow-outside-root") == 0
    written = {sample.record["id"]: sample.images for sample in iter_samples(tmp_path / "allowed")}
    assert sorted(written) == ["absolute", "dir-link", "dotdot", "good", "inside-link", "link"]
    assert written["dotdot"] == [(outside / "secret.jpg").read_bytes()]
    assert _rejections(tmp_path / "allowed")["passwd"]["reason"] == "undecodable_image"  # read, as asked


def test_bad_text_is_rejected_per_record_naming_the_line(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    good = {"id": "good", "conversations": [human("Hi"), gpt("Hello.")]}
    surrogate = {"id": "surrogate", "conversations": [human("Hi \ud800"), gpt("Hello.")]}
    lines = [json.dumps(good).encode(), json.dumps(surrogate).encode(),  # the surrogate as JSON writes it: \ud800
             b'{"id": "latin-1", "conversations": [{"from": "human", "value": "caf\xe9"}]}', b"",
             json.dumps({**good, "id": "good-2", "extra": {"key \udfff": 1}}).encode(),
             json.dumps({**good, "id": "good-3"}).encode()]  # fmt: skip
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert _prep(tmp_path / "data.jsonl", root, tmp_path / "out") == 0
    assert sorted(sample.record["id"] for sample in iter_samples(tmp_path / "out")) == ["good", "good-3"]
    raw_rows = (tmp_path / "out" / "rejected.jsonl").read_bytes()
    raw_rows.decode("ascii")  # escaped: writing it cannot fail on text that is not UTF-8
    rows = sorted(map(json.loads, raw_rows.decode().splitlines()), key=lambda row: row["index"])
    assert [(row["index"], row["reason"]) for row in rows] == [(1, "bad_text"), (2, "bad_text"), (3, "bad_text")]
    assert rows[0]["detail"].startswith("line 2") and rows[0]["record"] == surrogate  # kept, escaped
    assert rows[1]["detail"].startswith("line 3 is not UTF-8") and rows[1]["record"].endswith('"caf\\xe9"}]}')
    assert rows[2]["detail"].startswith("line 5")

    (tmp_path / "list.json").write_text(json.dumps([surrogate, good]))  # a JSON list: the same, per record
    assert _prep(tmp_path / "list.json", root, tmp_path / "list") == 0
    assert _rejections(tmp_path / "list")["surrogate"]["reason"] == "bad_text"


def test_a_json_list_file_that_is_not_utf8_is_an_error_naming_it(tmp_path, capsys):
    (tmp_path / "latin.json").write_bytes(b'[{"id": "caf\xe9"}]')
    assert _prep(tmp_path / "latin.json", tmp_path, tmp_path / "out") == 2
    assert f"{tmp_path / 'latin.json'}: not UTF-8 at byte 12" in capsys.readouterr().err


def test_a_bad_first_copy_of_an_id_does_not_take_the_good_later_one_down(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.jpg").write_bytes(image_bytes("JPEG"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not an image")

    def record(record_id, image, answer):
        return {"id": record_id, "image": image, "conversations": [human("<image>\nWhat?"), gpt(answer)]}

    records = [record("missing", "nope.jpg", "first"), record("broken", "broken.jpg", "first"),
               record("outside", "../x.jpg", "first"), record("twice", "a.jpg", "first"),
               record("missing", "a.jpg", "second"), record("broken", "a.jpg", "second"),
               record("outside", "a.jpg", "second"), record("twice", "a.jpg", "second")]  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(records))
    assert _prep(tmp_path / "data.json", root, tmp_path / "out") == 0
    written = {sample.record["id"]: sample.record["conversations"][1]["value"] for sample in iter_samples(tmp_path / "out")}
    assert written == {"missing": "second", "broken": "second", "outside": "second", "twice": "first"}
    rows = sorted(map(json.loads, (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()), key=lambda r: r["index"])
    assert [(row["index"], row["reason"]) for row in rows] == [
        (0, "missing_image"), (1, "undecodable_image"), (2, "image_outside_root"), (7, "duplicate_id")]  # fmt: skip
    keys = [sample.key for sample in iter_samples(tmp_path / "out")]
    assert sorted(keys) == ["broken", "missing", "outside", "twice"]  # the kept copy has the plain key


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass  # exited meanwhile
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = write_numbered_jpegs(tmp_path, 3000)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", "import sys; from data_prep.cli import main; sys.exit(main(sys.argv[1:]))",
                                "llava", "--annotations", str(tmp_path / "d.json"), "--image-root", str(root), "--out", str(out),
                                "--samples-per-shard", "5", "--workers", "2", "--no-progress"])  # fmt: skip
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and not list(out.glob("shard-*.tar")):
            time.sleep(0.005)
        tree = _children(process.pid)
        tree += [grandchild for child in tree for grandchild in _children(child)]  # forkserver -> workers
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert len(tree) >= 3 and not (out / "manifest.json").exists(), "the kill must land mid-run"
        deadline = time.monotonic() + 10
        while any(map(_alive, tree)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in tree if _alive(pid)], "orphaned workers outlived the killed mm-prep"
    finally:
        for pid in filter(_alive, tree):  # this test's own processes, if the check failed
            os.kill(pid, signal.SIGKILL)
