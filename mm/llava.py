"""Interop with transformers' `LlavaForConditionalGeneration` and, for anyres models,
`LlavaNextForConditionalGeneration` (llava-hf layouts), both directions. The two differ only in LlavaNext's
tiling settings (`image_grid_pinpoints`, its image processor) and its learned `image_newline`."""

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
    record_added_special_tokens,
)
from mm.vision import VISION_TOWERS, llava_vision_kinds
from mm.weights import assign_state_dict, parameters_on_meta

log = logging.getLogger(__name__)

_PREFIXES = {  # llava-hf module prefix -> ours; the newline first, since "projector." would also match it
    "model.image_newline": "projector.image_newline",  # LlavaNext's only extra weight
    "model.vision_tower.": "vision_tower.model.",
    "model.multi_modal_projector.": "projector.",
}


FAMILIES = {  # config.json model_type -> (transformers config class, model class, the name users see)
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration", "Llava"),
    "llava_next": ("LlavaNextConfig", "LlavaNextForConditionalGeneration", "LlavaNext"),
}


def _family_classes(model_type: str):
    import transformers

    config_class, model_class, _ = FAMILIES[model_type]
    return getattr(transformers, config_class), getattr(transformers, model_class)


# ----------------------------------------------------------------------------- llava-hf -> mm
def llava_model_type(directory: str | Path) -> str | None:
    """'llava' or 'llava_next' when `directory` holds such a llava-hf model (its config.json's model_type)."""
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        return None
    model_type = json.loads(config_path.read_text()).get("model_type")
    return model_type if model_type in FAMILIES else None


def is_llava_directory(directory: str | Path) -> bool:
    """Whether `directory` holds a llava-hf model (`config.json` with `model_type` "llava" or "llava_next")."""
    return llava_model_type(directory) is not None


