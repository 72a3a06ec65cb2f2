"""The tiny offline assets in `mm/assets/`: for tests, the demo and benchmarks."""

from __future__ import annotations

from pathlib import Path

from mm.config import LLMConfig, ProjectorConfig, VisionTowerConfig, VLMConfig

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"
TINY_VISION = ("hf_clip", "hf_siglip", "open_clip")
TINY_LLMS = ("llama", "qwen2")


def tiny_config_path(name: str) -> Path:
    valid = TINY_VISION + TINY_LLMS
    if name not in valid:
        raise ValueError(f"no tiny config {name!r}; valid names: {list(valid)}")
    return ASSETS / "configs" / f"{name}.json"


def tiny_vlm_config(vision: str = "hf_clip", llm: str = "llama", projector: str = "mlp2x_gelu", **kwargs) -> VLMConfig:
    """A ~1.0-1.2M-parameter model: 64px images in 8px patches (64 patches), a 4-layer 128-wide LLM.

    Extra keyword arguments are VLMConfig fields (e.g. `chat_template`, `image_transform`).
    """
    if vision not in TINY_VISION:
        raise ValueError(f"no tiny vision tower {vision!r}; valid names: {list(TINY_VISION)}")
    if llm not in TINY_LLMS:
        raise ValueError(f"no tiny LLM {llm!r}; valid names: {list(TINY_LLMS)}")
    return VLMConfig(
        vision=VisionTowerConfig(kind=vision, name_or_path=str(tiny_config_path(vision))),
        projector=ProjectorConfig(kind=projector),
        llm=LLMConfig(name_or_path=str(tiny_config_path(llm)), tokenizer=str(TOKENIZER_DIR)),
        **kwargs,
    )
