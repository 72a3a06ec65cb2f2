"""mm.anyres equals transformers' LLaVA-NeXT and LLaVA-OneVision on tiny inputs: best resolution, tile grid,
pixels of every view (the default image processor), placeholder counts (the processors' prompt expansion),
unpadding, and the packed feature order (the models' pack_image_features), bit for bit."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.llava_next import modeling_llava_next as hf_next

from mm.anyres import (
    anyres_grid,
    anyres_token_count,
    anyres_views,
    pack_anyres_features,
    pooled_shape,
    select_best_resolution,
    unpadded_shape,
)
from mm.tiny import TOKENIZER_DIR

PINS_32 = [[32, 32], [32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]
PINS_16 = [[16, 16], [16, 32], [32, 16], [32, 32], [16, 48], [48, 16]]
LLAVA_NEXT_PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6's own
# wider and taller than their pinpoint (rows, then columns cropped), exact fits, odd sides, extreme aspect ratios,
# smaller than a tile and larger than every pinpoint
SIZES = [(37, 53), (53, 37), (20, 90), (90, 20), (33, 97), (97, 33), (64, 64), (32, 32), (17, 16), (5, 120),
         (120, 5), (200, 150), (31, 33), (1, 1), (3, 2), (45, 80)]
TILINGS = [(32, PINS_32), (16, PINS_16)]  # (tile, pinpoints)


def photo(size, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def pixels_of(image):
    """What mm's transforms hand to anyres_views: a channels-first view of the decoded array."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def test_select_best_resolution_equals_transformers():
    from transformers.image_processing_utils import select_best_resolution as theirs

    pinpoint_sets = [PINS_32, PINS_32[::-1], PINS_16, [[32, 64], [64, 32]], [[64, 32], [32, 64]]]
    sizes = list(itertools.product(range(1, 200, 7), range(1, 200, 11))) + SIZES
    for pins, size in itertools.product(pinpoint_sets, sizes):
        assert select_best_resolution(size, pins) == tuple(theirs(size, pins)), (size, pins)
    for size in itertools.product(range(100, 2400, 97), range(100, 2400, 131)):
        assert select_best_resolution(size, LLAVA_NEXT_PINS) == tuple(theirs(size, LLAVA_NEXT_PINS)), size


def test_grid_equals_transformers_and_refuses_partial_tiles():
    for (tile, pins), size in itertools.product(TILINGS, SIZES):
        rows, cols = anyres_grid(size, pins, tile)
        assert (rows, cols) == tuple(hf_next.get_anyres_image_grid_shape(size, pins, tile))
        assert 1 + rows * cols == hf_next.image_size_to_num_patches(size, pins, tile)
    with pytest.raises(ValueError, match="not a multiple of the tile side 32"):
        anyres_grid((40, 40), [[48, 48]], 32)


@functools.cache
def llava_next_image_processor(tile: int, pins_key: tuple):
    """The image processor as transformers 5 loads a saved one by default (AutoImageProcessor: the torchvision
    backend), without rescale and normalisation, so its pixel values are the resized uint8 levels themselves."""
    import tempfile

    from transformers import AutoImageProcessor, LlavaNextImageProcessor
    from transformers.image_processing_backends import TorchvisionBackend

    saved = LlavaNextImageProcessor(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=list(pins_key),
        do_rescale=False, do_normalize=False, resample=3,  # bicubic, LLaVA-NeXT's and mm's
    )
    with tempfile.TemporaryDirectory() as directory:
        saved.save_pretrained(directory)
        loaded = AutoImageProcessor.from_pretrained(directory)
    assert isinstance(loaded, TorchvisionBackend), type(loaded)
    return loaded


def _key(pins):
    return tuple(tuple(pin) for pin in pins)


@pytest.mark.parametrize("tile,pins", TILINGS, ids=["tile32", "tile16"])
def test_views_equal_llava_next_image_processor(tile, pins):
    processor = llava_next_image_processor(tile, _key(pins))
    for seed, size in enumerate(SIZES):
        image = photo(size, seed)
        theirs = processor(image, return_tensors="pt")["pixel_values"][0]
        ours = anyres_views(pixels_of(image), tile, pins)
        assert ours.dtype == torch.uint8 and ours.shape == (1 + np.prod(anyres_grid(size, pins, tile)), 3, tile, tile)
        assert torch.equal(ours, theirs.to(torch.uint8)) and torch.equal(ours.float(), theirs.float()), size


def test_views_pad_with_black_around_the_fitted_image():
    ours = anyres_views(torch.full((3, 20, 90), 200, dtype=torch.uint8), 32, PINS_32)  # best fit 32x96, 3 tiles
    canvas = torch.cat(list(ours[1:]), dim=2)  # 32x96: the image scaled to 22x96, 5 rows above and below
    assert canvas[:, :5].eq(0).all() and canvas[:, 27:].eq(0).all() and canvas[:, 5:27].eq(200).all()


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)  # carries <image> as a special token


def placeholders(processor, image) -> int:
    ids = processor(images=image, text="<image>", return_tensors="pt")["input_ids"]
    return int((ids == processor.image_token_id).sum())


# feature_side 4: the tower's 8px patches of a 32px tile; 2: the same after pixel_shuffle2x_mlp; 8: 4px patches
@pytest.mark.parametrize("tile,pins,feature_side", [(32, PINS_32, 4), (32, PINS_32, 2), (32, PINS_32, 8),
                                                    (16, PINS_16, 4)])
