"""Building the model for a training stage: seeded random parts, freezing, LoRA, projector init."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from mm.builder import build_vlm
from mm.checkpoint import is_checkpoint
from mm.config import VisionTowerConfig, VLMConfig
from mm.vision import build_vision_tower
from mm.weights import UnreadableWeights, assign_state_dict, lightning_checkpoint_problem, read_safetensors
from mm.train.policy import LORA_STAGES, TrainingPolicy

log = logging.getLogger(__name__)


def build_for_stage(config: VLMConfig, policy: TrainingPolicy, *, trust_remote_code: bool = False):
    """The VLM with the stage's trainable parts; random parts seeded by `policy.init_seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(policy.init_seed)
        vlm = build_vlm(config, trust_remote_code=trust_remote_code)
    if policy.init_from:
        load_all(vlm, policy.init_from)
    vision, projector, llm = policy.trains
    vlm.set_trainable(vision=vision, projector=projector, llm=llm)
    if policy.init_projector_from:
        load_projector(vlm, policy.init_projector_from)
    if policy.stage in LORA_STAGES:
        add_lora(vlm, policy)
    if policy.gradient_checkpointing:
        vlm.gradient_checkpointing_enable()
    return vlm


def build_reference(config: VLMConfig, policy: TrainingPolicy, *, trust_remote_code: bool = False):
    """The stage's starting model (the same seeded random parts and `init_from` weights as `build_for_stage`,
    before anything trains), frozen and in eval mode: the reference model of preference training."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(policy.init_seed)
        vlm = build_vlm(config, trust_remote_code=trust_remote_code)
    if policy.init_from:
        load_all(vlm, policy.init_from)
    if policy.init_projector_from:
        load_projector(vlm, policy.init_projector_from)
    vlm.requires_grad_(False)
    return vlm.eval()


def add_lora(vlm, policy: TrainingPolicy) -> None:
    """Wrap the LLM with peft LoRA adapters; the LLM's own weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=policy.lora_r,
        lora_alpha=policy.lora_alpha,
        lora_dropout=policy.lora_dropout,
        target_modules=list(policy.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    vlm.llm = get_peft_model(vlm.llm, lora)


def merge_lora(vlm) -> None:
    """Fold LoRA adapters into the LLM weights, so the export is a plain model."""
    from peft import PeftModel

    if isinstance(vlm.llm, PeftModel):
        vlm.llm = vlm.llm.merge_and_unload()


def saved_state(path: str | Path, part: str = "projector") -> dict[str, torch.Tensor]:
    """Weights of one part (`projector`, or "" for all) from an export directory (model.safetensors) or a
    Lightning .ckpt (which holds the trainable weights only)."""
    path = Path(path)
    if path.is_dir():
        weights_file = path / "model.safetensors"
        if not weights_file.is_file():
            raise FileNotFoundError(f"{path} has no model.safetensors (is it an mm export directory?)")
        state, prefix = read_safetensors(weights_file), f"{part}." if part else ""
    elif path.is_file():
        if problem := lightning_checkpoint_problem(path):  # a cut-off .ckpt: one line naming it, not torch's error
            raise UnreadableWeights(f"{path}: {problem}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state, prefix = checkpoint.get("state_dict", {}), f"vlm.{part}." if part else "vlm."
    else:
        raise FileNotFoundError(f"{path} does not exist")
    found = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not found:
        raise ValueError(f"{path} holds no {part or 'model'} weights (no keys starting with {prefix!r})")
    return found


def load_all(vlm, path: str | Path) -> None:
    """Every weight from an export directory; names and shapes must match this model exactly. A tower-only
    export (stage `contrastive`'s: no mm_config.json) sets the vision tower and leaves the other parts as built."""
    if not Path(path).is_dir():
        raise ValueError(f"init_from takes an export directory (with model.safetensors), got {path}")
    if not is_checkpoint(path):
        load_tower(vlm, path)
        return
    state = saved_state(path, part="")
    _keep_own_newline(vlm, state, "projector.image_newline", path)
    try:
        assign_state_dict(vlm, state, str(path))
    except RuntimeError as error:  # shape mismatches; names are checked by assign_state_dict
        raise ValueError(f"weights in {path} do not fit this model: {error}") from error
    log.info("all weights initialised from %s (%d tensors)", path, len(state))


def load_tower(vlm, path: str | Path) -> None:
    """The vision tower's weights from a tower export (`mm.train.contrastive_module.export_tower`): the folder
    its kind loads from `name_or_path`, read as the stage's own tower config would read it."""
    tower_config = tower_export_config(vlm.config.vision, Path(path))
    try:
        state = build_vision_tower(tower_config, load_weights=True).state_dict()
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is neither an mm export (no mm_config.json) nor a {tower_config.kind} tower "
                         f"folder: {error}") from error
    try:
        vlm.vision_tower.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the tower in {path} does not fit this model's {tower_config.kind} tower: {error}") from error
    log.info("vision tower initialised from the tower export %s (%d tensors); projector and LLM as built", path, len(state))


def tower_export_config(config: VisionTowerConfig, folder: Path) -> VisionTowerConfig:
    """`config` pointed at a tower export folder (open_clip's keeps its config and weights as two files)."""
    if config.kind == "open_clip":
        return dataclasses.replace(config, name_or_path=str(folder / "open_clip_config.json"),
                                   pretrained=str(folder / "open_clip_model.safetensors"), model_config=None)
    return dataclasses.replace(config, name_or_path=str(folder), model_config=None)


def _keep_own_newline(vlm, state: dict, name: str, path) -> None:
    """An anyres model started from a single-view one (LLaVA-NeXT's stage 2 after a 336-px stage 1) keeps its
    freshly initialised row-end vector, the one weight the single-view model cannot have."""
    newline = getattr(vlm.projector, "image_newline", None)
    if newline is not None and name not in state:
        state[name] = newline.detach().clone()
        log.info("%s has no image_newline (a single-view model): it starts from its random init", path)


def load_projector(vlm, path: str | Path) -> None:
    state = saved_state(path)
    _keep_own_newline(vlm, state, "image_newline", path)
    try:
        vlm.projector.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"projector weights in {path} do not fit this model's projector: {error}") from error
    log.info("projector initialised from %s (%d tensors)", path, len(state))
