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


class GridPosition(nn.Module):
    """A learned row embedding plus a learned column embedding for each token of a square token grid.

    Image tokens reach the LLM in reading order, and its rotary positions say how far apart two tokens are
    in that order: top and bottom are far apart, but a token's column is its position modulo the row length,
    which no monotone function of distance gives. Pix2Struct and Qwen-VL give visual tokens 2-D positions
    for this; here each token gets `rows[r] + columns[c]` in the LLM's embedding space, factorised so every
    row and every column vector trains on a whole line of tokens.
    """

    def __init__(self, side: int, hidden: int) -> None:
        super().__init__()
        self.side = side
        self.rows = nn.Parameter(torch.randn(side, hidden) / math.sqrt(hidden))
        self.columns = nn.Parameter(torch.randn(side, hidden) / math.sqrt(hidden))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t, d = tokens.shape
        if t != self.side**2:
            raise ValueError(f"grid_position was built for {self.side}x{self.side} tokens; got {t} per view")
        grid = self.rows[:, None, :] + self.columns[None, :, :]
        return tokens + grid.reshape(1, t, d).to(tokens.dtype)


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


class PositionedProjector(Projector):
    """A projector whose output tokens get their place in the token grid added (`GridPosition`)."""

    def __init__(self, projector: Projector, num_input_tokens: int, llm_hidden: int) -> None:
        super().__init__()
        self.inner = projector
        output_tokens = projector.num_output_tokens(num_input_tokens)
        side = math.isqrt(output_tokens)
        if side * side != output_tokens:
            raise ValueError(f"grid_position needs a square grid of image tokens; the projector gives {output_tokens} "
                             "(drop the prefix tokens: vision.keep_prefix_tokens false)")
        self.grid_position = GridPosition(side, llm_hidden)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.inner.num_output_tokens(num_input_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.grid_position(self.inner(features))


def build_projector(config: ProjectorConfig, vision_hidden: int, llm_hidden: int,
                    num_input_tokens: int | None = None) -> Projector:
    """The projector `config` names; with `grid_position`, wrapped to add each token's row and column
    (`num_input_tokens`, the tower's tokens per view, sets the grid)."""
    if config.kind not in PROJECTORS:
        raise ValueError(f"unknown projector {config.kind!r}; valid names: {sorted(PROJECTORS)}")
    projector = PROJECTORS[config.kind](vision_hidden, llm_hidden, bias=config.bias)
    if not config.grid_position:
        return projector
    if num_input_tokens is None:
        raise ValueError("grid_position needs the tower's tokens per view to size its grid")
    return PositionedProjector(projector, num_input_tokens, llm_hidden)