def test_token_count_equals_llava_next_processor(tile, pins, feature_side):
    from transformers import LlavaNextProcessor

    processor = LlavaNextProcessor(
        image_processor=llava_next_image_processor(tile, _key(pins)), tokenizer=tokenizer(),
        patch_size=tile // feature_side, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    for size in SIZES:
        assert anyres_token_count(size, pins, tile, feature_side) == placeholders(processor, photo(size)), size


def test_unpadded_shape_equals_unpad_image():
    cropped_rows = cropped_cols = 0
    for size, grid, side in itertools.product(
        itertools.product(range(1, 120, 5), range(1, 120, 9)), [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1)],
        [2, 3, 4, 24],
    ):
        theirs = tuple(hf_next.unpad_image(torch.empty(0, grid[0] * side, grid[1] * side), size).shape[1:])
        assert unpadded_shape(size, grid, side) == theirs, (size, grid, side)
        cropped_rows += theirs[0] < grid[0] * side
        cropped_cols += theirs[1] < grid[1] * side
    assert cropped_rows and cropped_cols


def tiny_configs(tile: int, feature_side: int):
    """A one-layer CLIP tower whose patches make a feature_side grid per tile, and a tiny LLM of width 8."""
    from transformers import CLIPVisionConfig, Qwen2Config

    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                              image_size=tile, patch_size=tile // feature_side)
    text = Qwen2Config(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64)
    return vision, text


@functools.cache
def llava_next_model(tile: int, feature_side: int, pins_key: tuple):
    from transformers import LlavaNextConfig, LlavaNextModel

    vision, text = tiny_configs(tile, feature_side)
    return LlavaNextModel(LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=list(pins_key)))


@functools.cache
def llava_onevision_model(tile: int, feature_side: int, pins_key: tuple):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionModel

    vision, text = tiny_configs(tile, feature_side)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_grid_pinpoints=list(pins_key))
    return LlavaOnevisionModel(config)


def random_features(size, pins, tile, feature_side, seed):
    rows, cols = anyres_grid(size, pins, tile)
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(1 + rows * cols, feature_side**2, 8, generator=generator)
    return features, torch.randn(8, generator=generator)


@pytest.mark.parametrize("tile,pins,feature_side", [(32, PINS_32, 4), (32, PINS_32, 2), (16, PINS_16, 4)])
def test_pack_equals_llava_next_pack_image_features(tile, pins, feature_side):
    model = llava_next_model(tile, feature_side, _key(pins))
    for seed, size in enumerate(SIZES):
        features, newline = random_features(size, pins, tile, feature_side, seed)
        (theirs,), _ = model.pack_image_features([features], torch.tensor([size]), "default", image_newline=newline)
        ours = pack_anyres_features(features, size, pins, tile, newline)
        assert ours.shape == (anyres_token_count(size, pins, tile, feature_side), 8)
        assert torch.equal(ours, theirs), size


def test_pack_refuses_features_of_another_grid():
    features, newline = random_features((20, 90), PINS_32, 32, 4, 0)  # 1 + 1x3 views
    with pytest.raises(ValueError, match="not 1 \\+ 2x2 views"):
        pack_anyres_features(features, (64, 64), PINS_32, 32, newline)


# (max_tiles, feature_side); with 8 features a side some images exceed N tiles' worth by less than 1.1x a side
@pytest.mark.parametrize("max_tiles,side", [(1, 4), (2, 4), (3, 4), (9, 4), (2, 8), (3, 8)])
def test_pooled_pack_and_count_equal_llava_onevision(max_tiles, side):
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tile, pins = 32, PINS_32
    model = llava_onevision_model(tile, side, _key(pins))
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": tile, "width": tile}, image_grid_pinpoints=pins),
        tokenizer=tokenizer(), video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=side**2,
        vision_feature_select_strategy="full", vision_aspect_ratio=f"anyres_max_{max_tiles}",
    )
    outcomes = set()
    for seed, size in enumerate(SIZES + [(14, 65), (33, 37)]):
        features, newline = random_features(size, pins, tile, side, seed)
        (theirs,), _ = model.pack_image_features([features], torch.tensor([size]), image_newline=newline,
                                                 vision_aspect_ratio=f"anyres_max_{max_tiles}")
        assert torch.equal(pack_anyres_features(features, size, pins, tile, newline, max_tiles), theirs), size
        count = anyres_token_count(size, pins, tile, side, max_tiles)
        assert count == len(theirs) == placeholders(processor, photo(size)), size
        height, width = unpadded_shape(size, anyres_grid(size, pins, tile), side)
        if pooled_shape(height, width, side, max_tiles) != (height, width):
            outcomes.add("pooled")
        elif height * width > max_tiles * side**2:
            outcomes.add("over N tiles, kept")
    assert ("pooled" in outcomes) == (max_tiles < 9)  # no image here has more than 4 tiles
    assert ("over N tiles, kept" in outcomes) == (side == 8)


def test_pooled_shape_cases():
    assert pooled_shape(8, 8, 4, None) == (8, 8)
    assert pooled_shape(8, 8, 4, 4) == (8, 8)  # exactly N tiles' worth
    assert pooled_shape(4, 9, 4, 2) == (4, 9)  # 1.125x the features: within 1.1x per side
    assert pooled_shape(4, 10, 4, 2) == (3, 8)  # 1.25x: ratio 1.118, sides divided by it and truncated
    assert pooled_shape(8, 8, 4, 1) == (4, 4)  # ratio 2
    assert pooled_shape(6, 8, 4, 1) == (3, 4)  # ratio sqrt(3): 6 // 1.73 = 3
