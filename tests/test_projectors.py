"""Projectors: shapes, the token count each declares, the 2x2 pixel-shuffle order, errors."""

import pytest
import torch
from torch import nn

from mm.config import ProjectorConfig
from mm.projectors import PROJECTORS, build_projector
from mm.tiny import tiny_vlm_config


@pytest.mark.parametrize(
    "kind, tokens_out, params",
    [
        ("linear", 64, 32 * 48 + 48),
        ("mlp2x_gelu", 64, (32 * 48 + 48) + (48 * 48 + 48)),
        ("pixel_shuffle2x_mlp", 16, (128 * 48 + 48) + (48 * 48 + 48)),
    ],
)
def test_shapes_and_declared_token_counts(kind, tokens_out, params):
    projector = build_projector(ProjectorConfig(kind=kind), vision_hidden=32, llm_hidden=48)
    out = projector(torch.randn(3, 64, 32))
    assert out.shape == (3, tokens_out, 48)
    assert projector.num_output_tokens(64) == tokens_out
    assert sum(p.numel() for p in projector.parameters()) == params


def test_pixel_shuffle_merges_each_2x2_block_in_row_major_order():
    projector = build_projector(ProjectorConfig(kind="pixel_shuffle2x_mlp"), vision_hidden=1, llm_hidden=4)
    projector.mlp = nn.Identity()  # look at the merge itself
    grid = torch.arange(16.0).view(1, 16, 1)  # a 4x4 patch grid, value = patch index
    merged = projector(grid)[0].tolist()
    assert merged == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_mlp2x_gelu_is_linear_gelu_linear():
    projector = build_projector(ProjectorConfig(kind="mlp2x_gelu"), vision_hidden=4, llm_hidden=3)
    x = torch.randn(2, 5, 4)
    expected = projector.linear_2(torch.nn.functional.gelu(projector.linear_1(x)))
    torch.testing.assert_close(projector(x), expected)


def test_bias_can_be_disabled():
    projector = build_projector(ProjectorConfig(kind="mlp2x_gelu", bias=False), vision_hidden=4, llm_hidden=3)
    assert projector.linear_1.bias is None and projector.linear_2.bias is None


def test_pixel_shuffle_pads_an_odd_grid_with_zeros_at_the_bottom_right():
    projector = build_projector(ProjectorConfig(kind="pixel_shuffle2x_mlp"), vision_hidden=1, llm_hidden=4)
    projector.mlp = nn.Identity()
    grid = torch.arange(1.0, 10.0).view(1, 9, 1)  # a 3x3 grid, values 1..9 (0 = padding)
    assert projector(grid)[0].tolist() == [[1, 2, 4, 5], [3, 0, 6, 0], [7, 8, 0, 0], [9, 0, 0, 0]]
    assert projector.num_output_tokens(9) == 4
    assert projector.num_output_tokens(27 * 27) == 14 * 14  # SigLIP-so400m/14 at 384 px


def test_pixel_shuffle_rejects_grids_it_cannot_merge():
    projector = build_projector(ProjectorConfig(kind="pixel_shuffle2x_mlp"), vision_hidden=8, llm_hidden=8)
    for tokens in (65, 50):  # CLS kept, not square
        with pytest.raises(ValueError, match="square patch grid"):
            projector.num_output_tokens(tokens)
    with pytest.raises(ValueError, match="keep_prefix_tokens=False"):
        projector(torch.randn(1, 65, 8))


def test_pixel_shuffle_with_a_kept_cls_token_fails_at_build_time():
    import mm

    config = tiny_vlm_config(projector="pixel_shuffle2x_mlp")
    config.vision.keep_prefix_tokens = True
    with pytest.raises(ValueError, match="got 65 tokens"):
        mm.build_vlm(config)


def test_unknown_projector_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown projector 'mlp3x'; valid names: \['linear', 'mlp2x_gelu', 'pixel_shuffle2x_mlp'\]"):
        build_projector(ProjectorConfig(kind="mlp3x"), 4, 4)
    assert sorted(PROJECTORS) == ["linear", "mlp2x_gelu", "pixel_shuffle2x_mlp"]


def test_grid_position_adds_one_row_and_one_column_vector_to_each_token():
    config = ProjectorConfig(kind="pixel_shuffle2x_mlp", grid_position=True)
    projector = build_projector(config, vision_hidden=8, llm_hidden=6, num_input_tokens=64)  # 8x8 -> 4x4 tokens
    features = torch.randn(2, 64, 8)
    plain = projector.inner(features)
    added = projector(features) - plain
    rows, columns = projector.grid_position.rows, projector.grid_position.columns
    assert rows.shape == columns.shape == (4, 6)
    for token in range(16):
        row, column = divmod(token, 4)  # tokens in reading order
        torch.testing.assert_close(added[:, token], (rows[row] + columns[column]).expand(2, 6))
    assert projector.num_output_tokens(64) == 16
    assert sum(p.numel() for p in projector.parameters()) == sum(p.numel() for p in projector.inner.parameters()) + 48


def test_grid_position_needs_a_square_token_grid_and_its_own_size():
    config = ProjectorConfig(kind="mlp2x_gelu", grid_position=True)
    with pytest.raises(ValueError, match="square grid of image tokens"):
        build_projector(config, vision_hidden=4, llm_hidden=4, num_input_tokens=65)
    with pytest.raises(ValueError, match="tokens per view"):
        build_projector(config, vision_hidden=4, llm_hidden=4)
    projector = build_projector(config, vision_hidden=4, llm_hidden=4, num_input_tokens=16)
    with pytest.raises(ValueError, match="built for 4x4 tokens; got 9"):
        projector(torch.randn(1, 9, 4))


def test_grid_position_trains_saves_and_loads_with_the_model(tmp_path):
    import mm

    config = tiny_vlm_config(projector="pixel_shuffle2x_mlp")
    config.projector.grid_position = True
    model = mm.build_vlm(config)
    assert model.projector.grid_position.rows.requires_grad
    model.save_pretrained(tmp_path / "export")
    loaded = mm.load_pretrained(tmp_path / "export")
    torch.testing.assert_close(loaded.projector.grid_position.columns, model.projector.grid_position.columns)
    pixels = torch.rand(1, 3, model.vision_tower.image_size, model.vision_tower.image_size)
    torch.testing.assert_close(loaded.encode_images(pixels), model.encode_images(pixels))
