"""Test helpers for the training tests: tiny shards in the mm-prep format, the offline tokenizer."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

ASSET_TOKENIZER = Path(__file__).resolve().parents[1] / "mm" / "assets" / "tokenizer"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def png_bytes(color=(255, 0, 0), size=(12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def caption_record(key: str, color: str = "red", *, text: str | None = None, prompt: str = "") -> dict:
    """A one-image captioning sample: {member suffix: bytes} as a shard holds it."""
    meta = {
        "id": key,
        "source": "test",
        "conversations": [
            {"from": "human", "value": prompt + "<image>\nDescribe the image."},
            {"from": "gpt", "value": text or f"A {color} square."},
        ],
        "images": ["img0.png"],
        "image_sizes": [[12, 8]],
        "meta": {"color": color},
    }
    return {"json": json.dumps(meta).encode(), "img0.png": png_bytes(COLORS[color])}


def write_tar(path: Path, records: dict[str, dict]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in records.items():
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_shards(directory: Path, sizes: list[int], *, prefix: str = "shard", manifest: bool = True) -> list[str]:
    """Shards of caption samples with keys `{prefix}{shard}_{index}`; returns all keys in shard order."""
    directory.mkdir(parents=True, exist_ok=True)
    keys, entries = [], []
    colors = list(COLORS)
    for shard, size in enumerate(sizes):
        name = f"{prefix}-{shard:06d}.tar"
        records = {}
        for index in range(size):
            key = f"{prefix}{shard}_{index}"
            records[key] = caption_record(key, colors[(shard + index) % len(colors)])
            keys.append(key)
        write_tar(directory / name, records)
        entries.append({"name": name, "num_samples": size, "num_bytes": (directory / name).stat().st_size})
    if manifest:
        (directory / "manifest.json").write_text(json.dumps({"shards": entries, "num_samples": sum(sizes)}))
    return keys


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSET_TOKENIZER)
