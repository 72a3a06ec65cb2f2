"""mm-prep reruns check each finished shard's bytes (size and CRC-32), and files follow the umask."""

from __future__ import annotations

import io
import json
import logging
import os
import stat

import pytest
from PIL import Image

from data_prep.cli import main


def write_dataset(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    records = []
    for i in range(4):
        Image.new("RGB", (16, 12), (60 * i, 30, 200)).save(buffer := io.BytesIO(), "PNG")
        (root / f"{i}.png").write_bytes(buffer.getvalue())
        records.append({"id": f"s{i}", "image": f"{i}.png",
                        "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": f"C{i}."}]})
    annotations = tmp_path / "data.json"
    annotations.write_text(json.dumps(records))
    return ["llava", "--annotations", str(annotations), "--image-root", str(root), "--out", str(tmp_path / "out"),
            "--samples-per-shard", "2", "--workers", "1", "--no-progress"]


def test_a_shard_changed_on_disk_is_rewritten_on_rerun(tmp_path, caplog):
    command = write_dataset(tmp_path)
    assert main(command) == 0
    shard = tmp_path / "out" / "shard-000000.tar"
    original = shard.read_bytes()
    corrupted = bytearray(original)
    corrupted[700] ^= 0xFF  # one byte inside the first member's data: same size, other content
    shard.write_bytes(bytes(corrupted))
    untouched = (tmp_path / "out" / "shard-000001.tar").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="data_prep.shards"):
        assert main(command) == 0
    assert shard.read_bytes() == original
    assert (tmp_path / "out" / "shard-000001.tar").stat().st_mtime_ns == untouched  # the intact one is skipped
    assert any("shard-000000.tar" in r.getMessage() and "CRC-32" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, expected):
    command = write_dataset(tmp_path)
    previous = os.umask(umask)
    try:
        assert main(command) == 0
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    for name in ("shard-000000.tar", "manifest.json", "sizes.json", "rejected.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == expected, name
