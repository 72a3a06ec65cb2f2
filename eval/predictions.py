"""Predictions JSONL in LLaVA's answer format: reading, appending per batch, resuming after a crash."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

from mm.atomic import BadLine, read_appended_lines

log = logging.getLogger(__name__)
REQUIRED_KEYS = ("question_id", "text")


class PredictionFileError(ValueError):
    """A predictions file cannot be read."""


def id_key(question_id) -> str:
    """Ids are compared as strings: other codebases write "101669" where we read 101669."""
    return str(question_id)


def _parse_line(line: bytes) -> dict:
    """One prediction record; a ValueError says what is wrong with the line."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    if not isinstance(record, dict) or any(key not in record for key in REQUIRED_KEYS):
        raise ValueError(f"a prediction needs {', '.join(REQUIRED_KEYS)}")
    if not isinstance(record["text"], str):  # a null would otherwise be scored as the answer "None"
        raise ValueError(f"text must be a string, not {json.dumps(record['text'])}")
    return record


def parse_predictions(path: Path, *, torn_tail: bool = False) -> tuple[list[dict], int]:
    """The records of a predictions file and the length in bytes of the part they were read from.

    One rule for `score` and for resuming `run`: every line is a JSON object with `question_id` and a
    string `text`; blank lines are skipped; any other line is an error naming file and line. With
    `torn_tail` (resuming a file a crash may have cut mid-write) an unterminated or bad last line is
    left out, and the length returned ends before it.
    """
    try:
        return read_appended_lines(path, _parse_line, torn_tail=torn_tail)
    except BadLine as bad:
        where = "; it is not the last line, so not a torn write that resuming cuts off" if bad.torn_tail else ""
        raise PredictionFileError(f"{path}:{bad.number}: {bad.message}{where}") from None


def read_predictions(path: str | Path) -> list[dict]:
    """All records of a predictions file (see `parse_predictions`)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"predictions file not found: {path} (given by --predictions)")
    return parse_predictions(path)[0]


def recover_partial(path: str | Path, *, truncate: bool = True) -> set[str]:
    """Ids already answered in `path`, after cutting a torn last line (see `parse_predictions`).

    The torn line's question is asked again; `truncate=False` only reads, for files another process owns.
    """
    path = Path(path)
    if not path.exists():
        return set()
    records, good_end = parse_predictions(path, torn_tail=True)
    size = path.stat().st_size
    if good_end < size and truncate:
        log.warning("%s: dropping a torn last line (%d bytes); its question is asked again", path, size - good_end)
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return {id_key(record["question_id"]) for record in records}


def append_predictions(path: str | Path, records: Iterable[dict]) -> None:
    """Append whole lines and flush them to disk, so a crash loses at most the batch in flight."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
