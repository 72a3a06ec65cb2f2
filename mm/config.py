"""Typed configuration of a vision-language model, with a JSON round trip.

Field docstrings are one line each: jsonargparse turns them into CLI help.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm.transforms import MODES as IMAGE_TRANSFORM_MODES


@dataclass
class VisionTowerConfig:
    """Which vision encoder to use and which of its features feed the projector."""

    kind: str = "hf_clip"
    """Tower family: one of `open_clip`, `hf_clip`, `hf_siglip`."""
    name_or_path: str = "openai/clip-vit-large-patch14-336"
    """Hub id or local directory (weights), config JSON path (random init), open_clip model name, or ""."""
    pretrained: str | None = None
    """open_clip only: pretrained tag (e.g. `openai`) or a local weights file."""
    model_config: dict[str, Any] | None = None
    """Inline architecture: used when `name_or_path` is "" (random init) or a checkpoint supplies the weights."""
    select_layer: int = -2
    """Hidden-state index whose features are used (0 = embeddings, -1 = last block, -2 = penultimate)."""
    keep_prefix_tokens: bool = False
    """Keep the CLS/prefix tokens in the features (LLaVA-1.5 drops them)."""
    image_mean: list[float] | None = None
    """Per-channel normalisation mean; None = the tower's own."""
    image_std: list[float] | None = None
    """Per-channel normalisation std; None = the tower's own."""


@dataclass
class ProjectorConfig:
    """How vision features are mapped into the LLM's embedding space."""

    kind: str = "mlp2x_gelu"
    """Projector: one of `linear`, `mlp2x_gelu`, `pixel_shuffle2x_mlp`."""
    bias: bool = True
    """Whether the projector's linear layers have a bias."""
    grid_position: bool = False
    """Add a learned row and a learned column embedding to each image token (the LLM's 1-D RoPE order alone cannot tell columns apart)."""


@dataclass
class LLMConfig:
    """Which causal language model to use."""

    name_or_path: str = "lmsys/vicuna-7b-v1.5"
    """Hub id or local directory (weights), config JSON path (random init), or "" (use `model_config`)."""
    model_config: dict[str, Any] | None = None
    """Inline transformers config: used when `name_or_path` is "" (random init) or a checkpoint supplies weights."""
    tokenizer: str | None = None
    """Tokenizer hub id or directory; None = `name_or_path`."""
    attn_implementation: str = "sdpa"
    """transformers attention backend: `sdpa`, `eager`, `flash_attention_2`, ..."""


@dataclass
class VLMConfig:
    """A vision tower, a projector and a causal LLM."""

    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    """Vision tower settings."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    """Projector settings."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """Language model settings."""
    image_token: str = "<image>"
    """Placeholder token marking image positions in the text."""
    chat_template: str = "vicuna_v1"
    """Conversation template the model is trained with (see `mm.chat`)."""
    image_transform: str = "pad"
    """How images become tower input: `pad`, `resize`, `crop` (one square view), or `anyres` (LLaVA-NeXT's tiles)."""
    image_grid_pinpoints: list[list[int]] | None = None
    """anyres: the [height, width] resolutions an image may be tiled at (multiples of the tower's image size)."""
    anyres_max_tiles: int | None = None
    """anyres: LLaVA-OneVision's anyres_max_N: tile features beyond N tiles' worth are pooled down; None: never."""

    def __post_init__(self) -> None:
        if self.image_transform not in IMAGE_TRANSFORM_MODES:
            raise ValueError(
                f"image_transform={self.image_transform!r} is not one of {list(IMAGE_TRANSFORM_MODES)}"
            )
        if (self.image_transform == "anyres") != bool(self.image_grid_pinpoints):
            raise ValueError("image_grid_pinpoints go with image_transform 'anyres', and anyres needs them "
                             f"(image_transform={self.image_transform!r}, image_grid_pinpoints={self.image_grid_pinpoints})")
        if self.image_grid_pinpoints is not None:
            self.image_grid_pinpoints = [[int(v) for v in pair] for pair in self.image_grid_pinpoints]
            if any(len(pair) != 2 or min(pair) < 1 for pair in self.image_grid_pinpoints):
                raise ValueError(f"image_grid_pinpoints must be [height, width] pairs; got {self.image_grid_pinpoints}")
        if self.anyres_max_tiles is not None and (self.image_transform != "anyres" or self.anyres_max_tiles < 1):
            raise ValueError(f"anyres_max_tiles={self.anyres_max_tiles} needs image_transform 'anyres' and must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLMConfig":
        data = dict(data)
        parts = {"vision": VisionTowerConfig, "projector": ProjectorConfig, "llm": LLMConfig}
        kwargs = {name: _dataclass_from_dict(part, data.pop(name, {})) for name, part in parts.items()}
        return _dataclass_from_dict(cls, {**data, **kwargs})

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> "VLMConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _dataclass_from_dict(cls, data):
    if isinstance(data, cls):
        return data
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields: {sorted(known)}")
    return cls(**data)
