"""The tiny offline assets in `mm/assets/`: for tests, the demo and benchmarks."""

from __future__ import annotations

from pathlib import Path

from mm.config import LLMConfig, ProjectorConfig, VisionTowerConfig, VLMConfig
from mm.vision import VISION_TOWERS

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"
TINY_LLMS = ("llama", "qwen2", "qwen3")
"""qwen3: llama's shape with RMS-normalised queries and keys (QK-norm); README, "Does the model read its images?"."""


def tiny_vision_kinds() -> dict[str, str]:
    """Vision tower kind -> its tiny config file in `assets/configs/`, from the registry (`mm.vision`)."""
    return {kind: row.tiny_config for kind, row in VISION_TOWERS.items() if row.tiny_config}


def tiny_config_path(name: str) -> Path:
    """The tiny architecture JSON of a vision tower kind (`tiny_vision_kinds()`) or of an LLM (`TINY_LLMS`)."""
    vision = tiny_vision_kinds()
    valid = [*vision, *TINY_LLMS]
    if name not in valid:
        raise ValueError(f"no tiny config {name!r}; valid names: {valid}")
    return ASSETS / "configs" / vision.get(name, f"{name}.json")


def tiny_vlm_config(vision: str = "hf_clip", llm: str = "llama", projector: str = "mlp2x_gelu", **kwargs) -> VLMConfig:
    """A ~1.0-1.2M-parameter model: 64px images in 8px patches (64 patches), a 4-layer 128-wide LLM.

    Extra keyword arguments are VLMConfig fields (e.g. `chat_template`, `image_transform`).
    """
    if vision not in tiny_vision_kinds():
        raise ValueError(f"no tiny vision tower {vision!r}; valid names: {list(tiny_vision_kinds())}")
    if llm not in TINY_LLMS:
        raise ValueError(f"no tiny LLM {llm!r}; valid names: {list(TINY_LLMS)}")
    return VLMConfig(
        vision=VisionTowerConfig(kind=vision, name_or_path=str(tiny_config_path(vision))),
        projector=ProjectorConfig(kind=projector),
        llm=LLMConfig(name_or_path=str(tiny_config_path(llm)), tokenizer=str(TOKENIZER_DIR)),
        **kwargs,
    )
