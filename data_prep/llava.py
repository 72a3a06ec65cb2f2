"""LLaVA-format annotations (JSON list or JSONL) -> samples.

A record is `{"id", "image": path | [paths] (absent for text-only), "conversations": [...]}`;
fields other than these are kept in `meta.record_extra` so nothing is lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from data_prep.records import MALFORMED_RECORD, IdRegistry, ImageRef, RecordError, Rejection, Sample, check_conversation

_KNOWN_FIELDS = ("id", "image", "conversations")


def iter_annotations(path: str | Path) -> Iterator[tuple[Any, str | None]]:
    """Yield `(record, error)` in file order: a JSON list, or JSON lines (`.jsonl`).

    A JSONL line that is not JSON yields `(raw line, error message)`; blank lines are not records.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line), None
                except json.JSONDecodeError as error:
                    yield line.rstrip("\n"), f"line {number} is not JSON: {error}"
        return
    with open(path, encoding="utf-8-sig") as file:
        try:
            data = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); a JSON-lines file must be named *.jsonl") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or a .jsonl file), got {type(data).__name__}")
    yield from ((record, None) for record in data)


def _image_paths(record: dict) -> list[str]:
    image = record.get("image")
    if "image" not in record:
        return []
    paths = image if isinstance(image, list) else [image]
    if not all(isinstance(p, str) and p.strip() for p in paths):
        raise RecordError(MALFORMED_RECORD, f"'image' must be a path or a list of paths, got {image!r}")
    return paths


def source_by_image_dir(source: str, image_paths: list[str]) -> str:
    """`{source}/{first folder of the first image}` (`{source}/text` for text-only records): the
    sub-datasets of a mixture such as llava_v1_5_mix665k (coco, gqa, ocr_vqa, textvqa, vg)."""
    if not image_paths:
        return f"{source}/text"
    parts = Path(image_paths[0]).parts
    return f"{source}/{parts[0] if len(parts) > 1 else '.'}"


def parse_record(record: Any, index: int, image_root: str | Path, source: str, by_image_dir: bool = False) -> Sample:
    """Validate one LLaVA record's structure; raise `RecordError` for a bad one."""
    if not isinstance(record, dict):
        raise RecordError(MALFORMED_RECORD, f"record is a {type(record).__name__}, not an object")
    if "conversations" not in record:
        raise RecordError(MALFORMED_RECORD, "record has no 'conversations'")
    if not isinstance(record.get("id"), (str, int)) or isinstance(record.get("id"), bool):
        raise RecordError(MALFORMED_RECORD, "record has no string or integer 'id'")
    paths = _image_paths(record)
    check_conversation(record["conversations"], len(paths))
    images = [ImageRef(name=p, path=os.path.join(image_root, p)) for p in paths]
    meta: dict[str, Any] = {"index": index, "image_paths": paths}
    extra = {k: v for k, v in record.items() if k not in _KNOWN_FIELDS}
    if extra:
        meta["record_extra"] = extra
    source = source_by_image_dir(source, paths) if by_image_dir else source
    return Sample(index, record["id"], source, record["conversations"], images, meta, original=record)


def load_llava(annotations: str | Path, image_root: str | Path, source: str,
               by_image_dir: bool = False) -> tuple[list[Sample], list[Rejection], int]:  # fmt: skip
    """All records of an annotation file -> (samples, rejections, number of input records)."""
    samples, rejections, registry = [], [], IdRegistry()
    index = -1
    for index, (record, error) in enumerate(iter_annotations(annotations)):
        record_id = record.get("id") if isinstance(record, dict) else None
        try:
            if error is not None:
                raise RecordError(MALFORMED_RECORD, error)
            sample = parse_record(record, index, image_root, source, by_image_dir)
            sample.key = registry.claim(sample.id)
        except RecordError as bad:
            rejections.append(Rejection(index, record_id, bad.reason, bad.detail, record))
            continue
        samples.append(sample)
    return samples, rejections, index + 1
