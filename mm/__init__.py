"""mm: multimodal instruction tuning (vision tower + projector + LLM)."""

__version__ = "0.1.0"
