"""LLaVA-format annotations (JSON list or JSONL) -> samples.

A record is `{"id", "image": path | [paths] (absent for text-only), "conversations": [...]}`;
fields other than these are kept in `meta.record_extra` so nothing is lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from data_prep.records import (
    BAD_TEXT, MALFORMED_RECORD, ImageRef, RecordError, Rejection, Sample, check_conversation, check_text, image_path,
)  # fmt: skip

_KNOWN_FIELDS = ("id", "image", "conversations")


def iter_annotations(path: str | Path) -> Iterator[tuple[Any, str, RecordError | None]]:
    """Yield `(record, where, error)` in file order from a JSON list, or JSON lines (`.jsonl`).

    `where` names the record ("line 7", "record 6"). A JSONL line that is not UTF-8 or not JSON
    yields its raw text (undecodable bytes as `\\x..`) and the error; blank lines are not records.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, "rb") as file:
            for number, raw in enumerate(file, 1):
                raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw  # a UTF-8 byte-order mark
                if not raw.strip():
                    continue
                where, text = f"line {number}", raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
                try:
                    record, error = json.loads(raw.decode("utf-8")), None
                except UnicodeDecodeError as bad:
                    record, error = text, RecordError(BAD_TEXT, f"{where} is not UTF-8 ({bad.reason} at byte {bad.start})")
                except json.JSONDecodeError as bad:
                    record, error = text, RecordError(MALFORMED_RECORD, f"{where} is not JSON: {bad}")
                yield record, where, error
        return
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 at byte {error.start} ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); a JSON-lines file must be named *.jsonl") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or a .jsonl file), got {type(data).__name__}")
    yield from ((record, f"record {index}", None) for index, record in enumerate(data))


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


def parse_record(record: Any, index: int, image_root: str | Path, source: str, by_image_dir: bool = False,
                 allow_outside_root: bool = False, where: str = "record") -> Sample:  # fmt: skip
    """Validate one LLaVA record's structure; raise `RecordError` for a bad one."""
    check_text(record, where)
    if not isinstance(record, dict):
        raise RecordError(MALFORMED_RECORD, f"record is a {type(record).__name__}, not an object")
    if "conversations" not in record:
        raise RecordError(MALFORMED_RECORD, "record has no 'conversations'")
    if not isinstance(record.get("id"), (str, int)) or isinstance(record.get("id"), bool):
        raise RecordError(MALFORMED_RECORD, "record has no string or integer 'id'")
    paths = _image_paths(record)
    check_conversation(record["conversations"], len(paths))
    images = [ImageRef(name=p, path=image_path(str(image_root), p, allow_outside_root)) for p in paths]
    meta: dict[str, Any] = {"index": index, "image_paths": paths}
    extra = {k: v for k, v in record.items() if k not in _KNOWN_FIELDS}
    if extra:
        meta["record_extra"] = extra
    source = source_by_image_dir(source, paths) if by_image_dir else source
    return Sample(index, record["id"], source, record["conversations"], images, meta, original=record)


def load_llava(annotations: str | Path, image_root: str | Path, source: str, by_image_dir: bool = False, *,
               allow_outside_root: bool = False) -> tuple[list[Sample], list[Rejection], int]:  # fmt: skip
    """All records of an annotation file -> (samples, rejections, number of input records).

    Duplicate ids are left to `convert`, which keeps the first copy that passes every check.
    """
    samples, rejections = [], []
    index = -1
    for index, (record, where, error) in enumerate(iter_annotations(annotations)):
        try:
            if error is not None:
                raise error
            samples.append(parse_record(record, index, image_root, source, by_image_dir, allow_outside_root, where))
        except RecordError as bad:
            record_id = record.get("id") if isinstance(record, dict) else None
            rejections.append(Rejection(index, record_id, bad.reason, bad.detail, record))
    return samples, rejections, index + 1
