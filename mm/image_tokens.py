"""`ImageTokens`: how many placeholder tokens an image takes — the one rule that prompt encoding, data
loading, the model's placeholder check, evaluation, chat and export all apply."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from mm.anyres import anyres_token_count


@dataclass(frozen=True)
class ImageTokens:
    """An image's placeholder count: `per_view` for one square view, or under anyres (`grid_pinpoints` set)
    its base view's plus its tiles' unpadded features with a newline per row (`mm.anyres`). Plain data, so
    data-loading workers get a copy instead of the model."""

    per_view: int
    """Projected features one view gives (the model's `tokens_per_image`)."""
    tile: int = 0
    """anyres: the tower's image size, the side of a view."""
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    """anyres: the (height, width) resolutions an image may be tiled at; None: one view per image."""
    max_tiles: int | None = None
    """anyres: LLaVA-OneVision's anyres_max_N."""

    def __post_init__(self):
        if self.grid_pinpoints is not None and math.isqrt(self.per_view) ** 2 != self.per_view:
            raise ValueError(f"{self.per_view} tokens per view are not a square grid: anyres needs one "
                             "(drop the prefix tokens: vision.keep_prefix_tokens false)")

    @property
    def varies(self) -> bool:
        """True when the count depends on the image's size."""
        return self.grid_pinpoints is not None

    def count(self, image_size: tuple[int, int]) -> int:
        """Placeholders of one image of `image_size` (height, width)."""
        if self.grid_pinpoints is None:
            return self.per_view
        height, width = (int(v) for v in image_size)
        return anyres_token_count((height, width), self.grid_pinpoints, self.tile, math.isqrt(self.per_view),
                                  self.max_tiles)

    def counts(self, image_sizes: Iterable) -> list[int]:
        """`count` of each (height, width) in `image_sizes` (pairs, or an (N, 2) tensor)."""
        return [self.count(tuple(size)) for size in image_sizes]
