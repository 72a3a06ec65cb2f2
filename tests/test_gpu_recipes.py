"""GPU recipes (marker `gpu`; `bash bench/gpu_check.sh` runs them): the shipped FSDP recipe
(configs/llava15/stage2_finetune.yaml) and DeepSpeed ZeRO-2 recipe (configs/llava15/stage2_lora.yaml) train the
tiny model for a few steps through `mm-train fit`, on one GPU, in their bf16-mixed precision; the export
reloads with `mm.load_pretrained` and gives the trained module's loss on the same batch.

Only the model (the tiny offline one), the data (tiny shards), the sizes, the learning rates and the run
folders are overridden; strategy, precision, wrapping, activation checkpointing, clipping, templates and
checkpointing are the recipes'. Without a CUDA device every test skips; without deepspeed the DeepSpeed one does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from mm.train.module import VLMTrainingModule
from train_helpers import ASSET_TOKENIZER, write_shards

REPO = Path(__file__).resolve().parents[1]
MM_TRAIN = Path(sys.executable).parent / "mm-train"
ASSETS = ASSET_TOKENIZER.parent
STEPS = 3
RECIPES = {
    "fsdp": ("configs/llava15/stage2_finetune.yaml", []),
    "deepspeed": ("configs/llava15/stage2_lora.yaml",
                  ["--model.policy.projector_lr", "1e-2", "--model.policy.lora_r", "8", "--model.policy.lora_alpha", "16"]),
}
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bash bench/gpu_check.sh)"),
]


class LossProbe(L.Callback):
    """For `mm-train` runs (class_path `test_gpu_recipes.LossProbe`): the loss of the first training batch
    before the first step and after the last (before the export), computed as training computes it (the
    run's precision context, through the strategy's wrapper under FSDP), saved with the batch to `path`."""

    def __init__(self, path: str):
        self.path, self.batch, self.before = path, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.batch is None:
            self.batch = batch
            self.before = self.loss(trainer, module)

    def on_train_end(self, trainer, module):
        if trainer.global_rank == 0:
            parameter = next(module.parameters())
            torch.save({"batch": _to(self.batch, "cpu"), "before": self.before, "after": self.loss(trainer, module),
                        "dtype": parameter.dtype, "autocast": self.autocast}, self.path)

    def loss(self, trainer, module) -> float:
        from lightning.pytorch.strategies import FSDPStrategy

        model = trainer.strategy.model if isinstance(trainer.strategy, FSDPStrategy) else module
        model.eval()  # no (LoRA) dropout
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            self.autocast = torch.is_autocast_enabled(module.device.type)
            loss = float(model(self.batch).loss)
        model.train()
        return loss


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def mm_train_command(recipe: str, root: Path, data: Path, extra: list[str]) -> list[str]:
    """`mm-train fit --config <recipe>` with the overrides that make it the tiny model on tiny shards."""
    return [
        str(MM_TRAIN), "fit", "--config", str(REPO / recipe),
        "--model.model.vision.name_or_path", str(ASSETS / "configs" / "hf_clip.json"),
        "--model.model.llm.name_or_path", str(ASSETS / "configs" / "llama.json"),
        "--model.model.llm.tokenizer", str(ASSET_TOKENIZER),
        "--model.policy.init_projector_from", "null", "--model.policy.lr", "1e-2",
        "--model.export_dir", str(root / "export"),
        "--data.train_shards", json.dumps([{"urls": str(data)}]), "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.max_length", "256", "--data.shuffle_buffer", "4",
        "--trainer.devices", "1", "--trainer.max_steps", str(STEPS), "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.callbacks+=test_gpu_recipes.LossProbe", f"--trainer.callbacks.path={root / 'probe.pt'}",
        *extra,
    ]


def run_recipe(name: str, root: Path, extra: list[str] = ()) -> dict:
    recipe, recipe_extra = RECIPES[name]
    write_shards(root / "data", [8, 8])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # for the probe's class_path
    done = subprocess.run(mm_train_command(recipe, root, root / "data", [*recipe_extra, *extra]), cwd=root,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-5000:]
    return torch.load(root / "probe.pt", weights_only=False)


def reloaded_loss(export: Path, probe: dict, device: str = "cuda") -> float:
    """The probe's batch through `mm.load_pretrained(export)`, in the dtype and autocast the run trained in."""
    import mm

    vlm = mm.load_pretrained(export, torch_dtype=probe["dtype"]).to(device)
    module = VLMTrainingModule(vlm.config)
    module.vlm, module.image_transform = vlm, vlm.make_image_transform()  # as configure_model sets them
    module.eval()
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=probe["autocast"]):
        return float(module(_to(probe["batch"], device)).loss)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_exports_and_reloads(tmp_path, name):
    if name == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except Exception as error:  # not installed, or installed but broken against this torch
            pytest.skip(f"deepspeed does not import ({type(error).__name__}: {error}): pip install -e '.[deepspeed]'")
    probe = run_recipe(name, tmp_path)
    assert abs(probe["after"] - probe["before"]) > 0.1  # the steps trained: a stale export would show
    assert reloaded_loss(tmp_path / "export", probe) == pytest.approx(probe["after"], abs=2e-2)
