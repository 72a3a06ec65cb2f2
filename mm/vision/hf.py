"""transformers CLIP and SigLIP vision towers (local directory, hub id, config JSON or inline config)."""

from __future__ import annotations

import dataclasses
import os

import torch

from mm.config import VisionTowerConfig
from mm.files import read_json
from mm.hub import local_or_hub
from mm.llm import enable_activation_checkpointing, refuse_llava_directory
from mm.vision.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, VisionTower


class HFVisionTower(VisionTower):
    """A transformers `*VisionModel`; features are `hidden_states[select_layer]`."""

    model_class_name: str
    config_class_name: str
    default_mean: list[float]
    default_std: list[float]

    def __init__(self, config: VisionTowerConfig, *, load_weights: bool = True) -> None:
        super().__init__()
        import transformers

        self.config = config
        model_class = getattr(transformers, self.model_class_name)
        config_class = getattr(transformers, self.config_class_name)
        source = _hf_source(config, load_weights)
        if source == "weights":
            with local_or_hub(config.name_or_path, "vision tower"):
                self.model = model_class.from_pretrained(config.name_or_path)
        else:
            arch = config.model_config if source == "inline" else read_json(config.name_or_path)
            self.model = model_class(config_class.from_dict(_vision_part(arch)))
        hf_config = self.model.config
        self.hidden_size = hf_config.hidden_size
        self.image_size = hf_config.image_size
        self.patch_size = hf_config.patch_size
        self.num_layers = hf_config.num_hidden_layers
        # transformers 5 flattened `vision_model` away; 4.x still nests the encoder under it.
        encoder = getattr(self.model, "vision_model", self.model).encoder
        self.block_class = type(encoder.layers[0])
        self._check_select_layer()
        # Only a checkpoint we load weights from can say how it was normalised; never look it up otherwise.
        needs_lookup = source == "weights" and (config.image_mean is None or config.image_std is None)
        mean, std = _preprocessor_normalisation(config.name_or_path) if needs_lookup else (None, None)
        self._resolve_normalisation(mean or self.default_mean, std or self.default_std)

    def hidden_states_at(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        return outputs.hidden_states[layer]

    def gradient_checkpointing_enable(self) -> None:
        enable_activation_checkpointing(self.model)

    def resolved_config(self) -> VisionTowerConfig:
        arch = self.model.config.to_dict()
        return dataclasses.replace(
            self.config, model_config=arch, image_mean=self.image_mean, image_std=self.image_std
        )


class HFCLIPVisionTower(HFVisionTower):
    model_class_name = "CLIPVisionModel"
    config_class_name = "CLIPVisionConfig"
    num_prefix_tokens = 1  # CLS
    default_mean = OPENAI_CLIP_MEAN
    default_std = OPENAI_CLIP_STD


class HFSiglipVisionTower(HFVisionTower):
    model_class_name = "SiglipVisionModel"
    config_class_name = "SiglipVisionConfig"
    num_prefix_tokens = 0  # SigLIP has no CLS token
    default_mean = [0.5, 0.5, 0.5]
    default_std = [0.5, 0.5, 0.5]


def _hf_source(config: VisionTowerConfig, load_weights: bool) -> str:
    """'weights' (from_pretrained), 'json' (config file, random init) or 'inline' (rebuild without weights)."""
    if not load_weights or not config.name_or_path:
        if config.model_config is not None:
            return "inline"
        if not config.name_or_path.endswith(".json"):
            raise ValueError("building a tower without weights needs an inline `model_config` or a config JSON")
    if config.name_or_path.endswith(".json"):
        if not os.path.isfile(config.name_or_path):
            raise FileNotFoundError(f"vision config JSON not found: {config.name_or_path}")
        return "json"
    refuse_llava_directory(config.name_or_path)
    return "weights"


def _vision_part(arch: dict) -> dict:
    """Accept a full CLIP/SigLIP config (text + vision) as well as a vision-only one."""
    return arch["vision_config"] if "vision_config" in arch else arch


def _preprocessor_normalisation(name_or_path: str) -> tuple[list[float] | None, list[float] | None]:
    """The normalisation in the checkpoint's `preprocessor_config.json` (local dir or hub id), if it has one."""
    if name_or_path.endswith(".json"):
        return None, None
    from transformers.utils import cached_file

    path = cached_file(
        name_or_path, "preprocessor_config.json",
        _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return None, None
    processor = read_json(path)
    return processor.get("image_mean"), processor.get("image_std")
