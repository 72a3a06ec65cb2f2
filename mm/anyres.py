"""LLaVA-NeXT "anyres" arithmetic: tiling an image, and laying the tiles' features out as tokens.

An image is seen twice: squashed whole into one tile-sized "base" view, and cut into tiles of the grid
resolution ("pinpoint") that fits it best. The tiles' features are reassembled into one feature map, cropped
back to the image's aspect ratio (the padding carries no content), optionally pooled (LLaVA-OneVision's
anyres_max_N), and a learned newline vector ends each row. Every image thus has its own token count.

Pure functions of sizes and tensors; tests/test_anyres.py checks each one against transformers' LLaVA-NeXT
(processor, image processor, model) and LLaVA-OneVision, which are the reference: any rounding here is
theirs, so that an exported model sees the same pixels and the same number of placeholders.
Sizes are (height, width) everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Size = tuple[int, int]


def resize_uint8(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, height, width): antialiased bicubic through torch's uint8 kernel, the one
    torchvision (and so transformers' default image processors) resizes with on CPU."""
    if pixels.shape[1:] == (height, width):
        return pixels.contiguous()
    return F.interpolate(pixels.unsqueeze(0), size=(height, width), mode="bicubic", antialias=True)[0]


def select_best_resolution(image_size: Size, pinpoints: Sequence[Sequence[int]]) -> Size:
    """The pinpoint that keeps the most of the image's pixels once it is scaled to fit, then the one that wastes
    the fewest; the first listed wins a tie."""
    height, width = image_size
    best, best_key = None, None
    for pin_height, pin_width in pinpoints:
        scale = min(pin_width / width, pin_height / height)
        # int() truncation and the cap at the original size (no credit for upscaling) are LLaVA-NeXT's rule
        kept = min(int(width * scale) * int(height * scale), width * height)
        key = (kept, -(pin_height * pin_width - kept))
        if best_key is None or key > best_key:
            best, best_key = (int(pin_height), int(pin_width)), key
    if best is None:
        raise ValueError("anyres needs at least one grid pinpoint")
    return best


def anyres_grid(image_size: Size, pinpoints: Sequence[Sequence[int]], tile: int) -> Size:
    """(rows, cols) of `tile`-sided tiles covering the image's best resolution."""
    pin_height, pin_width = select_best_resolution(image_size, pinpoints)
    if pin_height % tile or pin_width % tile:
        # transformers' processor would emit a partial last tile that its model's grid arithmetic ignores
        raise ValueError(f"grid pinpoint {[pin_height, pin_width]} is not a multiple of the tile side {tile}")
    return pin_height // tile, pin_width // tile


def fitted_size(image_size: Size, target: Size) -> Size:
    """The image scaled to fit inside `target` keeping its aspect ratio; the scaled side rounds up (never past
    the target), as LLaVA-NeXT's processor does before padding."""
    height, width = image_size
    target_height, target_width = target
    scale_width, scale_height = target_width / width, target_height / height
    if scale_width < scale_height:
        return min(math.ceil(height * scale_width), target_height), target_width
    return target_height, min(math.ceil(width * scale_height), target_width)


