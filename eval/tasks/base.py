"""What a task is: a reader of a benchmark's released files and a scorer of its predictions."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence, Union

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
ImageSource = Union[Path, bytes]


class TaskDataError(ValueError):
    """A benchmark file is missing or not in the expected format."""


@dataclass(frozen=True)
class Question:
    """One question to answer: `prompt` is the text after the image placeholders; `truth` is what the
    scorer needs (never shown to the model). A later turn of a conversation lists the earlier turns in
    `history` as (question id, prompt): the model sees its own answers to them (the predictions under
    those ids), and the images go before the first turn's prompt."""

    question_id: int | str
    prompt: str
    images: tuple[ImageSource, ...]
    truth: Any = None
    history: tuple[tuple[int | str, str], ...] = ()


@dataclass(frozen=True)
class Task:
    """A benchmark: its data options, how to read its questions and how to score answers."""

    name: str
    summary: str
    options_type: type
    read: Callable[[Any], list[Question]]
    # score(options, questions, answers aligned with questions, None = missing) -> metrics
    score: Callable[[Any, Sequence[Question], Sequence[str | None]], dict]
    # maps a prediction record to its question id (other codebases may split ids across fields)
    prediction_id: Callable[[dict], Any] = field(default=lambda record: record["question_id"])
    # True for scorers that keep files beside the metrics (e.g. a judge's cache): score() then also gets
    # `out_dir=` the run or score folder
    score_writes_files: bool = False


def option(help: str, default: Any = MISSING, file_option: bool = False) -> Any:
    """A task data option: a dataclass field whose help becomes the CLI help."""
    return field(default=default, metadata={"help": help, "file": file_option})


def file_options(options: Any) -> dict[str, str]:
    """The options that name data files or folders, as absolute paths, for the run record."""
    return {f.name: str(Path(getattr(options, f.name)).resolve()) for f in fields(options)
            if f.metadata.get("file") and getattr(options, f.name) not in (None, "")}


def flag(option_name: str) -> str:
    """The CLI flag of a task option: `image_root` -> `--image-root`."""
    return f"--{option_name.replace('_', '-')}"


def require_path(path: str | Path, option_name: str, *, directory: bool = False) -> Path:
    """The path, or a clear error naming the file and the option that gave it."""
    path = Path(path)
    ok = path.is_dir() if directory else path.is_file()
    if not ok:
        kind = "folder" if directory else "file"
        raise TaskDataError(f"{kind} not found: {path} (given by {flag(option_name)})")
    return path


def read_text(path: str | Path, option_name: str) -> str:
    """A data file's text; a missing file or bytes that are not UTF-8 are an error naming file, line and option."""
    path = require_path(path, option_name)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TaskDataError(f"{path}:{line} ({flag(option_name)}): not UTF-8 text "
                            f"(byte 0x{data[error.start]:02x} at offset {error.start})") from None


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def parse_json(text: str) -> Any:
    """json.loads, strict: NaN, Infinity and numbers past a float's range (which Python reads as infinite; no
    benchmark file holds them) and nesting past Python's recursion limit are a ValueError like any other text
    that is not JSON."""
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_json(path: str | Path, option_name: str) -> Any:
    """Parse a JSON file, naming the file and option on failure."""
    text = read_text(path, option_name)
    try:
        return parse_json(text)
    except ValueError as error:
        raise TaskDataError(f"{path} ({flag(option_name)}) is not valid JSON: {error}") from None


def load_json_lines(path: str | Path, option_name: str) -> list[dict]:
    """Parse a JSON-lines file (blank lines skipped), naming file, option and line on failure."""
    records = []
    # Split on "\n" only: JSON text may hold other line separators (U+2028) inside strings.
    for number, line in enumerate(read_text(path, option_name).split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(parse_json(line))
        except ValueError as error:
            raise TaskDataError(f"{path}:{number} ({flag(option_name)}): bad JSON: {error}") from None
    return records


def json_object(value: Any, where: str) -> dict:
    """`value` if it is a JSON object; readers call `.get` on records, so a list or string there (a file of
    the wrong shape) must be an error naming it first."""
    if not isinstance(value, dict):
        raise TaskDataError(f"{where}: expected a JSON object, got {json.dumps(value)[:60]}")
    return value


def field_of(record: dict, key: str, where: str) -> Any:
    """record[key], or a clear error saying which record in which file lacks it."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise TaskDataError(f"{where}: missing field {key!r}") from None


def string_field(record: dict, key: str, where: str) -> str:
    """record[key] if it is a string, or a clear error saying which record lacks it or what it holds instead."""
    value = field_of(record, key, where)
    if not isinstance(value, str):
        raise TaskDataError(f"{where}: {key} must be a string, got {json.dumps(value)[:60]}")
    return value


def format_options(letters: Sequence[str], texts: Sequence[str]) -> str:
    """LLaVA-1.5's option block: "A. first\\nB. second"."""
    return "\n".join(f"{letter}. {text}" for letter, text in zip(letters, texts))
