"""mm: multimodal instruction tuning (vision tower + projector + LLM)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Lazy so that light modules (mm.chat, mm.config) do not pull in torch/transformers on import.
_EXPORTS = {
    "build_vlm": "mm.builder",
    "load_pretrained": "mm.loading",
    "LLMConfig": "mm.config",
    "ProjectorConfig": "mm.config",
    "VLMConfig": "mm.config",
    "VisionTowerConfig": "mm.config",
    "VisionLanguageModel": "mm.model",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
