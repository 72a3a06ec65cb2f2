"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """The process umask. Linux shows it in /proc; elsewhere it can only be read by setting it (briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def default_mode(*, directory: bool = False) -> int:
    """The mode an ordinary `open` (or `mkdir`) gives a new file: 0666 (0777) less the umask.
    mkstemp/mkdtemp (and writers built on them) create 0600/0700 instead, private to the owner."""
    return (0o777 if directory else 0o666) & ~current_umask()


def new_file_mode(path: str | Path, *, directory: bool = False) -> int:
    """The mode of the file being replaced if there is one, else `default_mode`."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return default_mode(directory=directory)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a uniquely named temporary file in the same directory, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), new_file_mode(path))
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: Any, *, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[Any]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class BadLine(ValueError):
    """A line of an appended JSON-lines file that cannot be read: `number` (1-based) and what is wrong."""

    def __init__(self, number: int, message: str, torn_tail: bool):
        super().__init__(message)
        self.number, self.message, self.torn_tail = number, message, torn_tail


def read_appended_lines(path: str | Path, parse: Callable[[bytes], Any], *, torn_tail: bool = False) -> tuple[list, int]:
    """The records of a JSON-lines file written by appending whole lines (blank lines skipped; `parse` turns a
    line into a record or raises ValueError), and the length in bytes of the part they were read from.

    With `torn_tail` (a file a kill may have cut mid-write) an unterminated or unreadable *last* line is left
    out and the length ends before it; any other bad line raises `BadLine`.
    """
    data = Path(path).read_bytes()
    records, start = [], 0
    for number, line in enumerate(data.split(b"\n"), 1):
        end = start + len(line)
        if line.strip():
            try:
                if torn_tail and end == len(data):
                    raise ValueError("no newline at its end")
                records.append(parse(line))
            except ValueError as error:
                if torn_tail and not data[end:].strip():
                    return records, start
                raise BadLine(number, str(error), torn_tail) from None
        start = end + 1
    return records, len(data)
