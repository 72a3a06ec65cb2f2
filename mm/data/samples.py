"""Raw shard records -> model-ready samples (token ids, labels, uint8 images), or a counted skip."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from mm.chat import IMAGE_COUNT_MISMATCH, ConversationError, SampleTooLong, encode_conversation
from mm.data.skips import SkipReason
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
    """uint8 (3, S, S) per image, in placeholder order."""
    key: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SampleDecoder:
    """Decode one shard record: JSON + images -> ``Sample``; raises ``SkipSample`` on bad input."""

    tokenizer: object
    template: str
    tokens_per_image: int
    image_transform: ImageTransform
    image_token: str = "<image>"
    max_length: int | None = None

    def __call__(self, record: dict) -> Sample:
        key = f"{record.get('__url__', '')}#{record.get('__key__', '')}"
        meta = self._json(record, key)
        conversation = meta.get("conversations")
        image_names = meta.get("images", [])
        if not isinstance(conversation, list) or not isinstance(image_names, list):
            raise SkipSample(SkipReason.BAD_JSON, f"{key}: `conversations` and `images` must be lists")
        try:
            encoded = encode_conversation(
                conversation,
                self.tokenizer,
                self.template,
                tokens_per_image=self.tokens_per_image,
                image_token=self.image_token,
                max_length=self.max_length,
                num_images=len(image_names),
            )
        except SampleTooLong as error:
            raise SkipSample(SkipReason.TOO_LONG, f"{key}: {error}") from error
        except ConversationError as error:  # the rules mm-prep applies, with the same reasons
            reason = SkipReason.IMAGE_MISMATCH if error.reason == IMAGE_COUNT_MISMATCH else SkipReason.BAD_CONVERSATION
            raise SkipSample(reason, f"{key}: {error.reason}: {error}") from error
        images = [self._image(record, name, key) for name in image_names]
        return Sample(encoded.input_ids, encoded.labels, images, key)

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

    def _image(self, record: dict, name: str, key: str) -> torch.Tensor:
        if name not in record:
            raise SkipSample(SkipReason.MISSING_IMAGE, f"{key}: no member {name!r}")
        try:
            return self.image_transform.load(record[name])
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            raise SkipSample(SkipReason.BAD_IMAGE, f"{key}/{name}: {error}") from error
