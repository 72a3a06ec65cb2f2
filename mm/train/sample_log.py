"""``SampleLog``: which samples each training step saw, one JSON line per batch and rank.

    trainer:
      callbacks:
        - class_path: mm.train.sample_log.SampleLog

It answers the audit questions of a run — did every sample of an epoch train exactly once, which data
a resumed run replayed — and gives data-curation work the order a model saw its data in. Lines are
appended and flushed as they are written, so a killed run keeps the lines of the batches it trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class SampleLog(L.Callback):
    def __init__(self, dirpath: str | None = None):
        """Log the sample keys of every training batch.

        Args:
            dirpath: Folder of the `rank<N>.jsonl` files; None = `<default_root_dir>/samples`.
        """
        self.dirpath = dirpath
        self._file = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        directory = Path(self.dirpath or Path(trainer.default_root_dir) / "samples")
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(directory / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8")

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, batch_idx: int) -> None:
        row = {"epoch": trainer.current_epoch, "batch": batch_idx, "step": trainer.global_step,
               "padding": bool(batch.get("is_padding", False)), "keys": list(batch["keys"])}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
