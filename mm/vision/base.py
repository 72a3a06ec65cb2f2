"""What every vision tower declares, and the frozen/no-graph behaviour they share."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mm.config import VisionTowerConfig

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class VisionTower(nn.Module):
    """Images `(N, 3, S, S)` -> features `(N, num_tokens, hidden_size)` from `select_layer`.

    A tower whose parameters are all frozen runs under `torch.no_grad()`, so it builds no graph.
    """

    config: VisionTowerConfig
    hidden_size: int
    image_size: int
    patch_size: int
    num_prefix_tokens: int
    num_layers: int
    image_mean: list[float]
    image_std: list[float]
    block_class: type[nn.Module]

    @property
    def grid_size(self) -> int:
        """Patches per side of the (square) patch grid."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_tokens(self) -> int:
        """Feature tokens per image handed to the projector."""
        return self.num_patches + (self.num_prefix_tokens if self.config.keep_prefix_tokens else 0)

    @property
    def is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values must be (num_images, {', '.join(map(str, expected))}); "
                             f"got {tuple(pixel_values.shape)}")
        grad_context = contextlib.nullcontext() if self.is_trainable else torch.no_grad()
        with grad_context:
            features = self.hidden_states_at(pixel_values.to(self.dtype), self.config.select_layer)
        if not self.config.keep_prefix_tokens:
            features = features[:, self.num_prefix_tokens :]
        return features

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def hidden_states_at(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        """All tokens (prefix first) of hidden state `layer` (0 = embeddings, -1 = last block)."""
        raise NotImplementedError

    def gradient_checkpointing_enable(self) -> None:
        raise NotImplementedError

    def resolved_config(self) -> VisionTowerConfig:
        """This tower's config with the architecture and normalisation inlined (no network needed)."""
        raise NotImplementedError

    def _check_select_layer(self) -> None:
        layer = self.config.select_layer
        if not -(self.num_layers + 1) <= layer <= self.num_layers:
            raise ValueError(
                f"select_layer={layer} is out of range for a tower with {self.num_layers} blocks "
                f"(valid: {-(self.num_layers + 1)}..{self.num_layers})"
            )

    def _resolve_normalisation(self, default_mean: list[float], default_std: list[float]) -> None:
        self.image_mean = list(self.config.image_mean or default_mean)
        self.image_std = list(self.config.image_std or default_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"image_mean/image_std need 3 values, got {self.image_mean} / {self.image_std}")
