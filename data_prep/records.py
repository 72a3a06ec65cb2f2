"""What every converter produces: validated samples or rejections with a reason.

A converter (llava, vqa, synth) turns input records into `Sample`s; `check_conversation` (mm.chat's
rules, so training accepts exactly what is written), `check_text`, `image_path` and `IdRegistry`
apply the same rules to all of them, so every record ends either in a shard or in `rejected.jsonl`.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any

from mm import chat
from mm.chat import (
    EMPTY_CONVERSATION, EMPTY_MESSAGE, IMAGE_COUNT_MISMATCH, IMAGE_TOKEN, MALFORMED_RECORD, NON_ALTERNATING_ROLES,
    UNKNOWN_ROLE,
)  # fmt: skip

# LLaVA-1.5's answer-format prompts; training data and evaluation prompts must use the same text.
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."

# Rejection reasons: the exact strings written to rejected.jsonl (documented in README.md); the
# conversation reasons are mm.chat's.
BAD_TEXT = "bad_text"
IMAGE_OUTSIDE_ROOT = "image_outside_root"
DUPLICATE_ID = "duplicate_id"
MISSING_IMAGE = "missing_image"
UNDECODABLE_IMAGE = "undecodable_image"
NO_ANSWER = "no_answer"
REASONS = (
    MALFORMED_RECORD, BAD_TEXT, EMPTY_CONVERSATION, UNKNOWN_ROLE, NON_ALTERNATING_ROLES, EMPTY_MESSAGE,
    IMAGE_COUNT_MISMATCH, IMAGE_OUTSIDE_ROOT, DUPLICATE_ID, MISSING_IMAGE, UNDECODABLE_IMAGE, NO_ANSWER,
)  # fmt: skip


@dataclass(frozen=True)
class ImageRef:
    """One image of a sample: a file to read, or bytes already in memory (synth)."""

    name: str
    """The path as the input record gives it (kept in `meta.image_paths`)."""
    path: str | None = None
    """Absolute file to read, or None when `data` is given."""
    data: bytes | None = None
    """The image bytes, for generated images."""


@dataclass
class Sample:
    """A record that passed structural validation; image files are checked when written."""

    index: int
    """Position of the record in the input (rejections and meta refer to it)."""
    id: Any
    """The original id."""
    source: str
    """Dataset name, for per-source statistics."""
    conversations: list[dict]
    """LLaVA conversation: [{"from": "human"|"gpt", "value": str}, ...]."""
    images: list[ImageRef] = field(default_factory=list)
    """Images in placeholder order."""
    meta: dict = field(default_factory=dict)
    """Anything else worth keeping (scene graph, original fields)."""
    key: str = ""
    """The sample's unique webdataset key, assigned by `IdRegistry` when `convert` settles duplicate ids."""
    covers: list[tuple[int, Any]] = field(default_factory=list)
    """(index, id) of the input records this sample carries when it merges several (VQA grouping)."""
    original: Any = None
    """The input record as read (kept in rejected.jsonl if the sample is rejected later)."""
    fields: dict = field(default_factory=dict)
    """Extra top-level fields of the shard record: a preference pair's `chosen` and `rejected` (data_prep.pref)."""

    def input_records(self) -> list[tuple[int, Any]]:
        return self.covers or [(self.index, self.id)]

    def reject(self, reason: str, detail: str) -> list["Rejection"]:
        """One rejection per input record this sample carries."""
        return [Rejection(index, record_id, reason, detail, self.original) for index, record_id in self.input_records()]


@dataclass(frozen=True)
class Rejection:
    """An input record that will not be written, and why."""

    index: int
    id: Any
    reason: str
    detail: str
    record: Any = None

    def to_json(self) -> dict:
        return {"index": self.index, "id": self.id, "reason": self.reason, "detail": self.detail, "record": self.record}


class RecordError(ValueError):
    """Raised by converters for a bad record; carries the rejection reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def check_conversation(conversations: Any, num_images: int, *, prompt: bool = False) -> None:
    """Raise `RecordError` unless the conversation keeps mm.chat's contract for `num_images` images
    (ending with a human turn for a `prompt`)."""
    try:
        chat.check_conversation(conversations, num_images, prompt=prompt)
    except chat.ConversationError as error:
        raise RecordError(error.reason, error.detail) from None


MAX_RECORD_DEPTH = 64
"""Deepest nesting of lists and objects a record may have (a LLaVA record needs 4): deeper ones are rejected
before anything walks them recursively (Python's JSON reader and writer stop near 1,000 levels)."""


def nesting_depth(value: Any, limit: int = MAX_RECORD_DEPTH) -> int:
    """How deep lists and objects nest in `value`, counted without recursion and only up to `limit + 1`."""
    if not isinstance(value, (list, dict)):
        return 0
    deepest, stack = 1, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        nested = [child for child in children if isinstance(child, (list, dict))]
        if nested:
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in nested)
    return deepest


def check_depth(value: Any, where: str = "record") -> None:
    """Raise `RecordError(MALFORMED_RECORD)` if `value` nests deeper than MAX_RECORD_DEPTH."""
    if nesting_depth(value) > MAX_RECORD_DEPTH:
        raise RecordError(MALFORMED_RECORD, f"{where} is nested deeper than {MAX_RECORD_DEPTH} levels")


def check_text(value: Any, where: str = "record") -> None:
    """Raise `RecordError(BAD_TEXT)` if a string in `value` (keys included) cannot be written as
    UTF-8: a lone surrogate, which JSON's `\\ud800` escapes produce."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RecordError(BAD_TEXT, f"{where} is not valid text ({error.reason} {value[error.start]!r})") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{where} key {key!r}")
            check_text(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            check_text(item, f"{where}[{position}]")


@functools.lru_cache(maxsize=16)
def _real_root(image_root: str) -> str:
    return os.path.realpath(image_root)  # once per root, not once per image


def image_path(image_root: str, name: str, allow_outside_root: bool = False) -> str:
    """The file of image `name` under `image_root`; `RecordError(IMAGE_OUTSIDE_ROOT)` if it resolves
    (through `..`, an absolute path or symlinks) outside the root, unless that is allowed."""
    if "\0" in name:  # no file system accepts it; os functions raise ValueError, not OSError
        raise RecordError(MALFORMED_RECORD, f"image path {name!r} contains a NUL byte")
    path = os.path.join(image_root, name)
    root = _real_root(image_root)
    if not allow_outside_root and os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise RecordError(IMAGE_OUTSIDE_ROOT, f"image {name!r} resolves outside --image-root (--allow-outside-root permits it)")
    return path


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def id_text(record_id: Any) -> str:
    """What makes two ids equal: `7` and `"7"` are different ids."""
    return f"{type(record_id).__name__}:{record_id}"


class IdRegistry:
    """Rejects repeated ids and hands out unique, dot-free webdataset keys."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._keys: set[str] = set()

    def __contains__(self, record_id: Any) -> bool:
        return id_text(record_id) in self._ids

    def claim(self, record_id: Any) -> str:
        """Register `record_id`; return its key or raise `RecordError(DUPLICATE_ID)`."""
        if record_id in self:
            raise RecordError(DUPLICATE_ID, f"id {record_id!r} appeared earlier in the input")
        self._ids.add(id_text(record_id))
        base = _KEY_UNSAFE.sub("_", str(record_id))[:80].strip("_") or "sample"
        key, suffix = base, 1
        while key in self._keys:  # ids differing only in unsafe characters ("a.b", "a_b")
            key, suffix = f"{base}-{suffix}", suffix + 1
        self._keys.add(key)
        return key
