"""``DPOTrainingModule``: preference training (stages `dpo`, `dpo_lora`) on the core training module.

Everything of `VLMTrainingModule` holds (resume and position checks, skip counters, throughput, grad norm,
checkpoints of the trainable weights, the export at the end of fit); what changes is the objective:

- batches are preference pairs (`mm.data.pairs`): the P chosen rows, then the P rejected rows, one forward
  pass for all 2P answers;
- the loss is `mm.train.dpo.preference_loss` per pair, averaged over the pairs of the whole accumulation
  window on all ranks (the loader attaches the window's pair count, as it does its target tokens for SFT);
  masked padding batches add nothing;
- the reference log-probs come from a frozen copy of the starting model (`dpo_reference: model`), or from a
  file computed once by a first pass over the train and validation pairs with the starting model itself,
  before anything trains (`dpo_reference: precomputed`: no second model in memory during training);
- logged per optimizer step: `rewards/{chosen,rejected,margin,accuracy}` and `logps/{chosen,rejected}`
  (means over the window's pairs), with `train/loss`; validation logs `val/loss`, `val/rewards/accuracy`
  and `val/rewards/margin`.

`mm-train` builds this module when `model.policy.stage` is a preference stage (`for_stage`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
import inspect
import logging
import warnings
from pathlib import Path

import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn

from mm.config import VLMConfig
from mm.data.dataset import StreamSettings
from mm.data.pairs import PreferenceStreamDataset
from mm.train.dpo import PairTerms, ReferenceLogps, model_logps, pair_key, preference_loss, reference_fingerprint
from mm.train.init import build_reference
from mm.train.module import VLMTrainingModule, _gather_objects
from mm.train.policy import PREFERENCE_STAGES, TrainingPolicy

log = logging.getLogger(__name__)

STATS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected")


class DPOTrainingModule(VLMTrainingModule):
    stream_dataset_class = PreferenceStreamDataset  # read by ShardDataModule: batches of preference pairs

    def __init__(
        self,
        model: VLMConfig,
        policy: TrainingPolicy = TrainingPolicy(stage="dpo"),
        export_dir: str | None = None,
        trust_remote_code: bool = False,
        overwrite_export: bool = False,
    ):
        """A vision-language model trained on preference pairs (arguments as `VLMTrainingModule`'s)."""
        if policy.stage not in PREFERENCE_STAGES:
            raise ValueError(f"DPOTrainingModule trains stages {list(PREFERENCE_STAGES)}, not {policy.stage!r}")
        super().__init__(model, policy, export_dir, trust_remote_code, overwrite_export)
        self.reference = None  # the frozen starting model (dpo_reference: model), built in configure_model
        self.reference_logps: ReferenceLogps | None = None  # dpo_reference: precomputed, loaded in on_fit_start
        self._window_stats = torch.zeros(len(STATS) + 1)  # sums over the window's pairs, then their count
        self._val_stats = torch.zeros(len(STATS) + 2)  # loss sum, the stats' sums, count

    @classmethod
    def from_module(cls, module: VLMTrainingModule) -> "DPOTrainingModule":
        """This class with `module`'s init arguments (`mm-train` builds a `VLMTrainingModule` from the config)."""
        names = [name for name in inspect.signature(VLMTrainingModule.__init__).parameters if name != "self"]
        return cls(**{name: getattr(module, "model_config" if name == "model" else name) for name in names})

    # ----------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        super().configure_model()
        if self.policy.dpo_disable_dropout:
            disable_dropout(self.vlm)
        if self.policy.dpo_reference == "model":
            self.reference = build_reference(self.model_config, self.policy, trust_remote_code=self.trust_remote_code)
            # the frozen reference stays in eval mode on purpose; Lightning, which has no switch for its warning
            # about modules in eval mode, would otherwise warn on every fit
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training\.",
                                    category=PossibleUserWarning)

    def on_fit_start(self) -> None:
        if self.policy.dpo_reference == "precomputed":
            self.reference_logps = self._precomputed_reference()

    def on_validation_start(self) -> None:  # `mm-train validate` runs no fit
        if self.policy.dpo_reference == "precomputed" and self.reference_logps is None:
            self.reference_logps = self._precomputed_reference()

    # ----------------------------------------------------------------- the objective
    def pair_terms(self, batch: dict) -> tuple[PairTerms, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss terms per pair, policy log-probs of chosen and rejected answers, valid-pair mask)."""
        pixel_values = batch.get("pixel_values")
        if pixel_values is not None:
            pixel_values = self.image_transform.normalize(pixel_values)
        policy, tokens = model_logps(self.vlm, batch, pixel_values)
        reference = self._reference_sums(batch, pixel_values)
        pairs = batch["num_samples"]
        chosen_tokens, rejected_tokens = tokens[:pairs], tokens[pairs:]
        settings = self.policy
        terms = preference_loss(
            policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:],
            loss_type=settings.dpo_loss, beta=settings.dpo_beta, label_smoothing=settings.dpo_label_smoothing,
            sft_weight=settings.dpo_sft_weight, chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
        )
        valid = (chosen_tokens > 0) & (rejected_tokens > 0)  # a masked padding batch has no answer tokens
        return terms, policy[:pairs].detach(), policy[pairs:].detach(), valid

    def _reference_sums(self, batch: dict, pixel_values) -> torch.Tensor:
        if self.reference_logps is not None:
            chosen, rejected = self.reference_logps.lookup(batch["keys"], self.device)
            return torch.cat([chosen, rejected])
        if self.reference is None:
            raise RuntimeError("no reference log-probs: dpo_reference 'precomputed' loads them in fit (on_fit_start)")
        with torch.no_grad():
            return model_logps(self.reference, batch, pixel_values)[0]

    def _stats(self, terms: PairTerms, chosen, rejected, valid) -> torch.Tensor:
        weight = valid.float()
        margin = terms.chosen_rewards - terms.rejected_rewards
        accuracy = (terms.chosen_rewards > terms.rejected_rewards).float()
        values = [terms.chosen_rewards, terms.rejected_rewards, margin, accuracy, chosen, rejected]
        return torch.stack([(value.float() * weight).sum() for value in values] + [weight.sum()])

    def _training_loss(self, batch: dict, window_tokens: torch.Tensor) -> torch.Tensor:
        window_pairs = self._reduce_sum(torch.tensor(float(batch["window_samples"]), device=self.device))
        divisor = window_pairs.clamp(min=1.0) / self._loss_scale()
        terms, chosen, rejected, valid = self.pair_terms(batch)
        loss = (terms.losses * valid).sum() / divisor
        self._window_loss = self._window_loss.to(self.device) + loss.detach() * divisor / window_pairs.clamp(min=1)
        self._window_stats = self._window_stats.to(self.device) + self._stats(terms, chosen, rejected, valid)
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self._window_done(batch_idx):
            totals = self._reduce_sum(self._window_stats.to(self.device))
            if totals[-1] > 0:
                self.log_dict({name: totals[i] / totals[-1] for i, name in enumerate(STATS)}, on_step=True,
                              on_epoch=False)
            else:
                for name in STATS:
                    self._forget_logged("on_train_batch_end", name)
            self._window_stats = torch.zeros_like(self._window_stats)
        super().on_train_batch_end(outputs, batch, batch_idx)

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms, chosen, rejected, valid = self.pair_terms(batch)
        loss = (terms.losses.detach() * valid).sum().reshape(1)
        self._val_stats = self._val_stats.to(self.device) + torch.cat([loss, self._stats(terms, chosen, rejected, valid)])

    def on_validation_epoch_end(self) -> None:
        totals = self._reduce_sum(self._val_stats.to(self.device))
        count = totals[-1].clamp(min=1)
        self.log("val/loss", totals[0] / count, prog_bar=True, sync_dist=False)
        self.log("val/rewards/accuracy", totals[1 + STATS.index("rewards/accuracy")] / count, sync_dist=False)
        self.log("val/rewards/margin", totals[1 + STATS.index("rewards/margin")] / count, sync_dist=False)
        self._val_stats = torch.zeros_like(self._val_stats)

    # ----------------------------------------------------------------- precomputed reference
    def reference_settings(self) -> dict:
        """What the reference log-probs depend on besides the pairs: the starting model and the encoding."""
        data, policy = self.trainer.datamodule, self.policy
        path = lambda value: str(Path(value).resolve()) if value else None  # noqa: E731
        return {
            "model": self.model_config.to_dict(),
            "init_from": path(policy.init_from),
            "init_projector_from": path(policy.init_projector_from),
            "init_seed": policy.init_seed,
            "template": data.template or self.vlm.config.chat_template,
            "max_length": data.max_length,
        }

    def reference_path(self, settings: dict) -> Path:
        if self.policy.dpo_reference_logps:
            return Path(self.policy.dpo_reference_logps)
        first = self.trainer.datamodule.train_sources[0].shards[0].url
        if first.startswith("pipe:") or "://" in first:
            raise ValueError("dpo_reference 'precomputed' with remote shards needs --model.policy.dpo_reference_logps")
        return Path(first).parent / f"reference_logps-{reference_fingerprint(settings)}.json"

    def _precomputed_reference(self) -> ReferenceLogps:
        settings = self.reference_settings()
        path = self.reference_path(settings)
        if path.is_file():
            log.info("reference log-probs from %s", path)
            return ReferenceLogps.load(path, settings)
        if self.trainer.ckpt_path is not None:  # the weights are no longer the starting model's
            raise RuntimeError(f"resuming needs the reference log-probs of the first run's start, and {path} is gone")
        parts = _gather_objects(self._compute_reference_logps(), self.trainer.world_size)
        table = ReferenceLogps(settings, unique_pairs([entry for part in parts for entry in part]))
        if self.trainer.global_rank == 0:
            table.save(path)
            log.info("reference log-probs of %d pairs written to %s", len(table.logps), path)
        self.trainer.strategy.barrier("dpo-reference")
        return table

    @torch.no_grad()
    def _compute_reference_logps(self) -> list[tuple[str, tuple[float, float]]]:
        """This rank's share of every train and validation pair, with the model as it starts (the policy
        before its first step is the reference: `build_for_stage` and `build_reference` load the same
        weights, LoRA adapters start as the identity, dropout is off in eval mode)."""
        data = self.trainer.datamodule
        decoder, pad_id = data._decoder()
        settings = StreamSettings(batch_size=data.batch_size, shuffle=False, max_length=data.max_length)
        sources = [dataclasses.replace(source, weight=1.0) for source in data.train_sources + data.val_sources]
        dataset = PreferenceStreamDataset(sources, decoder, pad_id, settings, rank=self.trainer.global_rank,
                                          world_size=self.trainer.world_size, num_workers=0)
        was_training, found = self.vlm.training, []
        self.vlm.eval()
        try:
            with self.trainer.precision_plugin.forward_context():
                for batch in dataset:
                    if batch["is_padding"]:
                        continue
                    pixel_values = batch["pixel_values"]
                    if pixel_values is not None:
                        pixel_values = self.image_transform.normalize(pixel_values.to(self.device))
                    tensors = {name: batch[name].to(self.device) for name in ("input_ids", "labels", "attention_mask")}
                    tensors["image_sizes"] = batch["image_sizes"]
                    sums = model_logps(self.vlm, tensors, pixel_values)[0].tolist()
                    pairs = batch["num_samples"]
                    for index, key in enumerate(batch["keys"]):
                        found.append((pair_key(key), (sums[index], sums[pairs + index])))
        finally:
            self.vlm.train(was_training)
        return found


def unique_pairs(entries: list[tuple[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """{pair key: log-probs}, refusing two pairs under one key (one would get the other's reference)."""
    shared = [key for key, count in Counter(key for key, _ in entries).items() if count > 1]
    if shared:
        raise ValueError(
            f"{len(shared)} reference keys (shard folder/file#record key) belong to more than one preference pair, "
            f"e.g. {shared[0]!r}: give the train and validation shard folders distinct names, or use "
            "dpo_reference 'model'"
        )
    return dict(entries)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (nn.Dropout layers, LoRA's included, and attention dropout rates)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def for_stage(module: VLMTrainingModule) -> VLMTrainingModule:
    """The module that trains `module.policy.stage`: `DPOTrainingModule` for the preference stages."""
    if module.policy.stage in PREFERENCE_STAGES and not isinstance(module, DPOTrainingModule):
        return DPOTrainingModule.from_module(module)
    return module
