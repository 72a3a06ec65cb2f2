"""Test helpers for the training tests: tiny shards in the mm-prep format, the offline tokenizer."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from pathlib import Path

import lightning as L
from PIL import Image

ASSET_TOKENIZER = Path(__file__).resolve().parents[1] / "mm" / "assets" / "tokenizer"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def png_bytes(color=(255, 0, 0), size=(12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def caption_record(key: str, color: str = "red", *, text: str | None = None, prompt: str = "") -> dict:
    """A one-image captioning sample: {member suffix: bytes} as a shard holds it."""
    meta = {
        "id": key,
        "source": "test",
        "conversations": [
            {"from": "human", "value": prompt + "<image>\nDescribe the image."},
            {"from": "gpt", "value": text or f"A {color} square."},
        ],
        "images": ["img0.png"],
        "image_sizes": [[12, 8]],
        "meta": {"color": color},
    }
    return {"json": json.dumps(meta).encode(), "img0.png": png_bytes(COLORS[color])}


def write_tar(path: Path, records: dict[str, dict]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in records.items():
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_shards(directory: Path, sizes: list[int], *, prefix: str = "shard", manifest: bool = True,
                 record=None) -> list[str]:
    """Shards of samples made by `record(key, color)` (default: caption samples) with keys
    `{prefix}{shard}_{index}`; returns all keys in shard order."""
    record = record or caption_record
    directory.mkdir(parents=True, exist_ok=True)
    keys, entries = [], []
    colors = list(COLORS)
    for shard, size in enumerate(sizes):
        name = f"{prefix}-{shard:06d}.tar"
        records = {}
        for index in range(size):
            key = f"{prefix}{shard}_{index}"
            records[key] = record(key, colors[(shard + index) % len(colors)])
            keys.append(key)
        write_tar(directory / name, records)
        entries.append({"name": name, "num_samples": size, "num_bytes": (directory / name).stat().st_size})
    if manifest:
        (directory / "manifest.json").write_text(json.dumps({"shards": entries, "num_samples": sum(sizes)}))
    return keys


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSET_TOKENIZER)


def write_caption_shards(directory: Path, texts: list[str], per_shard: int, prefix: str = "cap") -> list[str]:
    """Caption shards whose answers are `texts` (uneven lengths make uneven target-token counts)."""
    directory.mkdir(parents=True, exist_ok=True)
    colors, keys, entries = list(COLORS), [], []
    for shard, start in enumerate(range(0, len(texts), per_shard)):
        name = f"{prefix}-{shard:06d}.tar"
        records = {}
        for index, text in enumerate(texts[start : start + per_shard], start=start):
            key = f"{prefix}{index}"
            records[key] = caption_record(key, colors[index % len(colors)], text=text)
            keys.append(key)
        write_tar(directory / name, records)
        entries.append({"name": name, "num_samples": len(records)})
    (directory / "manifest.json").write_text(json.dumps({"shards": entries}))
    return keys


def tiny_module(stage: str = "finetune", lr: float = 1e-3, **policy):
    """A VLMTrainingModule on the tiny offline model (LLM attention: sdpa)."""
    from mm.tiny import tiny_vlm_config
    from mm.train.module import VLMTrainingModule
    from mm.train.policy import TrainingPolicy

    return VLMTrainingModule(tiny_vlm_config(), TrainingPolicy(stage=stage, lr=lr, warmup_ratio=0.0, **policy))


def tiny_data(directory: Path, **kwargs):
    from mm.data.module import ShardDataModule
    from mm.data.shards import ShardSource

    settings = {"batch_size": 2, "num_workers": 0, "max_length": 128, "template": "plain", "shuffle_buffer": 4}
    return ShardDataModule([ShardSource(str(directory))], **{**settings, **kwargs})


def cpu_trainer(root: Path, **kwargs):
    import lightning as L

    settings = dict(accelerator="cpu", devices=1, default_root_dir=str(root), logger=False,
                    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    use_distributed_sampler=False, num_sanity_val_steps=0)
    return L.Trainer(**{**settings, **kwargs})


def recorded_batches_callback():
    """A callback keeping each training batch and its loss, and the gradients at the first optimizer step."""
    import lightning as L

    class Recorder(L.Callback):
        def __init__(self):
            self.batches, self.losses, self.first_grads = [], [], None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.batches.append(batch)
            self.losses.append(float(outputs["loss"]))

        def on_before_optimizer_step(self, trainer, module, optimizer):
            if self.first_grads is None:
                self.first_grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    return Recorder()


def reference_grads(module, batches):
    """Gradients of sum(token CE over all batches) / (their target tokens), in one pass."""
    from mm.data.module import target_tokens

    module.zero_grad()
    total = sum(target_tokens(batch) for batch in batches)
    for batch in batches:
        (module(batch, num_items_in_batch=1.0).loss / total).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}




class SigkillAtStep(L.Callback):
    """For `mm-train` subprocesses (class_path `train_helpers.SigkillAtStep`): the process kills itself with
    SIGKILL before training step `step`, as an out-of-memory kill or a pre-empted node would (no exception
    handler runs, nothing is saved on the way out)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


TINY_CLI_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {steps}
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
{trainer}
model:
  model:
    vision: {{kind: hf_clip, name_or_path: {assets}/configs/hf_clip.json}}
    projector: {{kind: pixel_shuffle2x_mlp}}
    llm: {{name_or_path: {assets}/configs/llama.json, tokenizer: {assets}/tokenizer}}
  policy: {{stage: {stage}, lr: {lr}, warmup_ratio: {warmup}}}
data:
  train_shards: [{{urls: {data}}}]
  batch_size: {batch_size}
  num_workers: 0
  max_length: 64
  template: plain
"""

CSV_LOGGER = """  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: logs, version: 0}}"""


def tiny_cli_config(root: Path, data: Path, *, steps: int = 1, stage: str = "finetune", lr: float = 1e-3,
                    warmup: float = 0.0, batch_size: int = 2, trainer: str = "  logger: false") -> str:
    """An `mm-train fit --config` YAML for the tiny offline model; `trainer` = more lines of the trainer
    section (default: no logger; `CSV_LOGGER` logs to `<root>/logs/version_0`)."""
    return TINY_CLI_CONFIG.format(steps=steps, root=root, data=data, assets=ASSET_TOKENIZER.parent, stage=stage,
                                  lr=lr, warmup=warmup, batch_size=batch_size, trainer=trainer.format(root=root))
