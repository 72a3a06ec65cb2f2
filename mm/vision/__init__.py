"""Vision towers: one registry row per kind, from which everything that lists kinds is derived.

Adding a kind is adding its row: `build_vision_tower`, the llava-hf import/export map (`mm.llava`), the tiny
assets (`mm.tiny`) and the error messages read it; tests/test_vision_towers.py checks that the docs'
lists (ARCHITECTURE.md, README.md, `VisionTowerConfig.kind`'s help) name exactly these kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

from mm.config import VisionTowerConfig
from mm.vision.base import VisionTower
from mm.vision.hf import HFCLIPVisionTower, HFSiglipVisionTower
from mm.vision.openclip_tower import OpenCLIPVisionTower


@dataclass(frozen=True)
class VisionTowerKind:
    """Everything mm knows about one kind of vision tower."""

    tower_class: type[VisionTower]
    """Builds it: `tower_class(config, load_weights=...)`."""
    llava_model_types: tuple[str, ...] = ()
    """transformers vision `model_type`s of llava-hf directories it loads and exports to; () = not Llava's."""
    tiny_config: str | None = None
    """File in `mm/assets/configs/` with its tiny architecture (tests, demo, benchmarks); None = no tiny one."""


VISION_TOWERS: dict[str, VisionTowerKind] = {
    "hf_clip": VisionTowerKind(HFCLIPVisionTower, ("clip_vision_model",), "hf_clip.json"),
    "hf_siglip": VisionTowerKind(HFSiglipVisionTower, ("siglip_vision_model",), "hf_siglip.json"),
    "open_clip": VisionTowerKind(OpenCLIPVisionTower, (), "open_clip.json"),
}


def vision_tower_kind(kind: str) -> VisionTowerKind:
    """The registry row of `kind`; a ValueError listing the valid names for any other."""
    if kind not in VISION_TOWERS:
        raise ValueError(f"unknown vision tower {kind!r}; valid names: {sorted(VISION_TOWERS)}")
    return VISION_TOWERS[kind]


def llava_vision_kinds() -> dict[str, str]:
    """transformers vision `model_type` -> our kind, for llava-hf directories."""
    return {model_type: kind for kind, row in VISION_TOWERS.items() for model_type in row.llava_model_types}


def build_vision_tower(config: VisionTowerConfig, *, load_weights: bool = True) -> VisionTower:
    """Build the tower named by `config.kind`; `load_weights=False` builds from the inline config only."""
    return vision_tower_kind(config.kind).tower_class(config, load_weights=load_weights)


__all__ = ["VISION_TOWERS", "VisionTower", "VisionTowerKind", "build_vision_tower", "llava_vision_kinds",
           "vision_tower_kind"]
