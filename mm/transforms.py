"""Image preprocessing that a vision tower declares: decode, square it, resize; normalise on the device.

Workers hand uint8 tensors to the model (a quarter of the bytes of float32); ``normalize`` runs on the
batch where the model lives. JPEGs are decoded in draft mode at the smallest DCT scale that is still
at least the target size, which skips most of the decoding work for large photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mm.anyres import anyres_views, resize_uint8
from mm.images import load_rgb, to_rgb

MODES = ("pad", "resize", "crop", "anyres")


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
    """pad: LLaVA-1.5's expand-to-square with the mean colour, then resize; resize: stretch; crop: resize the short side, centre crop; anyres: LLaVA-NeXT's base view + tiles."""
    draft: bool = True
    """Decode JPEGs at a reduced DCT scale (never below the size needed)."""
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    """anyres: the (height, width) resolutions an image may be tiled at."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown image transform mode {self.mode!r}; valid modes: {list(MODES)}")
        if (self.mode == "anyres") != bool(self.grid_pinpoints):
            raise ValueError("grid_pinpoints go with mode 'anyres', and anyres needs them")
        if self.grid_pinpoints is not None:  # hashable and comparable, whatever sequence was given
            object.__setattr__(self, "grid_pinpoints", tuple(tuple(int(v) for v in pair) for pair in self.grid_pinpoints))

    def open(self, source: bytes | str | Path) -> Image.Image:
        """Decode image bytes or a file into RGB (``mm.images.load_rgb``), in JPEG draft mode where
        that loses nothing we keep."""
        # anyres: no draft decoding, since the image's size picks its tiling and token count, which must be
        # the size every other reader (transformers' processor included) sees
        return load_rgb(source, self._needed_size if self.draft and self.mode != "anyres" else None)

    def _needed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        width, height = size
        if self.mode == "resize":
            return self.image_size, self.image_size
        scale = self.image_size / (max(width, height) if self.mode == "pad" else min(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image (made RGB by ``mm.images.to_rgb``) -> uint8 tensor (3, image_size, image_size)."""
        if self.mode == "anyres":
            raise ValueError("an anyres image is several views: use ImageTransform.views")
        return self.square(_pixels(image))

    def views(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 (V, 3, image_size, image_size): one view, or under anyres the base view and the
        tiles (``mm.anyres.anyres_views``). Batches concatenate the views of all their images."""
        if self.mode == "anyres":
            return anyres_views(_pixels(image), self.image_size, self.grid_pinpoints)
        return self(image).unsqueeze(0)

    def square(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> uint8 (3, image_size, image_size), by this transform's mode.

        Each mode computes exactly what transformers' LlavaImageProcessor (torchvision backend, the
        default) does with the settings ``mm.hf_processor`` exports, so an exported model sees the
        same pixels: antialiased bicubic on uint8 (torch's kernel, which torchvision uses on CPU);
        ``pad`` pads first, then resizes the square (LLaVA's expand2square); ``crop`` truncates the
        long side (``int(size * long / short)``) before the centre crop.
        """
        size = self.image_size
        _, height, width = pixels.shape
        if self.mode == "resize":
            return resize_uint8(pixels, size, size)
        if self.mode == "crop":
            short, long = min(width, height), max(width, height)
            long = int(size * long / short)  # transformers' (and CLIP's) rounding, not round()
            resized = resize_uint8(pixels, *((long, size) if width <= height else (size, long)))
            top, left = (resized.shape[1] - size) // 2, (resized.shape[2] - size) // 2
            return resized[:, top : top + size, left : left + size].contiguous()
        side = max(width, height)
        square = torch.empty((3, side, side), dtype=torch.uint8)
        square[:] = torch.tensor(self.background, dtype=torch.uint8).view(3, 1, 1)
        top, left = (side - height) // 2, (side - width) // 2
        square[:, top : top + height, left : left + width] = pixels
        return resize_uint8(square, size, size)

    @property
    def background(self) -> tuple[int, int, int]:
        """The mean colour in 0-255 levels, truncated as LLaVA-1.5 (``int(x * 255)``) and transformers pad."""
        return tuple(int(c * 255) for c in self.mean)

    def load(self, source: bytes | str | Path) -> torch.Tensor:
        """Bytes or a file -> uint8 tensor (3, image_size, image_size)."""
        return self(self.open(source))

    def load_views(self, source: bytes | str | Path) -> tuple[torch.Tensor, tuple[int, int]]:
        """Bytes or a file -> (``views``, the image's (height, width) as decoded)."""
        image = self.open(source)
        return self.views(image), (image.height, image.width)

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (N, 3, S, S) on any device -> normalised ``dtype`` pixel values on the same device."""
        mean = torch.tensor(self.mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one scale and one shift, in place on the float copy.
        return images.to(torch.float32).mul_(1.0 / (255.0 * std)).sub_(mean / std).to(dtype)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1)
