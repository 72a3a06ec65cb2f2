"""open_clip ViT towers: by model name + pretrained tag, a local weights file, or a model-config JSON.

The patch tokens of an intermediate block are used, not the pooled/projected embedding.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from mm.config import VisionTowerConfig
from mm.files import load_weights_file, read_json
from mm.vision.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, VisionTower


class OpenCLIPVisionTower(VisionTower):
    num_prefix_tokens = 1  # open_clip ViTs always carry a class token

    def __init__(self, config: VisionTowerConfig, *, load_weights: bool = True) -> None:
        super().__init__()
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        self.config = config
        if load_weights and config.pretrained:
            _check_pretrained(config)
        model_config = _model_config(config)
        self.visual = _build_visual(model_config)
        if not isinstance(self.visual, VisionTransformer):
            raise ValueError(
                f"open_clip tower {config.name_or_path!r} is a {type(self.visual).__name__}; "
                "only open_clip VisionTransformer towers have patch tokens to use"
            )
        self.model_config = model_config
        if load_weights and config.pretrained:
            self._load_pretrained(config.pretrained)
        self.hidden_size = self.visual.transformer.width
        self.image_size = _as_int(self.visual.image_size)
        self.patch_size = _as_int(self.visual.patch_size)
        self.num_layers = len(self.visual.transformer.resblocks)
        self.block_class = ResidualAttentionBlock
        self._check_select_layer()
        if self.config.select_layer == 0 or self.config.select_layer == -(self.num_layers + 1):
            raise ValueError("open_clip towers expose block outputs only; select_layer must not be the embeddings")
        self._resolve_normalisation(
            getattr(self.visual, "image_mean", None) or OPENAI_CLIP_MEAN,
            getattr(self.visual, "image_std", None) or OPENAI_CLIP_STD,
        )

    def hidden_states_at(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        block_index = (layer % (self.num_layers + 1)) - 1  # hidden state k is the output of block k-1
        out = self.visual.forward_intermediates(
            pixel_values,
            indices=[block_index],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        patches = out["image_intermediates"][0]
        prefix = out["image_intermediates_prefix"][0]
        return torch.cat([prefix, patches], dim=1)

    def gradient_checkpointing_enable(self) -> None:
        self.visual.set_grad_checkpointing(True)

    def resolved_config(self) -> VisionTowerConfig:
        return dataclasses.replace(
            self.config, model_config=self.model_config, image_mean=self.image_mean, image_std=self.image_std
        )

    def _load_pretrained(self, pretrained: str) -> None:
        if os.path.isfile(pretrained):
            state = load_weights_file(pretrained)
            if any(k.startswith("visual.") for k in state):  # a whole CLIP checkpoint
                state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
            self.visual.load_state_dict(state, strict=True)
            return
        import open_clip

        clip = open_clip.create_model(self.config.name_or_path, pretrained=pretrained, weights_only=True)
        self.visual.load_state_dict(clip.visual.state_dict(), strict=True)
        self.visual.image_mean = getattr(clip.visual, "image_mean", None)
        self.visual.image_std = getattr(clip.visual, "image_std", None)


def _check_pretrained(config: VisionTowerConfig) -> None:
    import open_clip

    if os.path.isfile(config.pretrained):
        return
    if not open_clip.get_pretrained_cfg(config.name_or_path, config.pretrained):
        raise ValueError(
            f"pretrained={config.pretrained!r} is neither a file nor a known tag of {config.name_or_path!r}; "
            f"known tags: {open_clip.list_pretrained_tags_by_model(config.name_or_path)}"
        )


def _model_config(config: VisionTowerConfig) -> dict:
    """The open_clip model config (`embed_dim`, `vision_cfg`, ...) from inline, JSON file or model name."""
    if config.model_config is not None:
        return config.model_config
    if config.name_or_path.endswith(".json"):
        return read_json(config.name_or_path)
    import open_clip

    model_config = open_clip.get_model_config(config.name_or_path)
    if model_config is None:
        raise ValueError(
            f"unknown open_clip model {config.name_or_path!r}; pass a model-config JSON path or one of "
            f"{open_clip.list_models()}"
        )
    return model_config


def _build_visual(model_config: dict) -> torch.nn.Module:
    # Only the image tower is built: the text tower is never used and may need downloads.
    from open_clip.model import _build_vision_tower

    missing = {"embed_dim", "vision_cfg"} - set(model_config)
    if missing:
        raise ValueError(f"open_clip model config lacks {sorted(missing)}")
    return _build_vision_tower(
        model_config["embed_dim"], model_config["vision_cfg"], quick_gelu=model_config.get("quick_gelu", False)
    )


def _as_int(size) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"only square images/patches are supported, got {size}")
        return int(size[0])
    return int(size)
