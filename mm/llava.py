"""Interop with transformers' `LlavaForConditionalGeneration` (llava-hf layout), both directions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mm.builder import build_vlm
from mm.chat import stop_token_ids
from mm.config import LLMConfig, ProjectorConfig, VisionTowerConfig, VLMConfig
from mm.export_target import export_directory
from mm.hf_processor import (
    LlavaDirectoryIncomplete,  # noqa: F401  (raised by load_llava_hf; importable from here as LlavaIncompatible is)
    LlavaIncompatible,
    check_complete,
    processor_for,
    read_chat_template,
    read_image_settings,
)
from mm.vision import VISION_TOWERS, llava_vision_kinds
from mm.weights import assign_state_dict, parameters_on_meta

log = logging.getLogger(__name__)

_PREFIXES = {  # llava-hf module prefix -> ours
    "model.vision_tower.": "vision_tower.model.",
    "model.multi_modal_projector.": "projector.",
}


# ----------------------------------------------------------------------------- llava-hf -> mm
def is_llava_directory(directory: str | Path) -> bool:
    """Whether `directory` holds a llava-hf model (`config.json` with `model_type: "llava"`)."""
    config_path = Path(directory) / "config.json"
    return config_path.is_file() and json.loads(config_path.read_text()).get("model_type") == "llava"


def load_llava_hf(directory: str | Path, *, trust_remote_code: bool = False):
    """A llava-hf directory as our model (config read back from its config and processor files, same weights)."""
    from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    directory = Path(directory)
    check_complete(directory)
    llava_config = LlavaConfig.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    config = vlm_config_from_llava(llava_config, tokenizer, directory)
    llava = LlavaForConditionalGeneration.from_pretrained(directory, trust_remote_code=trust_remote_code)
    with parameters_on_meta():
        model = build_vlm(config, load_weights=False, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    state = _llava_to_ours(llava.state_dict(), _llm_prefix(model.llm))
    assign_state_dict(model, state, str(directory))
    return model.set_trainable(vision=False, projector=True, llm=True)


def vlm_config_from_llava(llava_config, tokenizer, directory: Path) -> VLMConfig:
    vision = llava_config.vision_config
    kinds = llava_vision_kinds()  # transformers vision model_type -> our tower kind
    kind = kinds.get(vision.model_type)
    if kind is None:
        raise LlavaIncompatible(
            f"llava vision tower {vision.model_type!r} is not supported; supported: {sorted(kinds)}"
        )
    has_prefix_token = VISION_TOWERS[kind].tower_class.num_prefix_tokens > 0  # CLIP's CLS; SigLIP has none
    layer = llava_config.vision_feature_layer
    if not isinstance(layer, int):
        raise LlavaIncompatible(f"vision_feature_layer={layer} (several layers concatenated) is not supported")
    if llava_config.projector_hidden_act != "gelu":
        raise LlavaIncompatible(f"projector_hidden_act={llava_config.projector_hidden_act!r}; only 'gelu' is supported")
    strategy = llava_config.vision_feature_select_strategy
    if not has_prefix_token and strategy == "default":
        raise LlavaIncompatible(f"{kind} (no class token, as SigLIP) with vision_feature_select_strategy='default' "
                                "drops a real patch token")
    mean, std, mode = read_image_settings(directory, vision.image_size)
    image_token = tokenizer.convert_ids_to_tokens(llava_config.image_token_id)
    return VLMConfig(
        vision=VisionTowerConfig(
            kind=kind, name_or_path=str(directory), model_config=vision.to_dict(), select_layer=layer,
            keep_prefix_tokens=strategy == "full" and has_prefix_token, image_mean=mean, image_std=std,
        ),
        projector=ProjectorConfig(kind="mlp2x_gelu", bias=llava_config.multimodal_projector_bias),
        llm=LLMConfig(name_or_path=str(directory), model_config=llava_config.text_config.to_dict(),
                      tokenizer=str(directory)),
        image_token=image_token,
        chat_template=read_chat_template(tokenizer, image_token),  # an export's own, else LLaVA-1.5's vicuna_v1
        image_transform=mode,
    )


def _llava_to_ours(state: dict[str, torch.Tensor], llm_prefix: str) -> dict[str, torch.Tensor]:
    prefixes = {**_PREFIXES, "model.language_model.": f"llm.{llm_prefix}.", "lm_head.": "llm.lm_head."}
    return {_rename(key, prefixes): value for key, value in state.items()}


def _rename(key: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"unexpected weight {key!r}")


# ----------------------------------------------------------------------------- mm -> llava-hf
def check_exportable(model) -> None:
    """Raise LlavaIncompatible (saying why) when Llava cannot express the model exactly."""
    kind = model.config.vision.kind
    exportable = sorted(name for name, row in VISION_TOWERS.items() if row.llava_model_types)
    if kind not in exportable:
        raise LlavaIncompatible(
            f"the vision tower is {kind!r}; transformers' Llava builds its tower with AutoModel, so only "
            f"transformers CLIP/SigLIP towers ({exportable}) can be exported"
        )
    projector = model.config.projector.kind
    if projector != "mlp2x_gelu":
        raise LlavaIncompatible(
            f"the projector is {projector!r}; Llava's projector is Linear -> GELU -> Linear (our 'mlp2x_gelu') "
            "and has no equivalent for others"
        )


def llava_config_for(model):
    from transformers import LlavaConfig

    check_exportable(model)
    tower = model.vision_tower
    # 'default' drops exactly one leading token (CLIP's CLS); SigLIP has none, so it needs 'full'.
    drops_cls = tower.num_prefix_tokens == 1 and not model.config.vision.keep_prefix_tokens
    return LlavaConfig(
        vision_config=tower.model.config.to_dict(),
        text_config=model.llm.config.to_dict(),
        image_token_id=model.image_token_id,
        image_seq_length=model.tokens_per_image,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default" if drops_cls else "full",
        vision_feature_layer=llava_feature_layer(model.config.vision.select_layer, tower.num_layers),
        multimodal_projector_bias=model.config.projector.bias,
        tie_word_embeddings=bool(model.llm.config.tie_word_embeddings),
    )


def llava_feature_layer(select_layer: int, num_layers: int) -> int:
    """`select_layer` as Llava's `vision_feature_layer`. The embeddings (0) are written as their negative index:
    transformers asks the tower for hidden states only when the layer index is truthy (`select_hidden_states`),
    so a 0 there returns none and the forward fails."""
    return select_layer - (num_layers + 1) if select_layer == 0 else select_layer


def export_llava_hf(model, out_dir: str | Path) -> None:
    """Write a `LlavaForConditionalGeneration` directory (config, weights, tokenizer, processor). An earlier
    export there is replaced in one rename; other files in it are kept (see mm.export_target)."""
    from transformers import LlavaForConditionalGeneration

    llava_config = llava_config_for(model)
    processor = processor_for(model, llava_config.vision_feature_select_strategy)
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(llava_config)
    state = _ours_to_llava(model.state_dict(), _llm_prefix(model.llm))
    missing, unexpected = llava.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight" or not llava_config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"weights do not map onto Llava: missing {missing}, unexpected {unexpected}")
    # generate() there stops where mm's does (e.g. at <|im_end|>, or at "\n" for plain captions)
    llava.generation_config.eos_token_id = stop_token_ids(model.tokenizer, model.config.chat_template)
    with export_directory(out_dir) as tmp:
        llava.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))  # tokenizer, chat_template.jinja, processor_config.json
        processor.image_processor.save_pretrained(str(tmp))  # preprocessor_config.json, for transformers 4 readers


def _ours_to_llava(state: dict[str, torch.Tensor], llm_prefix: str) -> dict[str, torch.Tensor]:
    prefixes = {new: old for old, new in _PREFIXES.items()}
    prefixes.update({f"llm.{llm_prefix}.": "model.language_model.", "llm.lm_head.": "lm_head."})
    return {_rename(key, prefixes): value for key, value in state.items()}


# ----------------------------------------------------------------------------- shared
def _llm_prefix(llm) -> str:
    """Attribute of the `*ForCausalLM` holding the base model (`model` for Llama, Qwen2, Mistral, ...)."""
    return llm.base_model_prefix
