"""mm-prep inspect: statistics and the HTML contact sheet."""

from __future__ import annotations

import base64
import html
import io
import json

import pytest
from PIL import Image

from data_prep.cli import main


def test_inspect_counts_and_contact_sheet(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    png = io.BytesIO()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(png, "PNG")
    (images / "x.png").write_bytes(png.getvalue())
    records = [
        {"id": "t", "conversations": [{"from": "human", "value": "ab"}, {"from": "gpt", "value": "cde"},
                                      {"from": "human", "value": "f"}, {"from": "gpt", "value": "g"}]},
        {"id": "one", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\n<b>?"},
                                                          {"from": "gpt", "value": "1 < 2"}]},
        {"id": "two", "image": ["x.png", "x.png"],
         "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "same"}]},
        {"id": "bad", "conversations": []},
    ]  # fmt: skip
    (tmp_path / "mix.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    assert main(["llava", "--annotations", str(tmp_path / "mix.json"), "--image-root", str(images), "--out", str(out),
                 "--workers", "1", "--no-progress", "--samples-per-shard", "2", "--source-by-image-dir"]) == 0  # fmt: skip
    capsys.readouterr()
    sheet = tmp_path / "sheet.html"
    assert main(["inspect", str(out), "--json", "--dump", "3", "--dump-out", str(sheet)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[: printed.rindex("}") + 1])
    assert report["num_samples"] == 3 and report["num_images"] == 3 and report["num_shards"] == 2
    assert report["sources"] == {"mix/text": 1, "mix/.": 2}  # per-source breakdown, sources from image folders
    assert report["images_per_sample"] == {"0": 1, "1": 1, "2": 1}
    assert report["image_formats"] == {"png": 3}
    assert report["turns"] == {"min": 1, "mean": 1.33, "median": 1, "p95": 2, "max": 2}
    # characters per sample: 2+3+1+1 = 7, 12+5 = 17, 14+4 = 18
    assert report["characters"] == {"min": 7, "mean": 14.0, "median": 17, "p95": 18, "max": 18}
    assert report["rejected_by_reason"] == {"empty_conversation": 1}
    page = sheet.read_text()
    assert page.count("<tr>") == 3 and page.startswith("<!DOCTYPE html>")
    assert html.escape("<b>?") in page and "<b>?" not in page and html.escape("1 < 2") in page
    assert page.count(f'src="data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}"') == 3
    assert page.count("(text only)") == 1
    assert not list(tmp_path.glob(".sheet.html.tmp*"))


def test_inspect_missing_directory(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_token_statistics_with_a_local_tokenizer(tmp_path, capsys):
    from pathlib import Path

    from transformers import AutoTokenizer

    tokenizer_dir = Path(__file__).resolve().parent.parent / "mm" / "assets" / "tokenizer"
    record = {"id": 1, "conversations": [{"from": "human", "value": "what is this"}, {"from": "gpt", "value": "a cat"}]}
    (tmp_path / "t.json").write_text(json.dumps([record]))
    out = tmp_path / "out"
    assert main(["llava", "--annotations", str(tmp_path / "t.json"), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json", "--tokenizer", str(tokenizer_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("what is this", "a cat"))
    assert report["tokens"]["max"] == report["tokens"]["min"] == expected > 2


@pytest.mark.parametrize("cut", ["mid_member", "at_header"])
def test_inspect_names_a_truncated_shard(tmp_path, capsys, cut):
    records = [{"id": str(i), "conversations": [{"from": "human", "value": "q" * 700}, {"from": "gpt", "value": "a"}]}
               for i in range(4)]
    (tmp_path / "t.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    assert main(["llava", "--annotations", str(tmp_path / "t.json"), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    shard = next(out.glob("*.tar"))
    data = shard.read_bytes()
    # Each sample is one ~1 KB json member: a cut inside its data fails to read; a cut at a 512-byte
    # header boundary reads as a shorter, complete-looking tar (only the manifest's count tells).
    size = 512 + 512 + 300 if cut == "mid_member" else 3 * 1024
    shard.write_bytes(data[:size])
    assert main(["inspect", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mm-prep inspect: error: {shard}: ") and "truncated" in err and len(err.splitlines()) == 1


def _inspect_error(*argv) -> tuple[int, str]:
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["inspect", *argv])
    return rc, err.getvalue()


def _tar(path, records: list) -> bytes:
    """A tar of one .json member per record, 700+ bytes each, written by tarfile (not mm-prep: no manifest)."""
    import tarfile

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, record in enumerate(records):
            data = json.dumps(record).encode().ljust(700)
            info = tarfile.TarInfo(f"{i:04d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_inspect_names_a_shard_without_manifest_cut_at_a_header_boundary(tmp_path):
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    shard = tmp_path / "a.tar"
    data = _tar(shard, [record] * 3)
    shard.write_bytes(data[: 2 * 1536])  # 2 whole samples (header + 1024 bytes each), no end-of-archive blocks
    assert _inspect_error(str(tmp_path)) == (2, f"mm-prep inspect: error: {shard}: cannot read the shard, truncated or "
                                                "corrupt? (no end-of-archive blocks after its last readable member)\n")


def test_inspect_a_folder_without_shards_and_a_sample_of_another_shape(tmp_path):
    assert _inspect_error(str(tmp_path)) == (2, f"mm-prep inspect: error: {tmp_path}: no shards here "
                                                "(no manifest.json, no *.tar)\n")
    _tar(tmp_path / "a.tar", [{"id": 1, "text": "no conversations"}])
    assert _inspect_error(str(tmp_path)) == (2, f"mm-prep inspect: error: {tmp_path / 'a.tar'}: cannot read the shard, "
                                                "truncated or corrupt? (sample '0000': its .json is not a record with "
                                                "`conversations` [{from, value}, ...])\n")


def test_inspect_dump_out_that_is_a_folder(tmp_path):
    _tar(tmp_path / "a.tar", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])
    assert _inspect_error(str(tmp_path), "--dump", "1", "--dump-out", str(tmp_path)) == \
        (2, f"mm-prep inspect: error: --dump-out {tmp_path}: cannot write the contact sheet (Is a directory)\n")


def test_inspect_names_the_manifest_entry_without_a_sample_count(tmp_path):
    _tar(tmp_path / "a.tar", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [{"name": "a.tar"}]}))
    assert _inspect_error(str(tmp_path)) == (2, f"mm-prep inspect: error: {tmp_path / 'manifest.json'}: shards entry 1 "
                                                "(a.tar): `num_samples` must be a whole number >= 0, got nothing\n")
