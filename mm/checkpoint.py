"""Our checkpoint directories, the format: file names, writing one (through mm.export_target), reading its parts.

Assembling a model from them is `mm.loading.load_pretrained`'s job; `VisionLanguageModel.save_pretrained`
calls `write_checkpoint`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from mm import __version__
from mm.config import VLMConfig
from mm.export_target import export_directory
from mm.weights import read_safetensors

CONFIG_NAME = "mm_config.json"
WEIGHTS_NAME = "model.safetensors"
IMAGE_PROCESSING_NAME = "image_processing.json"
FORMAT_VERSION = 1


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds one of our checkpoints (its config file)."""
    return (Path(directory) / CONFIG_NAME).is_file()


def write_checkpoint(model, directory: str | os.PathLike, *, source: str | None = None,
                     overwrite: bool = False) -> None:
    """Write the model's config (architectures inline), weights, tokenizer and image settings to `directory`.
    Our earlier export of the same `source` (an `mm.export_target.source_identity`; None for a model saved
    from Python) there is replaced in one rename; other files in it are kept; a folder holding anything else
    needs `overwrite` (see mm.export_target)."""
    with export_directory(directory, source=source, overwrite=overwrite) as tmp:
        payload = {"format_version": FORMAT_VERSION, "mm_version": __version__, **model.resolved_config().to_dict()}
        (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        safetensors.torch.save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(str(tmp))
        image = model.image_transform_config
        image_settings = {"image_size": image.image_size, "mean": list(image.mean), "std": list(image.std),
                          "mode": image.mode, "tokens_per_image": model.tokens_per_image}
        (tmp / IMAGE_PROCESSING_NAME).write_text(json.dumps(image_settings, indent=2) + "\n")


def read_config(directory: str | os.PathLike) -> VLMConfig:
    """The VLMConfig stored in a checkpoint directory (architectures inline)."""
    try:
        payload = json.loads((Path(directory) / CONFIG_NAME).read_text())
    except RecursionError:  # not a ValueError, yet just as much a broken file
        raise ValueError(f"{Path(directory) / CONFIG_NAME} is nested deeper than a config can be") from None
    version = payload.pop("format_version", None)
    payload.pop("mm_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{directory}: checkpoint format_version {version!r}, this mm reads {FORMAT_VERSION}")
    return VLMConfig.from_dict(payload)


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in a checkpoint directory (a tied tensor under one of its names)."""
    return read_safetensors(Path(directory) / WEIGHTS_NAME)  # a truncated file: one line naming it
