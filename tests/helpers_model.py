"""Small builders shared by the model tests (tiny models, prompts with image placeholders)."""

from __future__ import annotations

import torch

import mm
from mm.tiny import tiny_vlm_config


def tiny_model(vision: str = "hf_clip", llm: str = "llama", projector: str = "mlp2x_gelu", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return mm.build_vlm(tiny_vlm_config(vision, llm, projector, **kwargs)).eval()


def prompt_ids(model, text_before: list[int], num_images: int, text_after: list[int]) -> list[int]:
    """`<s> text_before [image placeholders]*num_images text_after` as token ids."""
    bos = model.tokenizer.bos_token_id
    images = [model.image_token_id] * (model.tokens_per_image * num_images)
    return [bos, *text_before, *images, *text_after]


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def text_ids(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False).input_ids