def load_llava_hf(directory: str | Path, *, trust_remote_code: bool = False):
    """A llava-hf directory (Llava or LlavaNext) as our model (config read back from its config and processor
    files, same weights)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    check_complete(directory)
    config_class, model_class = _family_classes(llava_model_type(directory) or "llava")
    llava_config = config_class.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    config = vlm_config_from_llava(llava_config, tokenizer, directory)
    llava = model_class.from_pretrained(directory, trust_remote_code=trust_remote_code)
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
    pinpoints = getattr(llava_config, "image_grid_pinpoints", None)  # LlavaNext's alone
    if pinpoints is not None and has_prefix_token and strategy == "full":
        raise LlavaIncompatible(f"LlavaNext with vision_feature_select_strategy='full' keeps {kind}'s class token, "
                                "so the tiles' features are no square grid; anyres needs 'default' for this tower")
    mean, std, mode = read_image_settings(directory, vision.image_size, pinpoints)
    image_token = tokenizer.convert_ids_to_tokens(llava_config.image_token_id)
    return VLMConfig(
        vision=VisionTowerConfig(
            kind=kind, name_or_path=str(directory), model_config=vision.to_dict(), select_layer=layer,
            keep_prefix_tokens=strategy == "full" and has_prefix_token, image_mean=mean, image_std=std,
        ),
        projector=ProjectorConfig(kind="mlp2x_gelu", bias=llava_config.multimodal_projector_bias),
        llm=LLMConfig(name_or_path=str(directory), model_config=_text_config(llava_config), tokenizer=str(directory)),
        image_token=image_token,
        chat_template=read_chat_template(tokenizer, image_token),  # an export's own, else LLaVA-1.5's vicuna_v1
        image_transform=mode,
        image_grid_pinpoints=pinpoints,
    )


def _text_config(llava_config) -> dict:
    """The LLM's config; its embeddings tied as the top level says, which is what transformers 5 follows
    (LlavaConfig copies a tied text config's flag up, LlavaNextConfig does not, so they can disagree)."""
    return {**llava_config.text_config.to_dict(), "tie_word_embeddings": bool(llava_config.tie_word_embeddings)}


def _llava_to_ours(state: dict[str, torch.Tensor], llm_prefix: str) -> dict[str, torch.Tensor]:
    prefixes = {**_PREFIXES, "model.language_model.": f"llm.{llm_prefix}.", "lm_head.": "llm.lm_head."}
    return {_rename(key, prefixes): value for key, value in state.items()}


def _rename(key: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"unexpected weight {key!r}")


# ----------------------------------------------------------------------------- mm -> llava-hf
def check_exportable(model, model_type: str = "llava") -> None:
    """Raise LlavaIncompatible (saying why) when Llava (model_type 'llava') or LlavaNext ('llava_next') cannot
    express the model exactly."""
    name = FAMILIES[model_type][2]
    kind = model.config.vision.kind
    exportable = sorted(tower for tower, row in VISION_TOWERS.items() if row.llava_model_types)
    if kind not in exportable:
        raise LlavaIncompatible(
            f"the vision tower is {kind!r}; transformers' {name} builds its tower with AutoModel, so only "
            f"transformers CLIP/SigLIP towers ({exportable}) can be exported"
        )
    projector = model.config.projector.kind
    if projector != "mlp2x_gelu":
        raise LlavaIncompatible(
            f"the projector is {projector!r}; {name}'s projector is Linear -> GELU -> Linear (our 'mlp2x_gelu') "
            "and has no equivalent for others (no pixel shuffle, no pooling)"
        )
    if model.config.projector.grid_position:
        raise LlavaIncompatible(f"the projector adds learned row and column embeddings (grid_position); {name} has none")
    _check_tiling(model.config, model_type)


def _check_tiling(config, model_type: str) -> None:
    """Llava takes one view per image, LlavaNext tiles every image the way mm's anyres without a cap does."""
    if model_type == "llava" and config.image_transform == "anyres":
        raise LlavaIncompatible("the model tiles images (image_transform 'anyres'), which Llava cannot; "
                                "export it as hf-llava-next")
    if model_type == "llava_next" and config.image_transform != "anyres":
        raise LlavaIncompatible(f"LlavaNext tiles every image, and the model's image_transform is "
                                f"{config.image_transform!r}; export it as hf-llava (supported here: 'anyres')")
    if config.anyres_max_tiles is not None:
        raise LlavaIncompatible(
            f"anyres_max_tiles={config.anyres_max_tiles} pools the tiles' features (LLaVA-OneVision's "
            "anyres_max_N), which LlavaNext has no equivalent for; supported: anyres without anyres_max_tiles"
        )


def llava_config_for(model, model_type: str = "llava"):
    """The transformers config of the export: a LlavaConfig, or a LlavaNextConfig ('llava_next')."""
    check_exportable(model, model_type)
    config_class, _ = _family_classes(model_type)
    tiling = {"image_grid_pinpoints": model.config.image_grid_pinpoints} if model_type == "llava_next" else {}
    tower = model.vision_tower
    # 'default' drops exactly one leading token (CLIP's CLS); SigLIP has none, so it needs 'full'.
    drops_cls = tower.num_prefix_tokens == 1 and not model.config.vision.keep_prefix_tokens
    return config_class(
        **tiling,
        vision_config=tower.model.config.to_dict(),
        text_config=model.llm.config.to_dict(),
        image_token_id=model.image_token_id,
        image_seq_length=model.tokens_per_image,  # LlavaNext: the base view's
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


def export_llava_hf(model, out_dir: str | Path, model_type: str = "llava", *, source: str | None = None,
                    overwrite: bool = False) -> None:
    """Write a `LlavaForConditionalGeneration` directory (`LlavaNextForConditionalGeneration` for model_type
    'llava_next'): config, weights, tokenizer, processor. Our earlier export of the same `source` there is
    replaced in one rename; other files in it are kept; anything else needs `overwrite` (see mm.export_target)."""
    llava_config = llava_config_for(model, model_type)
    processor = processor_for(model, llava_config.vision_feature_select_strategy)
    with torch.device("meta"):
        llava = _family_classes(model_type)[1](llava_config)
    state = _ours_to_llava(model.state_dict(), _llm_prefix(model.llm))
    missing, unexpected = llava.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight" or not llava_config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"weights do not map onto {FAMILIES[model_type][2]}: missing {missing}, "
                         f"unexpected {unexpected}")
    # generate() there stops where mm's does (e.g. at <|im_end|>, or at "\n" for plain captions)
    llava.generation_config.eos_token_id = stop_token_ids(model.tokenizer, model.config.chat_template)
    with export_directory(out_dir, source=source, overwrite=overwrite) as tmp:
        llava.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))  # tokenizer, chat_template.jinja, processor_config.json
        record_added_special_tokens(tmp, processor.tokenizer)
        processor.image_processor.save_pretrained(str(tmp))  # preprocessor_config.json, for transformers 4 readers


def export_llava_next_hf(model, out_dir: str | Path, **ownership) -> None:
    """`export_llava_hf` as a `LlavaNextForConditionalGeneration` directory (anyres models)."""
    export_llava_hf(model, out_dir, "llava_next", **ownership)


def _ours_to_llava(state: dict[str, torch.Tensor], llm_prefix: str) -> dict[str, torch.Tensor]:
    prefixes = {new: old for old, new in _PREFIXES.items()}
    prefixes.update({f"llm.{llm_prefix}.": "model.language_model.", "llm.lm_head.": "lm_head."})
    return {_rename(key, prefixes): value for key, value in state.items()}


# ----------------------------------------------------------------------------- shared
def _llm_prefix(llm) -> str:
    """Attribute of the `*ForCausalLM` holding the base model (`model` for Llama, Qwen2, Mistral, ...)."""
    return llm.base_model_prefix
