"""Image checks: real format from bytes, truncation caught without a full decode, downscaling."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from data_prep.images import ImageError, check_image, downscale


def encode(fmt: str, size=(48, 32), mode="RGB", **options) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert(mode).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "extension"), [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp")])
def test_format_and_size_come_from_the_bytes(fmt, extension):
    checked = check_image(encode(fmt))
    assert (checked.extension, checked.width, checked.height) == (extension, 48, 32)
    assert checked.resized_from is None


@pytest.mark.parametrize("mode", ["fast", "full"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_images_are_rejected(fmt, mode):
    data = encode(fmt, (64, 64))
    with pytest.raises(ImageError):
        check_image(data[: len(data) * 2 // 3], mode)


def test_jpeg_with_markers_in_metadata_and_trailing_bytes_is_accepted():
    plain = encode("JPEG")
    comment = b"\xff\xd9 fake end marker inside a comment"
    data = plain[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + plain[2:]
    assert check_image(data + b"\x00" * 16).extension == "jpg"  # padding after the end marker is common
    cut = data[:-30]  # the metadata's fake end marker must not hide the truncation
    assert b"\xff\xd9" in cut
    with pytest.raises(ImageError, match="truncated"):
        check_image(cut)


@pytest.mark.parametrize("data", [b"", b"hello world", b"\xff\xd8\xff\xe0garbage", b"\x89PNG\r\n\x1a\nxx"])
def test_garbage_is_rejected_with_a_clear_message(data):
    with pytest.raises(ImageError) as error:
        check_image(data)
    assert "0x" not in str(error.value)  # no object addresses: rejected.jsonl must be reproducible


def test_unknown_check_mode():
    with pytest.raises(ValueError, match="valid: fast, full"):
        check_image(encode("PNG"), "thorough")


def test_downscale_keeps_aspect_format_and_exif():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the pixels stay as stored, so the tag must survive
    big = check_image(encode("JPEG", (300, 150), exif=exif.tobytes()))
    small = downscale(big, 100)
    assert (small.width, small.height, small.resized_from, small.extension) == (100, 50, (300, 150), "jpg")
    reopened = Image.open(io.BytesIO(small.data))
    assert reopened.size == (100, 50) and reopened.getexif()[0x0112] == 6
    palette = downscale(check_image(encode("GIF", (80, 40), mode="P")), 40)
    assert (palette.extension, palette.width, palette.height) == ("png", 40, 20)
    assert downscale(big, 300) is big  # not larger than the limit: untouched
