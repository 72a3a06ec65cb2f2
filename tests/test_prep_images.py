"""Image checks: real format from bytes, truncation caught without a full decode, downscaling; 16-bit images."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
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


# 16-bit images: a horizontal gradient whose 8-bit value is the column (16-bit value column * 257).
GRADIENT = np.tile(np.arange(256) * 257, (256, 1))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def gray_alpha_16bit_png() -> bytes:
    """PIL cannot write 16-bit gray+alpha, so the PNG is assembled by hand (colour type 4, depth 16)."""
    pixels = np.stack([GRADIENT, np.full_like(GRADIENT, 0xFFFF)], axis=-1).astype(">u2")
    rows = b"".join(b"\0" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", 256, 256, 16, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))  # fmt: skip


def wide_images() -> dict[str, bytes]:
    images = {"gray_alpha16.png": gray_alpha_16bit_png()}
    for name, fmt, image in [("gray16.png", "PNG", Image.frombytes("I;16", (256, 256), GRADIENT.astype("<u2").tobytes())),
                             ("gray16b.tiff", "TIFF", Image.frombytes("I;16B", (256, 256), GRADIENT.astype(">u2").tobytes())),
                             ("gray32.tiff", "TIFF", Image.fromarray(GRADIENT.astype(np.int32)))]:  # fmt: skip
        out = io.BytesIO()
        image.save(out, fmt)
        images[name] = out.getvalue()
    return images


def assert_gradient(rgb: np.ndarray, step: int = 1, tolerance: int = 0) -> None:
    """(H, W, 3) uint8 whose every row and channel is the 8-bit gradient (sampled every `step` columns)."""
    expected = np.arange(rgb.shape[1]) * step + (step - 1) / 2
    assert np.abs(rgb.astype(float) - expected[None, :, None]).max() <= tolerance + (step - 1) / 2


def test_16_bit_images_scale_to_8_bits_in_prep_training_and_eval(tmp_path):
    """PIL's convert('RGB') clips 16-bit values at 255 (a white image); every decoder scales them."""
    from types import SimpleNamespace

    import torch

    from data_prep.cli import main
    from data_prep.inspect_shards import iter_samples
    from eval.runner import GenerationSettings, Generator
    from eval.tasks.base import Question
    from mm.data.samples import SampleDecoder
    from mm.transforms import ImageTransform

    images = wide_images()
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    transform = ImageTransform(256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), mode="resize")
    decoder = SampleDecoder(tokenizer=None, template="plain", image_tokens=1, image_transform=transform)
    stub_model = SimpleNamespace(tokenizer=SimpleNamespace(eos_token_id=2, pad_token_id=0), image_transform_config=transform)
    generator = Generator(stub_model, GenerationSettings(), torch.float32)
    for name, data in images.items():  # training, then evaluation
        picture = decoder._open({"img0.png": data}, "img0.png", name)
        assert_gradient(decoder._views(picture, "img0.png", name)[0].permute(1, 2, 0).numpy())
        question = Question(question_id=name, prompt="?", images=(tmp_path / name,))
        assert_gradient(generator.load_images([question]).views[0].permute(1, 2, 0).numpy())

    records = [{"id": name, "image": name, "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}]}
               for name in images]  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    argv = ["llava", "--annotations", str(tmp_path / "data.json"), "--image-root", str(tmp_path), "--out", str(out),
            "--max-image-side", "128", "--check", "full", "--workers", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    stored = {sample.record["id"]: sample.images[0] for sample in iter_samples(out)}
    assert sorted(stored) == sorted(images)  # none rejected ("cannot write mode I as PNG" before)
    for data in stored.values():  # re-encoded at half size as 8-bit: any decoder reads the right values
        assert_gradient(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), step=2, tolerance=2)
