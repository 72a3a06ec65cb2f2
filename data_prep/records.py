"""What every converter produces: validated samples or rejections with a reason.

A converter (llava, vqa, synth) turns input records into `Sample`s; `check_conversation` and
`IdRegistry` apply the same rules to all of them, so every record ends either in a shard or in
`rejected.jsonl`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

IMAGE_TOKEN = "<image>"
# LLaVA-1.5's answer-format prompts; training data and evaluation prompts must use the same text.
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."
ROLES = ("human", "gpt")
SYSTEM_ROLE = "system"

# Rejection reasons: the exact strings written to rejected.jsonl (documented in README.md).
MALFORMED_RECORD = "malformed_record"
EMPTY_CONVERSATION = "empty_conversation"
UNKNOWN_ROLE = "unknown_role"
NON_ALTERNATING_ROLES = "non_alternating_roles"
EMPTY_MESSAGE = "empty_message"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
DUPLICATE_ID = "duplicate_id"
MISSING_IMAGE = "missing_image"
UNDECODABLE_IMAGE = "undecodable_image"
NO_ANSWER = "no_answer"
REASONS = (
    MALFORMED_RECORD, EMPTY_CONVERSATION, UNKNOWN_ROLE, NON_ALTERNATING_ROLES, EMPTY_MESSAGE,
    IMAGE_COUNT_MISMATCH, DUPLICATE_ID, MISSING_IMAGE, UNDECODABLE_IMAGE, NO_ANSWER,
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
    """The sample's unique webdataset key, assigned by `IdRegistry`."""
    covers: list[tuple[int, Any]] = field(default_factory=list)
    """(index, id) of the input records this sample carries when it merges several (VQA grouping)."""
    original: Any = None
    """The input record as read (kept in rejected.jsonl if the sample is rejected later)."""

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


def check_conversation(conversations: Any, num_images: int) -> None:
    """Raise `RecordError` unless the conversation is well formed for `num_images` images.

    Roles alternate human, gpt, human, gpt, ... after an optional leading system message; the
    conversation ends with gpt; `<image>` appears only in human turns, once per image.
    """
    if not isinstance(conversations, list):
        raise RecordError(MALFORMED_RECORD, "'conversations' is not a list")
    if not conversations:
        raise RecordError(EMPTY_CONVERSATION, "'conversations' is empty")
    for turn, message in enumerate(conversations):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str) or "from" not in message:
            raise RecordError(MALFORMED_RECORD, f"message {turn} is not {{'from': str, 'value': str}}")
        if message["from"] not in (*ROLES, SYSTEM_ROLE):
            raise RecordError(UNKNOWN_ROLE, f"message {turn} has role {message['from']!r}")
        if not message["value"].strip():
            raise RecordError(EMPTY_MESSAGE, f"message {turn} ({message['from']}) is empty")
    dialogue = conversations[1:] if conversations[0]["from"] == SYSTEM_ROLE else conversations
    roles = [message["from"] for message in dialogue]
    expected = [ROLES[turn % 2] for turn in range(len(roles))]
    if not roles or roles != expected or len(roles) % 2:
        raise RecordError(NON_ALTERNATING_ROLES, f"roles {roles} are not human, gpt, ... ending with gpt")
    placeholders = sum(message["value"].count(IMAGE_TOKEN) for message in dialogue)
    if any(IMAGE_TOKEN in message["value"] for message in conversations if message["from"] != "human"):
        raise RecordError(IMAGE_COUNT_MISMATCH, f"{IMAGE_TOKEN} outside a human turn")
    if placeholders != num_images:
        raise RecordError(IMAGE_COUNT_MISMATCH, f"{placeholders} {IMAGE_TOKEN} placeholders for {num_images} images")


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class IdRegistry:
    """Rejects repeated ids and hands out unique, dot-free webdataset keys."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._keys: set[str] = set()

    def claim(self, record_id: Any) -> str:
        """Register `record_id`; return its key or raise `RecordError(DUPLICATE_ID)`."""
        id_text = f"{type(record_id).__name__}:{record_id}"
        if id_text in self._ids:
            raise RecordError(DUPLICATE_ID, f"id {record_id!r} appeared earlier in the input")
        self._ids.add(id_text)
        base = _KEY_UNSAFE.sub("_", str(record_id))[:80].strip("_") or "sample"
        key, suffix = base, 1
        while key in self._keys:  # ids differing only in unsafe characters ("a.b", "a_b")
            key, suffix = f"{base}-{suffix}", suffix + 1
        self._keys.add(key)
        return key
