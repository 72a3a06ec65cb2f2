"""LLaVA-format annotations (JSON list or JSONL) -> samples.

A record is `{"id", "image": path | [paths] (absent for text-only), "conversations": [...]}`;
fields other than these are kept in `meta.record_extra` so nothing is lost.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from data_prep.records import (
    BAD_TEXT, MALFORMED_RECORD, MAX_RECORD_DEPTH, ImageRef, RecordError, Rejection, Sample, check_conversation,
    check_text, image_path, nesting_depth,
)  # fmt: skip

_KNOWN_FIELDS = ("id", "image", "conversations")


def iter_annotations(path: str | Path) -> Iterator[tuple[Any, str, RecordError | None]]:
    """Yield `(record, where, error)` in file order from a JSON list, or JSON lines (`.jsonl`).

    `where` names the record ("line 7", "record 6"). A record that cannot be read (a JSONL line not UTF-8
    or not JSON; any record nested deeper than MAX_RECORD_DEPTH) yields its raw text (undecodable bytes as
    `\\x..`) and the error, so one bad record is a rejection, not the end of the run; blank lines are not
    records. A file that is not a JSON list at all is a `ValueError` naming it.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        yield from _iter_json_lines(path)
    else:
        yield from _iter_json_list(path)


def _too_deep(where: str) -> RecordError:
    return RecordError(MALFORMED_RECORD, f"{where} is nested deeper than {MAX_RECORD_DEPTH} levels")


def _checked_depth(record: Any, text: str, where: str) -> tuple[Any, RecordError | None]:
    """`(record, None)`, or `(text, error)` for a record too deep to walk (or to write back as JSON)."""
    brackets = text.count("[") + text.count("{")  # a bound on the depth, counted in C: most records need no walk
    if brackets > MAX_RECORD_DEPTH and nesting_depth(record) > MAX_RECORD_DEPTH:
        return text, _too_deep(where)
    return record, None


def _iter_json_lines(path: Path) -> Iterator[tuple[Any, str, RecordError | None]]:
    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw  # a UTF-8 byte-order mark
            if not raw.strip():
                continue
            where, text = f"line {number}", raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
            try:
                record, error = _checked_depth(json.loads(raw.decode("utf-8")), text, where)
            except UnicodeDecodeError as bad:
                record, error = text, RecordError(BAD_TEXT, f"{where} is not UTF-8 ({bad.reason} at byte {bad.start})")
            except json.JSONDecodeError as bad:
                record, error = text, RecordError(MALFORMED_RECORD, f"{where} is not JSON: {bad}")
            except RecursionError:
                record, error = text, _too_deep(where)
            yield record, where, error


def _not_json(path: Path, error: json.JSONDecodeError) -> ValueError:
    return ValueError(f"{path}: not valid JSON ({error}); a JSON-lines file must be named *.jsonl")


def _iter_json_list(path: Path) -> Iterator[tuple[Any, str, RecordError | None]]:
    """The records of a JSON list, read one element at a time so that one element nested too deeply for
    Python's JSON reader is a rejected record instead of an unreadable file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 at byte {error.start} ({error.reason})") from None
    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        raise _not_a_list(path, text)
    pos = _skip_space(text, pos + 1)
    if not text.startswith("]", pos):
        pos = yield from _list_elements(path, text, pos)
    end = _skip_space(text, pos + 1)
    if end != len(text):
        raise _not_json(path, json.JSONDecodeError("Extra data", text, end))


def _list_elements(path: Path, text: str, pos: int) -> Generator[tuple[Any, str, RecordError | None], None, int]:
    """The elements of the list whose first element starts at `pos`; returns where its `]` is."""
    decoder = json.JSONDecoder()
    for index in itertools.count():
        start, where = pos, f"record {index}"
        try:
            record, pos = decoder.raw_decode(text, pos)
            record, error = _checked_depth(record, text[start:pos], where)
        except RecursionError:
            pos = _end_of_container(path, text, start)
            record, error = text[start:pos], _too_deep(where)
        except json.JSONDecodeError as bad:
            raise _not_json(path, bad) from None
        yield record, where, error
        pos = _skip_space(text, pos)
        if text.startswith("]", pos):
            return pos
        if not text.startswith(",", pos):
            raise _not_json(path, json.JSONDecodeError("Expecting ',' delimiter", text, pos))
        pos = _skip_space(text, pos + 1)
    raise AssertionError("unreachable")


def _skip_space(text: str, pos: int) -> int:
    return json.decoder.WHITESPACE.match(text, pos).end()


def _not_a_list(path: Path, text: str) -> ValueError:
    try:
        kind = type(json.loads(text)).__name__
    except json.JSONDecodeError as error:
        return _not_json(path, error)
    except RecursionError:
        kind = "value nested too deeply to read"
    return ValueError(f"{path}: expected a JSON list of records (or a .jsonl file), got {kind}")


_JSON_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _end_of_container(path: Path, text: str, start: int) -> int:
    """Where the list or object starting at `start` ends, found by counting brackets outside strings
    (no recursion, so any depth)."""
    depth = 0
    for match in _JSON_STRING_OR_BRACKET.finditer(text, start):
        token = match.group()
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
            if depth == 0:
                return match.end()
    raise _not_json(path, json.JSONDecodeError("Unterminated list or object", text, start))


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
