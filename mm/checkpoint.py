"""Self-contained checkpoint directories: save (through mm.export_target), load (ours and llava-hf)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import mm
from mm.config import VLMConfig
from mm.export_target import export_directory
from mm.hub import not_found

CONFIG_NAME = "mm_config.json"
WEIGHTS_NAME = "model.safetensors"
IMAGE_PROCESSING_NAME = "image_processing.json"
FORMAT_VERSION = 1


def save_pretrained(model, directory: str | os.PathLike) -> None:
    """Write config, weights, tokenizer and image settings to `directory`. An earlier export there is
    replaced in one rename; other files in it are kept (see mm.export_target)."""
    from safetensors.torch import save_model

    with export_directory(directory) as tmp:
        resolved = resolved_config(model)
        payload = {"format_version": FORMAT_VERSION, "mm_version": mm.__version__, **resolved.to_dict()}
        (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(str(tmp))
        image = model.image_transform_config
        image_settings = {"image_size": image.image_size, "mean": list(image.mean), "std": list(image.std),
                          "mode": image.mode, "tokens_per_image": model.tokens_per_image}
        (tmp / IMAGE_PROCESSING_NAME).write_text(json.dumps(image_settings, indent=2) + "\n")


def resolved_config(model) -> VLMConfig:
    """The model's config with every architecture inlined (loading needs no network)."""
    import dataclasses

    from mm.llm import resolved_llm_config

    return dataclasses.replace(
        model.config,
        vision=model.vision_tower.resolved_config(),
        llm=resolved_llm_config(model.config.llm, model.llm),
    )


def load_pretrained(path: str | os.PathLike, *, trust_remote_code: bool = False, torch_dtype=None):
    """Load one of our checkpoint directories or a llava-hf (`model_type: "llava"`) directory / hub id."""
    directory = _local_directory(str(path))
    if (directory / CONFIG_NAME).is_file():
        model = _load_ours(directory, trust_remote_code)
    elif _is_llava_dir(directory):
        from mm.llava import load_llava_hf

        model = load_llava_hf(directory, trust_remote_code=trust_remote_code)
    else:
        raise ValueError(
            f"{path} is neither an mm checkpoint (no {CONFIG_NAME}) nor a llava-hf directory "
            "(config.json with model_type 'llava')"
        )
    if torch_dtype is not None:
        model = model.to(_as_dtype(torch_dtype))
    return model.eval()


def read_config(directory: str | os.PathLike) -> VLMConfig:
    """The VLMConfig stored in a checkpoint directory (architectures inline)."""
    payload = json.loads((Path(directory) / CONFIG_NAME).read_text())
    version = payload.pop("format_version", None)
    payload.pop("mm_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{directory}: checkpoint format_version {version!r}, this mm reads {FORMAT_VERSION}")
    return VLMConfig.from_dict(payload)


def _load_ours(directory: Path, trust_remote_code: bool):
    from safetensors.torch import load_file

    from mm.builder import build_vlm
    from mm.llm import load_tokenizer
    from mm.weights import assign_state_dict, parameters_on_meta

    config = read_config(directory)
    tokenizer = load_tokenizer(str(directory), trust_remote_code=trust_remote_code)
    with parameters_on_meta():
        model = build_vlm(config, load_weights=False, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    assign_state_dict(model, load_file(str(directory / WEIGHTS_NAME)), str(directory))
    return model.set_trainable(vision=False, projector=True, llm=True)


def _is_llava_dir(directory: Path) -> bool:
    config_path = directory / "config.json"
    return config_path.is_file() and json.loads(config_path.read_text()).get("model_type") == "llava"


def _local_directory(path: str) -> Path:
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise ValueError(f"{path} is a file; a checkpoint is a directory")
    if path.count("/") != 1 or path.startswith((".", "/")):
        raise not_found(path, "checkpoint")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as err:  # offline, unknown repo, gated, ...: all mean "cannot get it"
        raise not_found(path, "checkpoint", err) from err


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:  # int8 etc.: nn.Module.to raises TypeError
        raise ValueError(f"unknown or non-float torch_dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16'")
    return value
