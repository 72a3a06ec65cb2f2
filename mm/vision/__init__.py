"""Vision towers behind an exact-key factory."""

from __future__ import annotations

from mm.config import VisionTowerConfig
from mm.vision.base import VisionTower
from mm.vision.hf import HFCLIPVisionTower, HFSiglipVisionTower
from mm.vision.openclip_tower import OpenCLIPVisionTower

VISION_TOWERS: dict[str, type[VisionTower]] = {
    "open_clip": OpenCLIPVisionTower,
    "hf_clip": HFCLIPVisionTower,
    "hf_siglip": HFSiglipVisionTower,
}


def build_vision_tower(config: VisionTowerConfig, *, load_weights: bool = True) -> VisionTower:
    """Build the tower named by `config.kind`; `load_weights=False` builds from the inline config only."""
    if config.kind not in VISION_TOWERS:
        raise ValueError(f"unknown vision tower {config.kind!r}; valid names: {sorted(VISION_TOWERS)}")
    return VISION_TOWERS[config.kind](config, load_weights=load_weights)


__all__ = ["VISION_TOWERS", "VisionTower", "build_vision_tower"]
