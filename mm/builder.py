"""`build_vlm`: a VisionLanguageModel from a VLMConfig."""

from __future__ import annotations

import math

import torch
from torch import nn

from mm.config import VLMConfig
from mm.llm import add_image_token, build_llm, load_tokenizer, tokenizer_source
from mm.model import VisionLanguageModel
from mm.projectors import build_projector
from mm.vision import build_vision_tower


def build_vlm(
    config: VLMConfig,
    *,
    load_weights: bool = True,
    tokenizer=None,
    trust_remote_code: bool = False,
) -> VisionLanguageModel:
    """Build tower, projector and LLM; the tower starts frozen, projector and LLM trainable.

    `load_weights=False` builds every part from its inline `model_config` (used when loading checkpoints).
    """
    vision_tower = build_vision_tower(config.vision, load_weights=load_weights)
    llm = build_llm(config.llm, load_weights=load_weights, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_source(config.llm), trust_remote_code=trust_remote_code,
                                   image_token=config.image_token)
    add_image_token(tokenizer, llm, config.image_token)
    llm_hidden = llm.config.get_text_config().hidden_size
    projector = build_projector(config.projector, vision_tower.hidden_size, llm_hidden, vision_tower.num_tokens)
    if config.image_transform == "anyres":
        # LLaVA-NeXT's learned row-end embedding; on the projector, so it trains, freezes and is saved with it
        projector.image_newline = nn.Parameter(torch.randn(llm_hidden) / math.sqrt(llm_hidden))
    model = VisionLanguageModel(config, vision_tower, projector, llm, tokenizer)
    model.set_trainable(vision=False, projector=True, llm=True)
    return model
