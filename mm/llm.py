"""The causal LLM and its tokenizer: any transformers `AutoModelForCausalLM`."""

from __future__ import annotations

import dataclasses
import logging
import os

from torch import nn

from mm.chat import IMAGE_TOKEN
from mm.config import LLMConfig
from mm.files import read_json
from mm.hf_processor import read_chat_template
from mm.hub import local_or_hub

log = logging.getLogger(__name__)


def build_llm(config: LLMConfig, *, load_weights: bool = True, trust_remote_code: bool = False) -> nn.Module:
    """From a hub id / local directory (weights), a config JSON (random init), or, when `load_weights` is
    False (a checkpoint's weights follow), the inline `model_config`."""
    from transformers import AutoModelForCausalLM

    common = {"attn_implementation": config.attn_implementation, "trust_remote_code": trust_remote_code}
    if config.name_or_path.endswith(".json") or not config.name_or_path or not load_weights:
        hf_config = _config_from_dict(_llm_arch(config), trust_remote_code)
        return AutoModelForCausalLM.from_config(hf_config, **common)
    refuse_llava_directory(config.name_or_path)
    with local_or_hub(config.name_or_path, "LLM"):
        return AutoModelForCausalLM.from_pretrained(config.name_or_path, dtype="auto", **common)


def refuse_llava_directory(name_or_path: str) -> None:
    """A llava-hf directory holds a whole VLM; its parts cannot be loaded one by one from it."""
    config_path = os.path.join(name_or_path, "config.json")
    if os.path.isfile(config_path):
        if read_json(config_path).get("model_type") == "llava":
            raise ValueError(f"{name_or_path} is a llava-hf directory: load it whole with mm.load_pretrained")


def load_tokenizer(source: str, *, trust_remote_code: bool = False, image_token: str = IMAGE_TOKEN):
    from transformers import AutoTokenizer

    with local_or_hub(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer at {source!r} is not a fast tokenizer (offsets are needed by mm.chat)")
    # The tokenizer of an `mm-export` folder adds no BOS (its chat template writes it); mm's own templates
    # leave the BOS to the tokenizer, so training or scoring with that tokenizer would silently drop it.
    read_chat_template(tokenizer, image_token)
    return tokenizer


def tokenizer_source(config: LLMConfig) -> str:
    source = config.tokenizer or config.name_or_path
    if source.endswith(".json"):
        raise ValueError(f"LLM {config.name_or_path!r} is a config file: set `llm.tokenizer` to a tokenizer")
    return source


def add_image_token(tokenizer, llm: nn.Module, image_token: str) -> int:
    """Add the placeholder token (and a pad token if missing); grow the embeddings only when needed."""
    if image_token not in tokenizer.get_vocab():
        _add_special_token(tokenizer, image_token)
        log.info("added %s to the tokenizer", image_token)
    if tokenizer.pad_token is None:
        # Padding positions are masked out; any existing token works and keeps the vocabulary unchanged.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))
    return tokenizer.convert_tokens_to_ids(image_token)


def _add_special_token(tokenizer, token: str) -> None:
    """Add `token` as a special token, keeping the tokenizer's other extra special tokens listed."""
    import inspect

    parameters = inspect.signature(tokenizer.add_special_tokens).parameters
    flag = "replace_extra_special_tokens"  # transformers 5; 4.x calls it replace_additional_special_tokens
    if flag not in parameters:
        flag = "replace_additional_special_tokens"
    tokenizer.add_special_tokens({"additional_special_tokens": [token]}, **{flag: False})


def resolved_llm_config(config: LLMConfig, llm: nn.Module) -> LLMConfig:
    """The LLM config with the architecture inlined, so a checkpoint rebuilds it offline."""
    return dataclasses.replace(config, model_config=llm.config.to_dict())


def llm_block_class(llm: nn.Module) -> type[nn.Module]:
    """The decoder-layer class (for FSDP auto-wrap and activation checkpointing)."""
    names = set(getattr(llm, "_no_split_modules", None) or [])
    for module in llm.modules():
        if type(module).__name__ in names:
            return type(module)
    raise ValueError(f"cannot find the decoder-layer class of {type(llm).__name__} (_no_split_modules={names})")


def enable_activation_checkpointing(hf_model: nn.Module) -> None:
    """Non-reentrant activation checkpointing on a transformers model (5.x name, 4.x fallback)."""
    kwargs = {"use_reentrant": False}
    if hasattr(hf_model, "activation_checkpointing_enable"):
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _llm_arch(config: LLMConfig) -> dict:
    """Only reached when no weights are loaded from `name_or_path`: the inline config wins over a JSON."""
    if config.model_config is not None:
        return config.model_config
    if not config.name_or_path.endswith(".json"):
        raise ValueError("building an LLM without weights needs an inline `model_config` or a config JSON")
    if not os.path.isfile(config.name_or_path):
        raise FileNotFoundError(f"LLM config JSON not found: {config.name_or_path}")
    return read_json(config.name_or_path)


def _config_from_dict(arch: dict, trust_remote_code: bool):
    from transformers import AutoConfig

    arch = dict(arch)
    model_type = arch.pop("model_type", None)
    if model_type is None:
        raise ValueError("LLM config has no `model_type`")
    if "auto_map" in arch and not trust_remote_code:
        raise ValueError("LLM config uses custom code (auto_map); pass trust_remote_code=True to allow it")
    return AutoConfig.for_model(model_type, **arch)
