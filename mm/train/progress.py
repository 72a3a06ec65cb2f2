"""``ProgressLines``: training progress as one short line every N optimizer steps, for logs and pipes.

    step 120/1500  loss 0.5621  lr 4.8e-05  2037 tok/s  elapsed 1m02s  ETA 10m31s

`mm-train` adds it when the progress bar is off (`--trainer.enable_progress_bar false`) and no
``ProgressLines`` is configured; list it in ``trainer.callbacks`` to choose ``every_n_steps``.
"""

from __future__ import annotations

import math
import time

import lightning as L


class ProgressLines(L.Callback):
    def __init__(self, every_n_steps: int = 50):
        """Print a progress line to stdout every `every_n_steps` optimizer steps (global rank 0 only).

        Args:
            every_n_steps: Optimizer steps between two lines (the last step always gets one).
        """
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._due: int | None = None  # the step whose line waits for its logged values
        self._printed = -1
        self._start_time = 0.0
        self._start_step = 0
        self._total: int | float = math.inf

    def on_train_start(self, trainer, module) -> None:
        self._start_time, self._start_step = time.perf_counter(), trainer.global_step
        self._printed = trainer.global_step  # a resumed run's checkpoint step was reported by the first run
        # The train loader exists by now, so this only reads its length (max_steps and epochs both count).
        total = trainer.estimated_stepping_batches
        self._total = int(total) if math.isfinite(total) and total > 0 else math.inf  # -1: unsized and no max_steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._printed and (step % self.every_n_steps == 0 or step >= self._total):
            self._due = step

    # The module logs a window's loss in its own on_train_batch_end, which Lightning calls after the
    # callbacks' one: a due line is printed at the next hook that sees it.
    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._flush(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer, module) -> None:
        if self._due is None and trainer.global_step != self._printed:  # an end the total did not foresee
            self._due = trainer.global_step
        self._flush(trainer)

    def _flush(self, trainer) -> None:
        if self._due is None:
            return
        step, self._due, self._printed = self._due, None, self._due
        if trainer.is_global_zero:
            print(self.line(trainer, step), flush=True)

    def line(self, trainer, step: int) -> str:
        metrics = trainer.callback_metrics
        elapsed = time.perf_counter() - self._start_time
        parts = [f"step {step}/{self._total}" if math.isfinite(self._total) else f"step {step}"]
        if "train/loss" in metrics:
            parts.append(f"loss {float(metrics['train/loss']):.4f}")
        # the rates the step used, as the module logs them per parameter group (`lr/<group>`)
        rates = sorted((float(value) for name, value in metrics.items() if name.startswith("lr/")), reverse=True)
        if rates:
            parts.append("lr " + "/".join(dict.fromkeys(f"{rate:.1e}" for rate in rates)))
        if "throughput/tokens_per_s" in metrics:
            parts.append(f"{float(metrics['throughput/tokens_per_s']):.0f} tok/s")
        parts.append(f"elapsed {duration(elapsed)}")
        done = step - self._start_step
        if done > 0 and math.isfinite(self._total) and step < self._total:
            parts.append(f"ETA {duration(elapsed / done * (self._total - step))}")
        return "  ".join(parts)


def duration(seconds: float) -> str:
    """`42s`, `1m02s`, `3h05m`: short and fixed-width enough to scan down a log."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
