"""``ShardDataModule``: webdataset shards -> per-rank batch streams for Lightning.

Rank and world size come from the trainer (Lightning's launcher does not set ``RANK`` for the processes
it spawns, so environment variables alone would make every rank read every shard). The loader is
*stateful*: Lightning stores ``{epoch, batches}`` in checkpoints, and a resumed run skips exactly the
batches already trained on. It also looks ahead over each gradient-accumulation window and attaches the
window's target-token count (and its count of real samples) to its batches, so the loss can be normalised by the tokens of the whole
window (see ``VLMTrainingModule``).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import lightning as L
from torch.utils.data import DataLoader

from mm.chat import IGNORE_INDEX
from mm.data.dataset import ShardStreamDataset, StreamSettings
from mm.data.samples import SampleDecoder
from mm.data.shards import ShardSource, resolve_source

log = logging.getLogger(__name__)


def target_tokens(batch: dict) -> int:
    """Labelled next-token targets in a batch (the first position of a row is never a target)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def windowed(batches: Iterator[dict], window: int, start: int = 0) -> Iterator[dict]:
    """Attach ``window_target_tokens`` (the sum over the batch's accumulation window) to every batch.
    Windows are ``[k*window, (k+1)*window)`` of the epoch's batch index; ``start`` is the first index."""
    index, pending = start, []
    for batch in batches:
        pending.append(batch)
        index += 1
        if index % window == 0:
            yield from _flush(pending)
            pending = []
    yield from _flush(pending)


def _flush(pending: list[dict]) -> Iterator[dict]:
    total = sum(target_tokens(batch) for batch in pending)
    samples = sum(batch["num_samples"] for batch in pending if not batch.get("is_padding"))
    for batch in pending:
        yield {**batch, "window_target_tokens": total, "window_samples": samples}


class StreamLoader:
    """The batches of a ``ShardStreamDataset`` for Lightning: sized, checkpointed and resumed mid-epoch.

    Not a DataLoader subclass: Lightning warns about every DataLoader over an IterableDataset that reports a
    length (it may count duplicated worker data). This stream's length is exact by construction (every worker
    yields its quota, see ``mm.data.dataset``), and Lightning trusts a plain sized iterable, so epochs, progress
    totals and validation intervals keep their length without the warning."""

    def __init__(
        self,
        dataset: ShardStreamDataset,
        *,
        num_workers: int,
        accumulate: int,
        position: Callable[[], tuple[int, int]],
        pin_memory: bool = False,
    ):
        self.stream = dataset
        self.loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
        self.accumulate = accumulate
        self.position = position  # () -> (epoch, batches consumed in it) from the trainer
        self.resume_state: dict | None = None

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        epoch, _ = self.position()
        state, self.resume_state = self.resume_state, None
        skip = state["batches"] if state is not None and state["epoch"] == epoch else 0
        if skip >= len(self):
            # A checkpoint on an epoch's last batch: Lightning counts that epoch as done, but only after this
            # iterator is made (in its loop's reset), and would run its next epoch on this empty one
            epoch, skip = epoch + 1, 0
        if skip % self.accumulate:
            log.warning("resuming inside an accumulation window: its first batches' tokens are not counted")
        self.stream.epoch, self.stream.skip_batches = epoch, skip
        return windowed(self._batches(), self.accumulate, start=skip)

    def _batches(self) -> Iterator[dict]:
        # The workers start at the first batch: Lightning calls iter() once only to probe a non-DataLoader.
        yield from self.loader

    def state_dict(self) -> dict:
        epoch, batches = self.position()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict) -> None:
        self.resume_state = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


class ShardDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_shards: list[ShardSource],
        val_shards: list[ShardSource] | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        max_length: int | None = 2048,
        template: str | None = None,
        shuffle_buffer: int = 1000,
        group_batches: int = 1,
        packing: bool = False,
        drop_uneven_tail: bool = False,
        seed: int = 0,
        pin_memory: bool = False,
    ):
        """Streaming webdataset shards.

        Args:
            train_shards: Training shard sets, mixed by their weights.
            val_shards: Validation shard sets (read in order, unshuffled).
            batch_size: Samples per batch on each rank (global batch = batch_size x ranks x accumulation).
            num_workers: Dataloader worker processes per rank.
            max_length: Longest sample in tokens; longer ones are cut after their last image or skipped.
            template: Chat template (`plain`, `vicuna_v1`, `chat_template`); None = the model's.
            shuffle_buffer: Raw samples held for shuffling.
            group_batches: Length grouping: batches' worth of samples sorted by length together (1 = off).
            packing: Pack each batch's samples into rows of `max_length` tokens, attention isolated per sample.
            drop_uneven_tail: Drop the uneven remainder instead of filling ranks up with masked batches.
            seed: Seed of shard order and shuffling (per epoch).
            pin_memory: Pin host memory of batches (GPU training).
        """
        super().__init__()
        self.train_shards, self.val_shards = list(train_shards), list(val_shards or [])
        self.batch_size, self.num_workers, self.max_length = batch_size, num_workers, max_length
        self.template, self.pin_memory = template, pin_memory
        self.settings = dict(
            batch_size=batch_size, shuffle_buffer=shuffle_buffer, group_batches=group_batches,
            packing=packing, max_length=max_length, drop_uneven_tail=drop_uneven_tail, seed=seed,
        )
        self.rank, self.world_size = 0, 1

    def setup(self, stage: str) -> None:
        # Global rank and world size from the trainer, not from environment variables.
        self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        self.train_sources = [resolve_source(source) for source in self.train_shards]
        self.val_sources = [resolve_source(source) for source in self.val_shards]
        if stage == "fit" and not self.val_sources:
            # No validation split: switch validation off the documented way. An empty loader would be
            # counted as one of length 0 and warned about ("Total length of `list` across ranks is zero").
            self.trainer.limit_val_batches = 0

    def _decoder(self) -> tuple[SampleDecoder, int]:
        vlm = getattr(self.trainer.lightning_module, "vlm", None)
        if vlm is None:
            raise RuntimeError("ShardDataModule needs the LightningModule's `vlm` (built in configure_model)")
        decoder = SampleDecoder(
            tokenizer=vlm.tokenizer,
            template=self.template or vlm.config.chat_template,
            image_tokens=vlm.image_tokens,
            image_transform=vlm.make_image_transform(),
            image_token=vlm.config.image_token,
            max_length=self.max_length,
        )
        return decoder, vlm.tokenizer.pad_token_id

    def dataset_class(self) -> type[ShardStreamDataset]:
        """The stream's class: the LightningModule's `stream_dataset_class` when it has one (preference
        training reads pairs: `mm.data.pairs.PreferenceStreamDataset`), else `ShardStreamDataset`."""
        return getattr(self.trainer.lightning_module, "stream_dataset_class", ShardStreamDataset)

    def _loader(self, sources, *, shuffle: bool, accumulate: int, position) -> StreamLoader:
        decoder, pad_id = self._decoder()
        settings = StreamSettings(shuffle=shuffle, **self.settings)
        dataset = self.dataset_class()(sources, decoder, pad_id, settings, rank=self.rank,
                                       world_size=self.world_size, num_workers=self.num_workers)
        return StreamLoader(dataset, num_workers=self.num_workers, accumulate=accumulate, position=position,
                            pin_memory=self.pin_memory)

    def train_batches_per_epoch(self) -> int:
        """Batches this rank's train loader yields in the first epoch, counted from the shard sizes alone
        (nothing is read or decoded), so the LR schedule can be sized before the loader exists."""
        settings = StreamSettings(shuffle=True, **self.settings)
        counting = ShardStreamDataset(self.train_sources, decoder=None, pad_id=0, settings=settings,
                                      rank=self.rank, world_size=self.world_size, num_workers=self.num_workers)
        return len(counting)

    def train_dataloader(self) -> StreamLoader:
        trainer = self.trainer

        def position() -> tuple[int, int]:
            return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

        return self._loader(self.train_sources, shuffle=True, accumulate=trainer.accumulate_grad_batches,
                            position=position)

    def val_dataloader(self) -> StreamLoader | list:
        if not self.val_sources:
            return []
        return self._loader(self.val_sources, shuffle=False, accumulate=1, position=lambda: (0, 0))
