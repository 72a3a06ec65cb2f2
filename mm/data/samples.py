"""Raw shard records -> model-ready samples (token ids, labels, uint8 images), or a counted skip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from PIL import Image, UnidentifiedImageError

from mm.chat import IMAGE_COUNT_MISMATCH, ConversationError, SampleTooLong, encode_conversation
from mm.data.skips import SkipReason
from mm.image_tokens import ImageTokens
from mm.transforms import ImageTransform


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` becomes the `skipped/<reason>` counter."""

    def __init__(self, reason: SkipReason, detail: str):
        self.reason = SkipReason(reason)  # an unknown reason fails here, where it is raised
        super().__init__(f"{self.reason.value}: {detail}")


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    images: list[torch.Tensor]
    """uint8 (V, 3, S, S) views per image (one, or anyres' base view and tiles), in placeholder order."""
    key: str = ""
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    """(height, width) of each image as decoded: anyres' tiling and token count depend on it."""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SampleDecoder:
    """Decode one shard record: JSON + images -> ``Sample``; raises ``SkipSample`` on bad input."""

    tokenizer: object
    template: str
    image_tokens: ImageTokens | int
    """Each image's placeholder count (an int: the same for every image)."""
    image_transform: ImageTransform
    image_token: str = "<image>"
    max_length: int | None = None

    def __post_init__(self):
        if isinstance(self.image_tokens, int):
            self.image_tokens = ImageTokens(self.image_tokens)

    def __call__(self, record: dict) -> Sample:
        key = f"{record.get('__url__', '')}#{record.get('__key__', '')}"
        meta = self._json(record, key)
        conversation = meta.get("conversations")
        image_names = meta.get("images", [])
        if not isinstance(conversation, list) or not isinstance(image_names, list):
            raise SkipSample(SkipReason.BAD_JSON, f"{key}: `conversations` and `images` must be lists")
        # anyres: each image's placeholder count depends on its size, so images are decoded first
        pictures = [self._open(record, name, key) for name in image_names] if self.image_tokens.varies else None
        try:
            encoded = encode_conversation(
                conversation,
                self.tokenizer,
                self.template,
                tokens_per_image=(self.image_tokens.per_view if pictures is None
                                  else self.image_tokens.counts((p.height, p.width) for p in pictures)),
                image_token=self.image_token,
                max_length=self.max_length,
                num_images=len(image_names),
            )
        except SampleTooLong as error:
            raise SkipSample(SkipReason.TOO_LONG, f"{key}: {error}") from error
        except ConversationError as error:  # the rules mm-prep applies, with the same reasons
            reason = SkipReason.IMAGE_MISMATCH if error.reason == IMAGE_COUNT_MISMATCH else SkipReason.BAD_CONVERSATION
            raise SkipSample(reason, f"{key}: {error.reason}: {error}") from error
        if pictures is None:
            pictures = [self._open(record, name, key) for name in image_names]
        views = [self._views(picture, name, key) for picture, name in zip(pictures, image_names)]
        return Sample(encoded.input_ids, encoded.labels, views, key, [(p.height, p.width) for p in pictures])

    def _json(self, record: dict, key: str) -> dict:
        if "json" not in record:
            raise SkipSample(SkipReason.BAD_JSON, f"{key}: no .json member")
        try:
            meta = json.loads(record["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SkipSample(SkipReason.BAD_JSON, f"{key}: {error}") from error
        if not isinstance(meta, dict):
            raise SkipSample(SkipReason.BAD_JSON, f"{key}: JSON is not an object")
        return meta

    def _open(self, record: dict, name: str, key: str) -> Image.Image:
        if name not in record:
            raise SkipSample(SkipReason.MISSING_IMAGE, f"{key}: no member {name!r}")
        try:
            return self.image_transform.open(record[name])
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            raise SkipSample(SkipReason.BAD_IMAGE, f"{key}/{name}: {error}") from error

    def _views(self, picture: Image.Image, name: str, key: str) -> torch.Tensor:
        try:
            return self.image_transform.views(picture)
        except (OSError, ValueError) as error:  # a truncated file fails when its pixels are read
            raise SkipSample(SkipReason.BAD_IMAGE, f"{key}/{name}: {error}") from error
