"""``ContrastiveTrainingModule``: stage `contrastive`, a vision tower trained with a small text encoder on
image-caption shards with open_clip's losses (the parts and functions are in `mm.train.contrastive`).

What stays the core's (`VLMTrainingModule`): the shard data module and its resumable per-rank streams
(batches of pairs: `mm.train.contrastive.CaptionStreamDataset`), the position check, skip counters,
throughput, grad norm, the checkpoints of the trainable weights with one RNG stream per rank, the export
folder rules. What changes:

- the model: no projector and no LLM; the tower (`build_vision_tower`, seeded by `init_seed`), an image
  head, a text encoder on the model's tokenizer, a logit scale (and bias); everything trains;
- the objective: open_clip's `ClipLoss` (`contrastive_local_loss`, `contrastive_gather_with_grad`) or
  `SigLipLoss`, with rank and world size, as open_clip's training uses them: under DDP each rank's features
  meet every rank's (gathered); the loss returned is each rank's, DDP averages the gradients;
- logged per optimizer step: `train/loss` (the mean over the window's micro-batches and the ranks),
  `train/i2t_acc` and `train/t2i_acc` (in-batch top-1 retrieval over the gathered batch); validation logs
  `val/loss`, `val/i2t_acc`, `val/t2i_acc` the same way;
- the export: the tower alone, as a folder its kind loads from `name_or_path` (`hf_clip` / `hf_siglip`: a
  transformers `save_pretrained` directory, config.json + model.safetensors + preprocessor_config.json
  with the normalisation; `open_clip`: `open_clip_config.json` for `name_or_path` and
  `open_clip_model.safetensors` for `pretrained`).

A masked padding batch (a consumer short of samples because some were skipped as corrupt) adds nothing to
its rank's loss, but its features still take part as negatives in the other ranks' gathered batch.
`mm-train` builds this module when `model.policy.stage` is `contrastive` (`for_stage`).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from mm.atomic import write_json_atomic
from mm.config import VLMConfig
from mm.export_target import export_directory
from mm.llm import _add_special_token, load_tokenizer, tokenizer_source
from mm.train.contrastive import (
    LOGIT_SCALE_MAX,
    CaptionStreamDataset,
    ContrastivePair,
    contrastive_data_problem,
    gathered,
    loss_value,
    make_loss,
    retrieval_hits,
)
from mm.train.dpo_module import for_stage as preference_for_stage
from mm.train.module import VLMTrainingModule
from mm.train.optim import no_decay_names, warmup_cosine
from mm.train.policy import CONTRASTIVE_STAGE, TrainingPolicy
from mm.vision import build_vision_tower
from mm.vision.hf import HFCLIPVisionTower, HFVisionTower
from mm.vision.openclip_tower import OpenCLIPVisionTower

log = logging.getLogger(__name__)

STATS = ("loss", "i2t_acc", "t2i_acc")


class ContrastiveTrainingModule(VLMTrainingModule):
    stream_dataset_class = CaptionStreamDataset  # read by ShardDataModule: batches of (image, caption) pairs

    def __init__(
        self,
        model: VLMConfig,
        policy: TrainingPolicy = TrainingPolicy(stage=CONTRASTIVE_STAGE),
        export_dir: str | None = None,
        trust_remote_code: bool = False,
        overwrite_export: bool = False,
    ):
        """A vision tower and a small text encoder trained contrastively (arguments as `VLMTrainingModule`'s;
        `export_dir` receives the tower)."""
        if policy.stage != CONTRASTIVE_STAGE:
            raise ValueError(f"ContrastiveTrainingModule trains stage {CONTRASTIVE_STAGE!r}, not {policy.stage!r}")
        if policy.init_from or policy.init_projector_from:
            raise ValueError("init_from / init_projector_from do not apply to stage 'contrastive' (no projector or "
                             "LLM): to start from a trained tower, set model.vision.name_or_path to it")
        if model.image_transform == "anyres":
            raise ValueError("stage 'contrastive' trains on one view per image: set model.image_transform to pad, "
                             "resize or crop")
        super().__init__(model, policy, export_dir, trust_remote_code, overwrite_export)
        self._loss_module = None
        self._window_stats = torch.zeros(5)  # loss sum, real micro-batches, i2t hits, t2i hits, queries
        self._val_stats = torch.zeros(5)

    @classmethod
    def from_module(cls, module: VLMTrainingModule) -> ContrastiveTrainingModule:
        """This class with `module`'s init arguments (`mm-train` builds a `VLMTrainingModule` from the config)."""
        names = [name for name in inspect.signature(VLMTrainingModule.__init__).parameters if name != "self"]
        return cls(**{name: getattr(module, "model_config" if name == "model" else name) for name in names})

    # ----------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        config, policy = self.model_config, self.policy
        tokenizer = load_tokenizer(tokenizer_source(config.llm), trust_remote_code=self.trust_remote_code,
                                   image_token=config.image_token)
        if config.image_token not in tokenizer.get_vocab():  # as build_vlm: the decoder needs the placeholder
            _add_special_token(tokenizer, config.image_token)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(policy.init_seed)
            tower = build_vision_tower(config.vision)
            self.vlm = ContrastivePair(
                config, tower, tokenizer, loss=policy.contrastive_loss, embed_dim=policy.contrastive_embed_dim,
                text_width=policy.contrastive_text_width, text_layers=policy.contrastive_text_layers,
                text_heads=policy.contrastive_text_heads, text_max_length=policy.contrastive_text_max_length,
            )
        self.vlm.requires_grad_(True)
        self.vlm.train()  # from_pretrained leaves towers in eval mode
        unused = freeze_off_path(self.vlm)
        if unused:
            log.info("stage contrastive: %d tower tensors are not on the path of its features (blocks above "
                     "select_layer, a final norm or head) and stay as they are", len(unused))
        if policy.gradient_checkpointing:
            tower.gradient_checkpointing_enable()
        self._no_decay = no_decay_names(self.vlm)
        self.image_transform = self.vlm.make_image_transform()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        settings = getattr(datamodule, "settings", None)
        if isinstance(settings, dict):
            problem = contrastive_data_problem(batch_size=settings["batch_size"], packing=settings["packing"])
            if problem:
                raise ValueError(problem)
            # full batches on every rank (see CaptionStreamDataset); the LR schedule counts the same batches
            settings["drop_uneven_tail"] = True

    def loss_module(self):
        if self._loss_module is None:
            policy = self.policy
            rank, world = self._rank_and_world()
            self._loss_module = make_loss(policy.contrastive_loss, rank=rank, world_size=world,
                                          local_loss=policy.contrastive_local_loss,
                                          gather_with_grad=policy.contrastive_gather_with_grad)
        return self._loss_module

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised (image, caption) embeddings of a batch's pairs."""
        pixel_values = self.image_transform.normalize(batch["pixel_values"])
        return self.vlm.encode_image(pixel_values), self.vlm.encode_text(batch["input_ids"], batch["attention_mask"])

    def pair_terms(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's open_clip loss, [loss, 1, i2t hits, t2i hits, queries] of this rank's rows, zero for
        a padding batch). Retrieval: this rank's images against every rank's captions and back."""
        image, text = self.embed(batch)
        loss = loss_value(self.loss_module(), image, text, self.vlm.logit_scale, self.vlm.logit_bias)
        rank, world = self._rank_and_world()
        with torch.no_grad():
            all_image, all_text = gathered(image.detach(), text.detach(), rank, world)
            offset = rank * image.shape[0]
            i2t, t2i = retrieval_hits(image.detach(), all_text, offset), retrieval_hits(text.detach(), all_image, offset)
        real = 0.0 if batch.get("is_padding") else 1.0
        stats = torch.stack([loss.detach().float(), torch.ones((), device=loss.device), i2t.float(), t2i.float(),
                             torch.tensor(float(image.shape[0]), device=loss.device)]) * real
        return loss * real, stats

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.begin_training_step(batch, batch_idx)
        window_samples = self._reduce_sum(torch.tensor(float(batch["window_samples"]), device=self.device))
        self._window_has_targets = bool(window_samples > 0)  # the same on every rank
        loss, stats = self.pair_terms(batch)
        self._window_stats = self._window_stats.to(self.device) + stats
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():  # as open_clip's training loop, after every step
            self.vlm.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if not self._window_done(batch_idx):
            return
        totals = self._reduce_sum(self._window_stats.to(self.device))
        if totals[1] > 0:
            self.log("train/loss", totals[0] / totals[1], prog_bar=True, on_step=True)
            self.log_dict({"train/i2t_acc": totals[2] / totals[4], "train/t2i_acc": totals[3] / totals[4]},
                          on_step=True, on_epoch=False)
        else:
            for name in STATS:
                self._forget_logged("on_train_batch_end", f"train/{name}")
        self._window_stats = torch.zeros_like(self._window_stats)

    def configure_optimizers(self):
        lrs = {"vision_tower": self.policy.vision_lr if self.policy.vision_lr is not None else self.policy.lr}
        groups: dict[tuple[str, bool], list] = {}
        for name, param in self.vlm.named_parameters():
            if param.requires_grad:
                part = "vision_tower" if name.startswith("vision_tower.") else "text_and_heads"
                groups.setdefault((part, name not in self._no_decay), []).append(param)
        param_groups = [
            {"name": f"{part}/{'decay' if decay else 'no_decay'}", "params": params,
             "lr": lrs.get(part, self.policy.lr), "weight_decay": self.policy.weight_decay if decay else 0.0}
            for (part, decay), params in sorted(groups.items())
        ]
        optimizer = torch.optim.AdamW(param_groups, betas=self.policy.betas, eps=self.policy.eps)
        factor = warmup_cosine(self._planned_optimizer_steps(), self.policy.warmup_ratio, self.policy.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, stats = self.pair_terms(batch)
        self._val_stats = self._val_stats.to(self.device) + stats

    def on_validation_epoch_end(self) -> None:
        totals = self._reduce_sum(self._val_stats.to(self.device))
        queries = totals[4].clamp(min=1)
        self.log("val/loss", totals[0] / totals[1].clamp(min=1), prog_bar=True, sync_dist=False)
        self.log_dict({"val/i2t_acc": totals[2] / queries, "val/t2i_acc": totals[3] / queries}, sync_dist=False)
        self._val_stats = torch.zeros_like(self._val_stats)

    # ----------------------------------------------------------------- export
    def on_fit_end(self) -> None:
        if self.trainer.interrupted or self.trainer.global_rank != 0:
            return
        directory = self._export_path()
        export_tower(self.vlm.vision_tower, directory, source=self._export_source(), overwrite=self.overwrite_export)
        log.info("exported the trained vision tower to %s", directory)


def freeze_off_path(pair: ContrastivePair) -> list[str]:
    """Freeze the parameters no gradient reaches (the tower's blocks above `select_layer`, its final norm or
    pooling head), found by one backward pass on blank input; returns their names. DDP then needs no search
    for unused parameters, and the optimizer holds only what trains."""
    tower = pair.vision_tower
    with torch.random.fork_rng(devices=[]):
        pixels = torch.zeros(2, 3, tower.image_size, tower.image_size, device=pair.logit_scale.device)
        ids = torch.zeros(2, 1, dtype=torch.long, device=pixels.device)
        total = pair.encode_image(pixels).sum() + pair.encode_text(ids, torch.ones_like(ids)).sum()
        total.backward()
    unused = [name for name, param in pair.named_parameters()
              if param.grad is None and name.startswith("vision_tower.")]
    for name, param in pair.named_parameters():
        if name in unused:
            param.requires_grad_(False)
        param.grad = None
    return unused


def export_tower(tower, directory: str | Path, *, source: str, overwrite: bool = False) -> None:
    """Write `tower` as a folder its kind loads from `name_or_path` (weights as safetensors), through
    `export_directory` (its record, the replace-only-ours rules)."""
    with export_directory(directory, source=source, overwrite=overwrite) as folder:
        if isinstance(tower, HFVisionTower):
            tower.model.save_pretrained(folder, safe_serialization=True)
            size = tower.image_size
            if isinstance(tower, HFCLIPVisionTower):
                from transformers import CLIPImageProcessor as processor_class

                sizes = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
            else:
                from transformers import SiglipImageProcessor as processor_class

                sizes = {"size": {"height": size, "width": size}}
            processor_class(image_mean=list(tower.image_mean), image_std=list(tower.image_std), **sizes).save_pretrained(folder)
        elif isinstance(tower, OpenCLIPVisionTower):
            write_json_atomic(folder / "open_clip_config.json", tower.model_config)
            state = {name: value.detach().contiguous() for name, value in tower.visual.state_dict().items()}
            save_file(state, str(folder / "open_clip_model.safetensors"))
        else:
            raise ValueError(f"cannot export a {type(tower).__name__} tower")


def for_stage(module: VLMTrainingModule) -> VLMTrainingModule:
    """The module that trains `module.policy.stage`: `ContrastiveTrainingModule` for `contrastive`,
    `DPOTrainingModule` for the preference stages (`mm.train.dpo_module.for_stage`), else `module`."""
    if module.policy.stage == CONTRASTIVE_STAGE and not isinstance(module, ContrastiveTrainingModule):
        return ContrastiveTrainingModule.from_module(module)
    return preference_for_stage(module)


__all__ = ["ContrastiveTrainingModule", "export_tower", "for_stage"]
