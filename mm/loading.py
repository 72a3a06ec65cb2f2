"""`load_pretrained`: the one loader, over our checkpoint directories (mm.checkpoint) and llava-hf ones
(Llava and LlavaNext, mm.llava)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from mm.builder import build_vlm
from mm.checkpoint import CONFIG_NAME, is_checkpoint, read_config, read_weights
from mm.cli_errors import BadInput, one_line
from mm.hub import not_found
from mm.llava import LlavaIncompatible, is_llava_directory, load_llava_hf
from mm.llm import load_tokenizer
from mm.model import VisionLanguageModel
from mm.weights import assign_state_dict, check_safetensors, parameters_on_meta


class UnreadableCheckpoint(BadInput):
    """A checkpoint's config or tokenizer that cannot be read or describes no model: names the file."""


def load_pretrained(
    path: str | os.PathLike, *, trust_remote_code: bool = False, torch_dtype=None
) -> VisionLanguageModel:
    """Load one of our checkpoint directories or a llava-hf (`model_type` "llava" or "llava_next") directory /
    hub id."""
    directory = _local_directory(str(path))
    if is_checkpoint(directory):
        model = load_checkpoint(directory, trust_remote_code=trust_remote_code)
    elif _is_llava(directory):
        model = _load_llava(directory, trust_remote_code=trust_remote_code)
    else:
        raise BadInput(
            f"{path} is neither an mm checkpoint (no {CONFIG_NAME}) nor a llava-hf directory "
            "(config.json with model_type 'llava' or 'llava_next')"
        )
    if torch_dtype is not None:
        model = model.to(_as_dtype(torch_dtype))
    return model.eval()


def load_checkpoint(directory: str | os.PathLike, *, trust_remote_code: bool = False) -> VisionLanguageModel:
    """One of our checkpoint directories: the model built on the meta device, then given the stored weights."""
    directory = str(directory)
    with _describes_no_model(Path(directory) / CONFIG_NAME):
        config = read_config(directory)
    with _describes_no_model(Path(directory), "tokenizer"):
        tokenizer = load_tokenizer(directory, trust_remote_code=trust_remote_code)
    with _describes_no_model(Path(directory) / CONFIG_NAME), parameters_on_meta():
        model = build_vlm(config, load_weights=False, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    assign_state_dict(model, read_weights(directory), directory)
    return model.set_trainable(vision=False, projector=True, llm=True)


def _is_llava(directory: Path) -> bool:
    with _describes_no_model(directory / "config.json"):
        return is_llava_directory(directory)


def _load_llava(directory: Path, *, trust_remote_code: bool):
    """`load_llava_hf`, its weight files checked first: transformers reports a truncated one with a traceback."""
    for weights in sorted(directory.glob("*.safetensors")):
        check_safetensors(weights)
    with _describes_no_model(directory / "config.json"):
        return load_llava_hf(directory, trust_remote_code=trust_remote_code)


def _config_class_errors() -> tuple[type[BaseException], ...]:
    """What transformers' typed config classes raise for a field of the wrong type (huggingface_hub's
    strict dataclasses, not a ValueError); none on versions without them."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


_CONFIG_CLASS_ERRORS = _config_class_errors()


@contextmanager
def _describes_no_model(path: Path, what: str = "config"):
    """Errors from reading a config (not JSON, a list, a field of the wrong type) or building what it
    describes become one `UnreadableCheckpoint` naming `path` (RecursionError: JSON nested too deep); errors
    that already name their file pass."""
    try:
        yield
    except (BadInput, OSError, LlavaIncompatible):  # these say already what is wrong, and where
        raise
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError, *_CONFIG_CLASS_ERRORS) as error:
        raise UnreadableCheckpoint(f"{path}: not a usable {what}: {one_line(error)}") from error


def _local_directory(path: str) -> Path:
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise BadInput(f"{path} is a file; a checkpoint is a directory")
    if path.count("/") != 1 or path.startswith((".", "/")):
        raise not_found(path, "checkpoint")
    from huggingface_hub import snapshot_download  # the network only when a Hub id is asked for

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


INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    """bf16 on GPU and fp32 on CPU unless named."""
    if name is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in INFERENCE_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(INFERENCE_DTYPES)}")
    return INFERENCE_DTYPES[name]


def load_for_inference(path: str | os.PathLike, device: str, dtype_name: str | None = None, *,
                       trust_remote_code: bool = False) -> tuple[VisionLanguageModel, torch.dtype]:
    """`load_pretrained` in the dtype `resolve_dtype` picks, on `device`, in eval mode (mm-eval, mm-chat)."""
    dtype = resolve_dtype(dtype_name, device)
    model = load_pretrained(path, trust_remote_code=trust_remote_code, torch_dtype=dtype)
    return model.to(device).eval(), dtype
