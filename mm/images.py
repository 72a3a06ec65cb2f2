"""The one image decoder: bytes or a file -> RGB PIL image, for mm-prep, training and evaluation.

PIL's own ``convert("RGB")`` clips 16- and 32-bit integer images (16-bit grayscale PNGs and TIFFs,
modes ``I;16*`` and ``I``) at 255, so they turn almost white; here they are scaled to 8 bits as
PIL already does for 16-bit RGB(A) and gray+alpha PNGs (the high byte, ``value >> 8``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def to_8bit(image: Image.Image) -> Image.Image:
    """Wide integer grayscale -> 8-bit ``L`` by scaling (values above 16 bits saturate); other modes
    unchanged."""
    if image.mode not in WIDE_MODES:
        return image
    pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 0xFFFF) >> 8
    return Image.fromarray(pixels.astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, wide integer modes scaled (see ``to_8bit``)."""
    return to_8bit(image).convert("RGB")


def load_rgb(source: bytes | str | Path, needed_size: Callable[[tuple[int, int]], tuple[int, int]] | None = None) -> Image.Image:
    """Image bytes or a file -> RGB PIL image.

    ``needed_size(stored size)``: the smallest size the caller needs; JPEGs are then decoded in draft
    mode at the smallest DCT scale that still covers it (skipping most of the work for large photos).
    """
    image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
    if needed_size is not None and image.format == "JPEG":
        image.draft("RGB", needed_size(image.size))
    return to_rgb(image)
