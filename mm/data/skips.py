"""Why a training sample was not used: one enumeration shared by the shard reader, the sample decoder,
the training module's counters and its `skipped/<reason>` logs.

The counters cross processes as vectors in this fixed order (all-reduced over ranks, summed into
checkpoints), so every rank always sends the same length, whatever reasons it happened to meet.
"""

from __future__ import annotations

import enum


class SkipReason(str, enum.Enum):
    BAD_JSON = "bad_json"
    """The sample's .json member is missing, not UTF-8 JSON, or not an object of lists."""
    BAD_IMAGE = "bad_image"
    """An image member does not decode (corrupt, unknown format, decompression bomb)."""
    MISSING_IMAGE = "missing_image"
    """The JSON names an image member the sample does not have."""
    TOO_LONG = "too_long"
    """Longer than max_length with an image placeholder beyond the cut."""
    BAD_CONVERSATION = "bad_conversation"
    """The conversation breaks the rules of mm.chat."""
    IMAGE_MISMATCH = "image_mismatch"
    """Placeholders and images differ in number."""
    SHARD_ERROR = "shard_error"
    """Planned samples a broken or short shard could not deliver."""
    DROPPED_UNEVEN_TAIL = "dropped_uneven_tail"
    """Samples beyond the shortest consumer's full batches (`drop_uneven_tail`)."""


PADDING_BATCHES = "padding_batches"
"""Counter of masked batches that even out the ranks (batches, not samples)."""

COUNTER_NAMES: tuple[str, ...] = tuple(reason.value for reason in SkipReason) + (PADDING_BATCHES,)
"""The order of the counter vector."""


def counter_vector(counts: dict[str, int]) -> list[int]:
    """`counts` as a vector in `COUNTER_NAMES` order; a name outside it is a programming error."""
    unknown = set(counts) - set(COUNTER_NAMES)
    if unknown:
        raise ValueError(f"unknown skip counters {sorted(unknown)}; known: {list(COUNTER_NAMES)}")
    return [int(counts.get(name, 0)) for name in COUNTER_NAMES]
