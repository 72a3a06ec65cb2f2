"""``VLMTrainingModule``: the VLM plus its training policy, as a LightningModule.

Loss normalisation: the loss of one micro-batch is its summed token cross-entropy divided by the number
of target tokens of the whole accumulation window on all ranks (the loader attaches the window's local
count; it is all-reduced here). Lightning divides by the accumulation steps and DDP averages over ranks,
so the divisor is scaled by both: the optimizer step then sees sum(CE) / tokens, exactly as one big batch.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
import numpy as np
import torch

from mm.config import VLMConfig
from mm.data.batching import packed_attention_mask
from mm.data.module import target_tokens
from mm.train.init import build_for_stage, merge_lora
from mm.train.optim import build_optimizer
from mm.train.policy import TrainingPolicy
from mm.transforms import ImageTransform

log = logging.getLogger(__name__)

SKIP_REASONS = ("bad_json", "bad_image", "missing_image", "too_long", "bad_conversation", "image_mismatch",
                "shard_error", "dropped_uneven_tail")


class VLMTrainingModule(L.LightningModule):
    def __init__(
        self,
        model: VLMConfig,
        policy: TrainingPolicy = TrainingPolicy(),
        export_dir: str | None = None,
        trust_remote_code: bool = False,
    ):
        """A vision-language model and how to train it.

        Args:
            model: The model to build (tower, projector, LLM).
            policy: Training stage, learning rates, schedule, LoRA and initialisation.
            export_dir: Where fit writes the final `save_pretrained` directory; None = `<default_root_dir>/export`.
            trust_remote_code: Allow code shipped with hub models to run (off by default).
        """
        super().__init__()
        self.model_config = model
        self.policy = policy
        self.export_dir = export_dir
        self.trust_remote_code = trust_remote_code
        self.vlm = None
        self.strict_loading = False  # checkpoints hold trainable weights only; checked in on_load_checkpoint
        self.skipped = {reason: 0 for reason in SKIP_REASONS} | {"padding_batches": 0}
        self._window_loss = torch.zeros(())
        self._pending_rng: dict | None = None
        self._last_step_time: float | None = None
        self._val_sums = torch.zeros(2)

    # ----------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        self.vlm = build_for_stage(self.model_config, self.policy, trust_remote_code=self.trust_remote_code)
        settings = self.vlm.image_transform_config
        self.image_transform = ImageTransform(settings.image_size, settings.mean, settings.std, settings.mode)

    def forward(self, batch: dict, num_items_in_batch=None):
        pixel_values = batch.get("pixel_values")
        if pixel_values is not None:
            pixel_values = self.image_transform.normalize(pixel_values)
        attention_mask = self._packed_mask(batch["segment_ids"]) if "segment_ids" in batch else batch["attention_mask"]
        return self.vlm(
            input_ids=batch["input_ids"],
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            labels=batch["labels"],
            position_ids=batch.get("position_ids"),
            num_items_in_batch=num_items_in_batch,
            return_logits=False,  # only the loss is needed: the head runs on labelled positions only
        )

    def _packed_mask(self, segment_ids: torch.Tensor) -> torch.Tensor | None:
        """The per-sample mask in the form the LLM's attention backend takes (transformers passes 4-D
        masks through unchanged): boolean for sdpa, additive for eager; flash attention takes none and
        finds the samples from the restarting `position_ids`."""
        backend = self.vlm.llm.config._attn_implementation
        if backend.startswith("flash_attention"):
            return None
        mask = packed_attention_mask(segment_ids)
        if backend == "sdpa":
            return mask
        if backend == "eager":
            dtype = self.vlm.llm.get_input_embeddings().weight.dtype
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        raise ValueError(f"packing is not supported with attention backend {backend!r}; use sdpa, eager or flash_attention_2")

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum") if self.trainer.world_size > 1 else tensor

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
        window_tokens = self._reduce_sum(torch.tensor(float(batch["window_target_tokens"]), device=self.device))
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            scale *= self.trainer.accumulate_grad_batches  # its engine divides by the accumulation steps again
        divisor = window_tokens.clamp(min=1.0) / scale
        loss = self(batch, num_items_in_batch=divisor).loss
        self._window_loss = self._window_loss.to(self.device) + loss.detach() * divisor / window_tokens.clamp(min=1)
        self._count(batch)
        self._log_throughput(batch)
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        window_done = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        if window_done or self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # Every rank's share is sum(CE)/window tokens; their sum is the window's token-mean loss.
            self.log("train/loss", self._reduce_sum(self._window_loss), prog_bar=True, on_step=True)
            self._window_loss = torch.zeros((), device=self.device)

    def _count(self, batch: dict) -> None:
        for reason, count in batch.get("skipped", {}).items():
            self.skipped[reason] = self.skipped.get(reason, 0) + int(count)
        self.skipped["padding_batches"] += int(bool(batch.get("is_padding", False)))
        names = sorted(self.skipped)
        totals = self._reduce_sum(torch.tensor([float(self.skipped[n]) for n in names], device=self.device))
        self.log_dict({f"skipped/{n}": v for n, v in zip(names, totals)}, on_step=True, on_epoch=False)

    def _log_throughput(self, batch: dict) -> None:
        now = time.perf_counter()
        if self._last_step_time is not None and now > self._last_step_time:
            elapsed = now - self._last_step_time
            tokens = float(batch["attention_mask"].sum()) if not batch.get("is_padding") else 0.0
            samples = 0.0 if batch.get("is_padding") else float(batch["num_samples"])
            rates = self._reduce_sum(torch.tensor([tokens / elapsed, samples / elapsed], device=self.device))
            self.log_dict({"throughput/tokens_per_s": rates[0], "throughput/samples_per_s": rates[1]},
                          on_step=True, on_epoch=False, prog_bar=False)
        self._last_step_time = now

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.vlm.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False)
        for group in optimizer.param_groups:
            self.log(f"lr/{group['name']}", group["lr"], on_step=True, on_epoch=False)

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.vlm, self.policy, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss_sum = self(batch, num_items_in_batch=1.0).loss.detach()
        self._val_sums = self._val_sums.to(self.device) + torch.stack(
            [loss_sum.float(), torch.tensor(float(target_tokens(batch)), device=self.device)]
        )

    def on_validation_epoch_end(self) -> None:
        total, tokens = self._reduce_sum(self._val_sums.to(self.device))
        self.log("val/loss", total / tokens.clamp(min=1), prog_bar=True, sync_dist=False)
        self._val_sums = torch.zeros(2)

    # ----------------------------------------------------------------- checkpoints and export
    def trainable_keys(self) -> set[str]:
        return {f"vlm.{name}" for name, param in self.vlm.named_parameters() if param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["mm"] = {"stage": self.policy.stage, "rng": _get_rng_state(), "skipped": dict(self.skipped)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = set(checkpoint["state_dict"])
        model_keys = set(self.state_dict())
        unknown, missing = sorted(saved - model_keys), sorted(self.trainable_keys() - saved)
        if unknown or missing:
            raise ValueError(
                f"checkpoint does not match this model/stage: unknown keys {unknown[:5]}, missing trainable keys "
                f"{missing[:5]} ({len(unknown)} unknown, {len(missing)} missing)"
            )
        extra = checkpoint.get("mm", {})
        self.skipped.update(extra.get("skipped", {}))
        self._pending_rng = extra.get("rng")  # restored just before the next training step

    def on_fit_end(self) -> None:
        if self.trainer.interrupted:
            return
        directory = Path(self.export_dir or Path(self.trainer.default_root_dir) / "export")
        if isinstance(self.trainer.strategy, FSDPStrategy):
            self._export_gathered(directory)
        elif self.trainer.global_rank == 0:
            merge_lora(self.vlm)
            self.vlm.save_pretrained(directory)
            log.info("exported the trained model to %s", directory)

    def _export_gathered(self, directory: Path) -> None:
        """Sharded parameters: gather the full state on rank 0 (a collective call on every rank) and write
        it through an unsharded copy of the model built without weights."""
        if self.policy.stage == "lora":
            raise NotImplementedError("export of LoRA runs under FSDP: use ddp or deepspeed_stage_2 for LoRA")
        from mm.builder import build_vlm
        from mm.checkpoint import resolved_config

        state = self.trainer.strategy.lightning_module_state_dict()
        if self.trainer.global_rank != 0:
            return
        copy = build_vlm(resolved_config(self.vlm), load_weights=False, tokenizer=self.vlm.tokenizer)
        copy.load_state_dict({key[len("vlm."):]: value for key, value in state.items()}, strict=True)
        copy.save_pretrained(directory)
        log.info("exported the trained model (gathered from FSDP shards) to %s", directory)


def _get_rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
