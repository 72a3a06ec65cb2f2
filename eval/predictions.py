"""Predictions JSONL in LLaVA's answer format: reading, appending per batch, resuming after a crash."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)
REQUIRED_KEYS = ("question_id", "text")


class PredictionFileError(ValueError):
    """A predictions file cannot be read."""


def id_key(question_id) -> str:
    """Ids are compared as strings: other codebases write "101669" where we read 101669."""
    return str(question_id)


def read_predictions(path: str | Path) -> list[dict]:
    """All records of a predictions file; a malformed line is a clear error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"predictions file not found: {path} (given by --predictions)")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PredictionFileError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(record, dict) or any(key not in record for key in REQUIRED_KEYS):
                raise PredictionFileError(f"{path}:{number}: a prediction needs {', '.join(REQUIRED_KEYS)}")
            records.append(record)
    return records


def recover_partial(path: str | Path, *, truncate: bool = True) -> set[str]:
    """Ids already answered in `path`, after cutting a torn (unterminated or unparsable) tail.

    A crash can leave the last line half written; it is truncated so its question is asked again
    (`truncate=False` only reads, for files another process owns). Only the tail may be torn: a bad
    line followed by good ones means the file is not ours to fix.
    """
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    done: set[str] = set()
    good_end = 0
    position = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        end = len(data) if newline < 0 else newline + 1
        try:
            record = json.loads(data[position:end]) if newline >= 0 else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if record is None or not isinstance(record, dict) or "question_id" not in record:
            if data[end:].strip():
                raise PredictionFileError(f"{path}: malformed line at byte {position} is not the last one; "
                                          "refusing to resume over it")
            break
        done.add(id_key(record["question_id"]))
        good_end = end
        position = end
    if good_end < len(data) and truncate:
        log.warning("%s: dropping a torn last line (%d bytes); its question is asked again", path, len(data) - good_end)
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return done


def append_predictions(path: str | Path, records: Iterable[dict]) -> None:
    """Append whole lines and flush them to disk, so a crash loses at most the batch in flight."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
