import io

import numpy as np
import pytest
import torch
from PIL import Image

from mm.transforms import ImageTransform

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def photo(width=64, height=40, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def llava_expand2square_then_resize(image, background, size):
    """LLaVA-1.5's way: pad the short side with the mean colour, then a PIL bicubic resize."""
    side = max(image.size)
    square = Image.new("RGB", (side, side), background)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return torch.from_numpy(np.array(square.resize((size, size), Image.BICUBIC))).permute(2, 0, 1)


def smooth(width, height):
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1).astype(np.uint8))


def test_pad_is_llava_expand2square_with_mean_colour_then_resize():
    image = smooth(120, 60)
    transform = ImageTransform(48, CLIP_MEAN, CLIP_STD, mode="pad", draft=False)
    out = transform(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 48, 48)
    background = torch.tensor([int(c * 255) for c in CLIP_MEAN], dtype=torch.uint8)  # LLaVA truncates
    assert background.tolist() == [122, 116, 104]
    assert torch.equal(out[:, 0, 0], background) and torch.equal(out[:, -1, -1], background)
    reference = llava_expand2square_then_resize(image, transform.background, 48)
    assert (out.float() - reference.float()).abs().mean() < 1.0
    assert torch.equal(out[:, :10], reference[:, :10])  # the padding band, away from the bicubic blend


def test_crop_and_resize_modes_shapes_and_content():
    image = photo(80, 40)
    crop = ImageTransform(40, CLIP_MEAN, CLIP_STD, mode="crop", draft=False)(image)
    assert torch.equal(crop, torch.from_numpy(np.asarray(image)[:, 20:60].copy()).permute(2, 0, 1))
    wide = smooth(160, 80)
    crop = ImageTransform(40, CLIP_MEAN, CLIP_STD, mode="crop", draft=False)(wide)
    reference = torch.from_numpy(np.array(wide.resize((80, 40), Image.BICUBIC))[:, 20:60]).permute(2, 0, 1)
    assert (crop.float() - reference.float()).abs().mean() < 1.0
    resized = ImageTransform(16, CLIP_MEAN, CLIP_STD, mode="resize", draft=False)(image)
    assert resized.shape == (3, 16, 16)


def test_crop_truncates_the_long_side_as_transformers_does():
    # 100x60 -> short side 64, long side int(64 * 100 / 60) = 106 (round() would give 107), then crop.
    image = smooth(100, 60)
    crop = ImageTransform(64, CLIP_MEAN, CLIP_STD, mode="crop", draft=False)(image)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(pixels, size=(64, 106), mode="bicubic", antialias=True)[0]
    assert torch.equal(crop, resized[:, :, 21:85])


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="pad"):
        ImageTransform(16, CLIP_MEAN, CLIP_STD, mode="squash")


def test_normalize_matches_reference_formula():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    transform = ImageTransform(8, CLIP_MEAN, CLIP_STD)
    expected = (images.float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(transform.normalize(images), expected, atol=1e-6)
    assert transform.normalize(images, torch.bfloat16).dtype == torch.bfloat16


def jpeg_bytes(image, quality=95):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_draft_decoding_stays_close_to_full_decoding(mode):
    # A smooth picture: draft (DCT-domain) downscaling and full decode + bicubic agree closely.
    y, x = np.mgrid[0:480, 0:640]
    smooth = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], axis=-1).astype(np.uint8)
    data = jpeg_bytes(Image.fromarray(smooth))
    fast = ImageTransform(64, CLIP_MEAN, CLIP_STD, mode=mode, draft=True)
    exact = ImageTransform(64, CLIP_MEAN, CLIP_STD, mode=mode, draft=False)
    assert fast.open(data).size[0] < 640  # draft mode really decoded at a reduced scale
    difference = (fast.load(data).float() - exact.load(data).float()).abs().mean()
    assert difference < 3.0


def test_draft_never_decodes_below_target_size():
    data = jpeg_bytes(photo(640, 480))
    transform = ImageTransform(336, CLIP_MEAN, CLIP_STD, mode="crop", draft=True)
    assert min(transform.open(data).size) >= 336
    small = ImageTransform(100, CLIP_MEAN, CLIP_STD, mode="pad", draft=True)
    assert max(small.open(data).size) >= 100


def test_png_palette_and_alpha_images_become_rgb():
    palette = photo(20, 10).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    out = ImageTransform(16, CLIP_MEAN, CLIP_STD).load(buffer.getvalue())
    assert out.shape == (3, 16, 16)
    rgba = Image.new("RGBA", (10, 10), (10, 20, 30, 0))
    assert ImageTransform(16, CLIP_MEAN, CLIP_STD)(rgba).shape == (3, 16, 16)