def anyres_views(pixels: torch.Tensor, tile: int, pinpoints: Sequence[Sequence[int]]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (1 + rows*cols, 3, tile, tile): the whole image stretched to one tile, then the
    tiles (row-major) of the image fitted into its best resolution and centred on black."""
    _, height, width = pixels.shape
    target = select_best_resolution((height, width), pinpoints)
    rows, cols = anyres_grid((height, width), pinpoints, tile)
    fit_height, fit_width = fitted_size((height, width), target)
    # black, not the mean colour: transformers pads with 0 here (LLaVA-1.5's square padding used the mean)
    canvas = torch.zeros((3, *target), dtype=torch.uint8)
    top, left = (target[0] - fit_height) // 2, (target[1] - fit_width) // 2  # the odd pixel goes bottom/right
    canvas[:, top : top + fit_height, left : left + fit_width] = resize_uint8(pixels, fit_height, fit_width)
    tiles = canvas.view(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
    return torch.cat([resize_uint8(pixels, tile, tile).unsqueeze(0), tiles])


def unpadded_shape(image_size: Size, grid_shape: Size, feature_side: int) -> Size:
    """(height, width) of the tiles' feature map after cropping the rows or columns that only saw padding."""
    height, width = image_size
    grid_height, grid_width = grid_shape[0] * feature_side, grid_shape[1] * feature_side
    # the same float expressions and 7-digit rounding as transformers, so borderline sizes agree
    if width / height > grid_width / grid_height:
        content = int(round(height * (grid_width / width), 7))
        return grid_height - (grid_height - content) // 2 * 2, grid_width
    content = int(round(width * (grid_height / height), 7))
    return grid_height, grid_width - (grid_width - content) // 2 * 2


def pooled_shape(height: int, width: int, feature_side: int, max_tiles: int | None) -> Size:
    """(height, width) after LLaVA-OneVision's anyres_max_N downscale: only beyond 1.1x (per side) of N tiles'
    worth of features, by the same factor on both sides, truncated."""
    if max_tiles is None:
        return height, width
    ratio = math.sqrt(height * width / (max_tiles * feature_side**2))
    if ratio > 1.1:
        return int(height // ratio), int(width // ratio)
    return height, width


def _tile_feature_shape(image_size: Size, pinpoints, tile: int, feature_side: int, max_tiles: int | None) -> Size:
    grid = anyres_grid(image_size, pinpoints, tile)
    return pooled_shape(*unpadded_shape(image_size, grid, feature_side), feature_side, max_tiles)


def anyres_token_count(image_size: Size, pinpoints: Sequence[Sequence[int]], tile: int, feature_side: int,
                       max_tiles: int | None = None) -> int:
    """Placeholder tokens of one image: the base view's features, then the tile features with a newline per
    row. `feature_side` is the projector's output grid side (the tower's patches per side, or half that after
    a 2x pixel shuffle)."""
    height, width = _tile_feature_shape(image_size, pinpoints, tile, feature_side, max_tiles)
    return feature_side**2 + height * (width + 1)


def pack_anyres_features(features: torch.Tensor, image_size: Size, pinpoints: Sequence[Sequence[int]], tile: int,
                         newline: torch.Tensor, max_tiles: int | None = None) -> torch.Tensor:
    """(1 + rows*cols, feature_side**2, D) projected features of `anyres_views`' views -> (anyres_token_count, D):
    base view first, then the tile features as one map, cropped, pooled, a newline after each row."""
    views, per_view, dim = features.shape
    side = math.isqrt(per_view)
    rows, cols = anyres_grid(image_size, pinpoints, tile)
    if side * side != per_view or views != 1 + rows * cols:
        raise ValueError(f"features {tuple(features.shape)} are not 1 + {rows}x{cols} views of a square grid "
                         f"for an image of {tuple(image_size)}")
    # channels first, as transformers lays it out, so the bilinear pooling below runs the same kernel
    grid = features[1:].view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3).reshape(dim, rows * side, cols * side)
    height, width = unpadded_shape(image_size, (rows, cols), side)
    top, left = (rows * side - height) // 2, (cols * side - width) // 2
    grid = grid[:, top : top + height, left : left + width]
    pooled = pooled_shape(height, width, side, max_tiles)
    if pooled != (height, width):
        grid = F.interpolate(grid.unsqueeze(0), size=pooled, mode="bilinear")[0]
    ends = newline.to(grid.device, grid.dtype).view(dim, 1, 1).expand(dim, pooled[0], 1)
    tokens = torch.cat([grid, ends], dim=2).flatten(1, 2).transpose(0, 1)
    return torch.cat([features[0], tokens])
