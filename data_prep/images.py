"""Image bytes: real format from the bytes, cheap validity checks, optional downscaling.

Conversion copies image bytes verbatim; this module only *looks* at them (header parse plus a
format-specific integrity check) unless a downscale is asked for.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from mm.images import load_rgb, to_8bit

# PIL format name -> member extension (what webdataset decoders key on).
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
CHECK_MODES = ("fast", "full")


class ImageError(ValueError):
    """The bytes are not a decodable image."""


@dataclass(frozen=True)
class CheckedImage:
    """Image bytes that passed the check, with what the header says about them."""

    data: bytes
    extension: str
    width: int
    height: int
    resized_from: tuple[int, int] | None = None


def _jpeg_scan_offset(data: bytes) -> int:
    """Offset of the first start-of-scan marker, walking the marker segments (not a byte search,
    so an EXIF thumbnail's markers are skipped)."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers carry no length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise ImageError("JPEG has no start-of-scan segment")


def _check_jpeg_complete(data: bytes) -> None:
    # Entropy-coded data stuffs every 0xFF with 0x00, so an end-of-image marker after the first
    # scan is only there if the file was not cut short.
    if data.rfind(b"\xff\xd9") < _jpeg_scan_offset(data):
        raise ImageError("JPEG is truncated (no end-of-image marker after the scan data)")


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def check_image(data: bytes, mode: str = "fast") -> CheckedImage:
    """Parse the header and check integrity; raise `ImageError` with the cause.

    `fast`: JPEG header + end-of-image marker after the scan, PNG chunk CRCs (`verify`), other
    formats fully decoded (they are rare). `full`: every image fully decoded. Decoding is
    `mm.images.load_rgb`, the decoder training and evaluation use.
    """
    if mode not in CHECK_MODES:
        raise ValueError(f"unknown check mode {mode!r}; valid: {', '.join(CHECK_MODES)}")
    try:
        image = _open(data)
        fmt, (width, height) = image.format, image.size
        if fmt not in _EXTENSIONS:
            raise ImageError(f"unsupported image format {fmt}")
        if mode == "full" or fmt not in ("JPEG", "MPO", "PNG"):
            load_rgb(data)  # decoded exactly as training and evaluation decode it
        elif fmt == "PNG":
            image.verify()
        else:
            _check_jpeg_complete(data)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image in a format Pillow recognises") from None
    except Exception as error:  # PIL raises many types for bad bytes; all mean "undecodable"
        raise ImageError(f"{type(error).__name__}: {error}") from None
    if width <= 0 or height <= 0:
        raise ImageError(f"image has an empty size {width}x{height}")
    return CheckedImage(data, _EXTENSIONS[fmt], width, height)


def downscale(checked: CheckedImage, max_side: int) -> CheckedImage:
    """Re-encode an image whose longer side exceeds `max_side` (aspect kept); others unchanged.

    JPEG stays JPEG (quality 95, EXIF and ICC profile kept so orientation still applies); other
    formats become 8-bit PNG (16-bit grayscale scaled to 8 bits, as `mm.images` decodes it).
    """
    if max(checked.width, checked.height) <= max_side:
        return checked
    scale = max_side / max(checked.width, checked.height)
    size = (max(1, round(checked.width * scale)), max(1, round(checked.height * scale)))
    try:
        image = _open(checked.data)
        info = image.info
        image.load()
        if checked.extension == "jpg":
            image = image if image.mode in ("RGB", "L", "CMYK") else image.convert("RGB")
            fmt, extension, options = "JPEG", "jpg", {"quality": 95, "exif": info.get("exif", b"")}
        else:  # 16-bit grayscale scaled to 8 bits as training decodes it (mm.images), not clipped
            image = to_8bit(image)
            image = image if image.mode in ("RGB", "RGBA", "L", "LA") else image.convert("RGBA")
            fmt, extension, options = "PNG", "png", {}
        if info.get("icc_profile"):
            options["icc_profile"] = info["icc_profile"]
        out = io.BytesIO()
        image.resize(size, Image.Resampling.LANCZOS).save(out, fmt, **options)
    except Exception as error:
        raise ImageError(f"re-encoding failed: {type(error).__name__}: {error}") from None
    return CheckedImage(out.getvalue(), extension, size[0], size[1], (checked.width, checked.height))
