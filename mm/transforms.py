"""Image preprocessing that a vision tower declares: decode, square it, resize; normalise on the device.

Workers hand uint8 tensors to the model (a quarter of the bytes of float32); ``normalize`` runs on the
batch where the model lives. JPEGs are decoded in draft mode at the smallest DCT scale that is still
at least the target size, which skips most of the decoding work for large photos.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODES = ("pad", "resize", "crop")


@dataclass(frozen=True)
class ImageTransform:
    """How images become model input."""

    image_size: int
    """Side of the square image the tower takes."""
    mean: tuple[float, float, float]
    """Per-channel mean of the tower's normalisation (0-1 scale)."""
    std: tuple[float, float, float]
    """Per-channel standard deviation of the tower's normalisation."""
    mode: str = "pad"
    """pad: LLaVA-1.5's expand-to-square with the mean colour, then resize; resize: stretch; crop: resize the short side, centre crop."""
    draft: bool = True
    """Decode JPEGs at a reduced DCT scale (never below the size needed)."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown image transform mode {self.mode!r}; valid modes: {list(MODES)}")

    def open(self, source: bytes | str | Path) -> Image.Image:
        """Decode image bytes or a file into RGB, in draft mode where that loses nothing we keep."""
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        if self.draft and image.format == "JPEG":
            image.draft("RGB", self._needed_size(image.size))
        return image.convert("RGB")

    def _needed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        width, height = size
        if self.mode == "resize":
            return self.image_size, self.image_size
        scale = self.image_size / (max(width, height) if self.mode == "pad" else min(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 tensor (3, image_size, image_size)."""
        image = image.convert("RGB")
        size = self.image_size
        if self.mode == "pad":
            image = expand_to_square(image, tuple(int(round(c * 255)) for c in self.mean))
            image = image.resize((size, size), Image.BICUBIC)
        elif self.mode == "resize":
            image = image.resize((size, size), Image.BICUBIC)
        else:
            width, height = image.size
            scale = size / min(width, height)
            image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()

    def load(self, source: bytes | str | Path) -> torch.Tensor:
        """Bytes or a file -> uint8 tensor (3, image_size, image_size)."""
        return self(self.open(source))

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (N, 3, S, S) on any device -> normalised ``dtype`` pixel values on the same device."""
        mean = torch.tensor(self.mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        return ((images.float() / 255.0 - mean) / std).to(dtype)


def expand_to_square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad the short side equally on both ends (LLaVA-1.5's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square
