"""Projectors: vision features `(N, T_in, D_vision)` -> LLM embeddings `(N, T_out, D_llm)`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mm.config import ProjectorConfig


class Projector(nn.Module):
    def num_output_tokens(self, num_input_tokens: int) -> int:
        """Image placeholder tokens produced for `num_input_tokens` vision features."""
        return num_input_tokens


class LinearProjector(Projector):
    def __init__(self, vision_hidden: int, llm_hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_hidden, llm_hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class MLPProjector(Projector):
    """LLaVA-1.5's `mlp2x_gelu`: Linear -> GELU -> Linear (same names as transformers' Llava)."""

    def __init__(self, vision_hidden: int, llm_hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, llm_hidden, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(llm_hidden, llm_hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class PixelShuffleMLPProjector(Projector):
    """Merges each 2x2 block of neighbouring patches into one token (4x fewer), then `mlp2x_gelu`.

    For high-resolution towers: the token count, hence the LLM's sequence, shrinks 4x. An odd grid
    (SigLIP-so400m/14 at 384 px has 27x27 patches) gets a zero row and column at its bottom and right
    edge first, so its last blocks hold fewer real patches (27x27 -> 14x14 tokens).
    """

    factor = 2

    def __init__(self, vision_hidden: int, llm_hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.mlp = MLPProjector(vision_hidden * self.factor**2, llm_hidden, bias=bias)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self._blocks_per_side(self._grid_side(num_input_tokens)) ** 2

    def _blocks_per_side(self, side: int) -> int:
        return -(-side // self.factor)

    def _grid_side(self, num_tokens: int) -> int:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(
                f"pixel_shuffle2x_mlp needs a square patch grid; got {num_tokens} tokens "
                "(prefix/CLS tokens must be dropped: keep_prefix_tokens=False)"
            )
        return side

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, t, d = features.shape
        side, f = self._grid_side(t), self.factor
        blocks = self._blocks_per_side(side)
        grid = features.reshape(n, side, side, d)
        if blocks * f != side:
            grid = F.pad(grid, (0, 0, 0, blocks * f - side, 0, blocks * f - side))
        grid = grid.reshape(n, blocks, f, blocks, f, d)
        # (n, row block, col block, row in block, col in block, d): each 2x2 block becomes one token
        merged = grid.permute(0, 1, 3, 2, 4, 5).reshape(n, blocks**2, f * f * d)
        return self.mlp(merged)


PROJECTORS: dict[str, type[Projector]] = {
    "linear": LinearProjector,
    "mlp2x_gelu": MLPProjector,
    "pixel_shuffle2x_mlp": PixelShuffleMLPProjector,
}


def build_projector(config: ProjectorConfig, vision_hidden: int, llm_hidden: int) -> Projector:
    if config.kind not in PROJECTORS:
        raise ValueError(f"unknown projector {config.kind!r}; valid names: {sorted(PROJECTORS)}")
    return PROJECTORS[config.kind](vision_hidden, llm_hidden, bias=config.bias)
