"""``VLMTrainingModule``: the VLM plus its training policy, as a LightningModule.

Loss normalisation: the loss of one micro-batch is its summed token cross-entropy divided by the number
of target tokens of the whole accumulation window on all ranks (the loader attaches the window's local
count; it is all-reduced here). Lightning divides by the accumulation steps and DDP averages over ranks,
so the divisor is scaled by both: the optimizer step then sees sum(CE) / tokens, exactly as one big batch.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
import numpy as np
import torch

from mm.builder import build_vlm
from mm.config import VLMConfig
from mm.data.batching import packed_attention_mask
from mm.data.module import target_tokens
from mm.data.skips import COUNTER_NAMES, PADDING_BATCHES, counter_vector
from mm.export_target import check_export_target, source_identity
from mm.train.init import build_for_stage, merge_lora
from mm.train.optim import build_optimizer, clip_grad_norm_global, global_grad_norm, no_decay_names
from mm.train.policy import TrainingPolicy
from mm.train.strategies import check_strategy, grad_shard_group

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """`--ckpt_path` names a checkpoint this run cannot continue (another model, stage or number of ranks)."""


class VLMTrainingModule(L.LightningModule):
    def __init__(
        self,
        model: VLMConfig,
        policy: TrainingPolicy = TrainingPolicy(),
        export_dir: str | None = None,
        trust_remote_code: bool = False,
        overwrite_export: bool = False,
    ):
        """A vision-language model and how to train it.

        Args:
            model: The model to build (tower, projector, LLM).
            policy: Training stage, learning rates, schedule, LoRA and initialisation.
            export_dir: Where fit writes the final `save_pretrained` directory; None = `<default_root_dir>/export`.
            trust_remote_code: Allow code shipped with hub models to run (off by default).
            overwrite_export: Export into an existing folder that is not this run's earlier export (only the export's files are replaced).
        """
        super().__init__()
        self.model_config = model
        self.policy = policy
        self.export_dir = export_dir
        self.trust_remote_code = trust_remote_code
        self.overwrite_export = overwrite_export
        self.vlm = None
        self.strict_loading = False  # checkpoints hold trainable weights only; checked in on_load_checkpoint
        self.skipped = dict.fromkeys(COUNTER_NAMES, 0)  # this rank's counts (a checkpoint holds the totals)
        self._window_loss = torch.zeros(())
        self._window_has_targets = False
        self._pending_rng: dict | None = None
        self._last_step_time: float | None = None
        self._val_sums = torch.zeros(2)

    # ----------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        self.vlm = build_for_stage(self.model_config, self.policy, trust_remote_code=self.trust_remote_code)
        # from_pretrained leaves models in eval mode and Lightning keeps the modes it finds: LoRA's dropout
        # (and any other) would silently be off for the whole run
        self.vlm.train()
        self._no_decay = no_decay_names(self.vlm)  # now: a sharding strategy wraps the model after this hook
        self.image_transform = self.vlm.make_image_transform()

    def forward(self, batch: dict, num_items_in_batch=None):
        pixel_values = batch.get("pixel_values")
        if pixel_values is not None:
            pixel_values = self.image_transform.normalize(pixel_values)
        rows = {"input_ids": batch["input_ids"], "labels": batch["labels"], "position_ids": batch.get("position_ids")}
        if "segment_ids" not in batch:
            attention_mask = batch["attention_mask"]
        else:
            attention_mask = self._packed_mask(batch["segment_ids"])
            if attention_mask is None:
                # Flash attention finds packed samples from restarting position ids only in a batch of one
                # row, so the rows are laid end to end (images stay in order; a row's first token is never
                # a target, so no target crosses rows).
                rows = {name: tensor.reshape(1, -1) for name, tensor in rows.items()}
        return self.vlm(
            **rows,
            pixel_values=pixel_values,
            image_sizes=batch.get("image_sizes"),
            attention_mask=attention_mask,
            num_items_in_batch=num_items_in_batch,
            return_logits=False,  # only the loss is needed: the head runs on labelled positions only
        )

    def _packed_mask(self, segment_ids: torch.Tensor) -> torch.Tensor | None:
        """The per-sample mask in the form the LLM's attention backend takes (transformers passes 4-D
        masks through unchanged): boolean for sdpa, additive for eager; flash attention takes none and
        finds the samples from the restarting `position_ids` (of one row: see `forward`)."""
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
    def begin_training_step(self, batch: dict, batch_idx: int) -> None:
        """What every stage's training step does first: check the batch is the one the position says, restore a
        resumed run's RNG state, count the batch's samples and skips, log throughput."""
        _check_position(batch, batch_idx, self.current_epoch)
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
        self._count(batch)
        self._log_throughput(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.begin_training_step(batch, batch_idx)
        window_tokens = self._reduce_sum(torch.tensor(float(batch["window_target_tokens"]), device=self.device))
        self._window_has_targets = bool(window_tokens > 0)  # the same on every rank: window_tokens is global
        return self._training_loss(batch, window_tokens)

    def _training_loss(self, batch: dict, window_tokens: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of the window's token-mean loss (the objective; DPO replaces it). Adds
        the share to `_window_loss`, which `on_train_batch_end` logs once the window is complete."""
        divisor = window_tokens.clamp(min=1.0) / self._loss_scale()
        loss = self(batch, num_items_in_batch=divisor).loss
        self._window_loss = self._window_loss.to(self.device) + loss.detach() * divisor / window_tokens.clamp(min=1)
        return loss

    def _loss_scale(self) -> int:
        """What Lightning and the strategy divide the returned loss by: the accumulation steps and the ranks."""
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            scale *= self.trainer.accumulate_grad_batches  # its engine divides by the accumulation steps again
        return scale

    def _window_done(self, batch_idx: int) -> bool:
        """True at the last micro-batch of an accumulation window (or of the epoch)."""
        window_done = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        return window_done or self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self._window_done(batch_idx):
            # Every rank's share is sum(CE)/window tokens; their sum is the window's token-mean loss. A window
            # of padding batches only has no loss: it is not logged (it would read as a loss of 0.0).
            window_loss = self._reduce_sum(self._window_loss.to(self.device))
            if self._window_has_targets:
                self.log("train/loss", window_loss, prog_bar=True, on_step=True)
            else:
                self._forget_logged("on_train_batch_end", "train/loss")
            self._window_loss = torch.zeros((), device=self.device)

    def _count(self, batch: dict) -> None:
        counts = dict(batch.get("skipped", {}))
        counts[PADDING_BATCHES] = int(bool(batch.get("is_padding", False)))
        for name, count in zip(COUNTER_NAMES, counter_vector(counts)):
            self.skipped[name] += count
        totals = self._skip_totals()
        self.log_dict({f"skipped/{n}": v for n, v in zip(COUNTER_NAMES, totals)}, on_step=True, on_epoch=False)

    def _skip_totals(self) -> torch.Tensor:
        """The counters summed over ranks (a vector in `COUNTER_NAMES` order, the same length on every rank)."""
        local = torch.tensor([float(self.skipped[n]) for n in COUNTER_NAMES], device=self.device)
        return self._reduce_sum(local)

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
        if not self._window_has_targets:
            # Padding batches on every rank for the whole window: drop the (zero) gradients, so AdamW skips
            # every parameter. Zero gradients would still move the weights through momentum and weight decay.
            optimizer.zero_grad(set_to_none=True)
            self._forget_logged("on_before_optimizer_step", "train/grad_norm")
        strategy = self.trainer.strategy
        if self._window_has_targets and not isinstance(strategy, DeepSpeedStrategy):  # ZeRO holds the grads itself
            grads = [p.grad for p in self.vlm.parameters() if p.grad is not None]
            norm = global_grad_norm(grads, grad_shard_group(strategy), self.device)  # FSDP: every rank sums
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        for group in optimizer.param_groups:
            self.log(f"lr/{group['name']}", group["lr"], on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        strategy = self.trainer.strategy
        if not isinstance(strategy, FSDPStrategy) or not gradient_clip_val or gradient_clip_algorithm == "value":
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        # Lightning's FSDP plugin refuses clipping by norm (each rank holds only shards): clip by the global norm
        grads = [p.grad for p in self.vlm.parameters() if p.grad is not None]
        clip_grad_norm_global(grads, gradient_clip_val, grad_shard_group(strategy), self.device)

    def _forget_logged(self, hook: str, name: str) -> None:
        """Lightning logs a step metric's last value again at every later step of the epoch; a step that has
        no value for it (a padding-only window) must show none, not the previous step's."""
        results = self.trainer._results  # no public API removes one logged value
        key = f"{hook}.{name}"
        if results is not None and key in results:
            results[key].reset()

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.vlm, self.policy, self._planned_optimizer_steps(), self._no_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _planned_optimizer_steps(self) -> int:
        """The schedule's length, by Lightning's formula. Not `trainer.estimated_stepping_batches`: with
        `max_epochs` set it builds and starts the train loader *before* a checkpoint is restored, and that
        loader never receives its saved position (a resumed run would replay the epoch from batch 0)."""
        trainer, datamodule = self.trainer, self.trainer.datamodule
        if trainer.max_epochs in (None, -1) or not hasattr(datamodule, "train_batches_per_epoch"):
            return int(trainer.estimated_stepping_batches)
        batches, limit = datamodule.train_batches_per_epoch(), trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

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
        # Called on every rank (rank 0 writes): the counters go in as totals over ranks, the RNG states
        # as one stream per rank.
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        totals = [int(v) for v in self._skip_totals().tolist()]
        checkpoint["mm"] = {
            "stage": self.policy.stage,
            "world_size": self.trainer.world_size,
            "rng": _gather_objects(_get_rng_state(), self.trainer.world_size),
            "skipped": dict(zip(COUNTER_NAMES, totals)),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = set(checkpoint["state_dict"])
        model_keys = set(self.state_dict())
        unknown, missing = sorted(saved - model_keys), sorted(self.trainable_keys() - saved)
        if unknown or missing:
            raise CheckpointMismatch(
                f"checkpoint does not match this model/stage: unknown keys {unknown[:5]}, missing trainable keys "
                f"{missing[:5]} ({len(unknown)} unknown, {len(missing)} missing)"
            )
        extra = checkpoint.get("mm", {})
        saved_world = extra.get("world_size", 1)
        if saved_world != self.trainer.world_size:
            raise CheckpointMismatch(
                f"checkpoint was written by {saved_world} ranks and this run has {self.trainer.world_size}: the "
                f"data position and RNG streams are per rank, so resume with {saved_world} ranks (or start a new "
                "run with --model.policy.init_from on an export)"
            )
        # Rank 0 carries the saved totals forward, the others start from 0: their sum stays the total.
        totals = extra.get("skipped", {}) if self.trainer.global_rank == 0 else {}
        self.skipped = dict(zip(COUNTER_NAMES, counter_vector(totals)))
        streams = extra.get("rng")
        self._pending_rng = streams[self.trainer.global_rank] if isinstance(streams, list) else streams

    def setup(self, stage: str) -> None:
        if stage == "fit":  # a folder the export would refuse must fail now, not after the training
            check_strategy(self.trainer.strategy, self.policy)  # before configure_model builds anything
            self.check_export_dir()

    def check_export_dir(self, trainer=None) -> None:
        """Raise ExportTargetError if the export at the end of fit could destroy this run or a user's files
        (`trainer`: the one about to fit this module, before it is attached)."""
        trainer = trainer or self.trainer
        sources = [trainer.default_root_dir, trainer.log_dir, self.policy.init_from, self.policy.init_projector_from,
                   *(callback.dirpath for callback in trainer.checkpoint_callbacks)]
        check_export_target(self._export_path(trainer), sources=sources, source=self._export_source(trainer),
                            overwrite=self.overwrite_export, option="--model.overwrite_export true")

    def _export_path(self, trainer=None) -> Path:
        return Path(self.export_dir or Path((trainer or self.trainer).default_root_dir) / "export")

    def _export_source(self, trainer=None) -> str:
        """The run, as the export records it: a rerun or resumed run replaces its own export, no other's."""
        return source_identity((trainer or self.trainer).default_root_dir, "run")

    def _save_export(self, model, directory: Path) -> None:
        model.save_pretrained(directory, source=self._export_source(), overwrite=self.overwrite_export)

    def on_fit_end(self) -> None:
        if self.trainer.interrupted:
            return
        directory = self._export_path()
        if isinstance(self.trainer.strategy, FSDPStrategy):
            self._export_gathered(directory)
        elif self.trainer.global_rank == 0:
            merge_lora(self.vlm)
            self._save_export(self.vlm, directory)
            log.info("exported the trained model to %s", directory)

    def _export_gathered(self, directory: Path) -> None:
        """Sharded parameters: gather the full state on rank 0 (a collective call on every rank) and write
        it through an unsharded copy of the model built without weights."""
        state = self.trainer.strategy.lightning_module_state_dict()
        if self.trainer.global_rank != 0:
            return
        copy = build_vlm(self.vlm.resolved_config(), load_weights=False, tokenizer=self.vlm.tokenizer)
        copy.load_state_dict({key[len("vlm."):]: value for key, value in state.items()}, strict=True)
        self._save_export(copy, directory)
        log.info("exported the trained model (gathered from FSDP shards) to %s", directory)


def _check_position(batch: dict, batch_idx: int, epoch: int) -> None:
    """The loader's batch must be the one the trainer counts: anything that restarts the loader without
    its saved position would otherwise train on the wrong data without a sign."""
    index = batch.get("index_in_epoch")
    if index is not None and index != batch_idx:
        raise RuntimeError(
            f"the training loader delivered batch {index} of epoch {epoch} where the trainer is at batch "
            f"{batch_idx}: the loader did not resume from the checkpoint's position"
        )


def _gather_objects(value, world_size: int) -> list:
    """`value` of every rank, in rank order (a collective call on every rank)."""
    if world_size == 1:
        return [value]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


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
