"""The per-rank iterable of batches: equal length on every rank, deterministic, resumable.

Each (rank, worker) pair is one consumer of the epoch's global sample sequence (see ``mm.data.stream``).
Every worker yields exactly ``batches_per_worker`` batches, so every rank yields the same number and DDP
never waits on a rank that ran out. Consumers whose slice is short (the uneven remainder, or samples
skipped as corrupt) fill up with *masked* batches: a copy of their last batch with every label ignored,
which adds nothing to the token-normalised loss or its gradient (flagged ``is_padding``). With
``drop_uneven_tail`` the quota is instead the shortest consumer's count of full batches and the samples
beyond it are dropped (counted as ``dropped/uneven_tail``).

The stream depends only on (sources, seed, epoch, rank, world size, workers), so a resumed run replays
the first ``skip_batches`` batches without yielding them and continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from torch.utils.data import IterableDataset, get_worker_info

from mm.data.batching import collate, length_grouped, masked_copy, pack
from mm.data.samples import Sample, SampleDecoder, SkipSample
from mm.data.skips import SkipReason
from mm.data.shards import ResolvedSource, ShardSourceError
from mm.data.stream import consumer_bounds, plan_epoch, read_pieces, shuffle_buffer, slice_pieces

log = logging.getLogger(__name__)


class NoUsableSample(ShardSourceError):
    """Every sample a consumer was given was skipped: bad input (the data or max_length), not a bug."""


@dataclass
class StreamSettings:
    batch_size: int
    """Samples per batch on each rank."""
    shuffle: bool = True
    """Shuffle shard order and samples (seeded per epoch)."""
    shuffle_buffer: int = 1000
    """Raw (undecoded) samples held for shuffling."""
    group_batches: int = 1
    """Length grouping: sort this many batches' worth of samples by length before batching (1 = off)."""
    packing: bool = False
    """Pack each batch's samples into as few rows of `max_length` tokens as they fit."""
    max_length: int | None = None
    """Longest sample in tokens (longer ones are truncated after their last image or skipped)."""
    drop_uneven_tail: bool = False
    """Drop samples beyond the shortest consumer's full batches instead of padding with masked batches."""
    seed: int = 0
    """Seed of the shard order and shuffle buffers."""


class ShardStreamDataset(IterableDataset):
    def __init__(
        self,
        sources: list[ResolvedSource],
        decoder: SampleDecoder | None,
        pad_id: int,
        settings: StreamSettings,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if settings.packing and settings.max_length is None:
            raise ValueError("packing needs max_length (the row width)")
        self.sources, self.decoder, self.pad_id, self.settings = sources, decoder, pad_id, settings
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)
        self.epoch = 0
        self.skip_batches = 0
        total = self._epoch_total()
        if total < self.num_consumers:
            raise ValueError(
                f"{total} samples cannot feed {world_size} ranks x {self.num_workers} workers; use fewer workers"
            )
        if self.batches_per_worker() == 0:
            raise ValueError(f"no full batch of {settings.batch_size} per worker; lower batch_size or workers")

    @property
    def num_consumers(self) -> int:
        return self.world_size * self.num_workers

    def _epoch_total(self) -> int:
        return sum(map(len, plan_epoch(self.sources, self.epoch, self.settings.seed, self.settings.shuffle)))

    def consumer_sizes(self) -> list[int]:
        total = self._epoch_total()
        return [hi - lo for lo, hi in (consumer_bounds(total, c, self.num_consumers) for c in range(self.num_consumers))]

    def batches_per_worker(self) -> int:
        batch_size = self.settings.batch_size
        if self.settings.drop_uneven_tail:
            return min(size // batch_size for size in self.consumer_sizes())
        return max(math.ceil(size / batch_size) for size in self.consumer_sizes())

    def __len__(self) -> int:
        return self.batches_per_worker() * self.num_workers

    def _worker(self) -> int:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        if workers != self.num_workers:
            raise RuntimeError(f"dataset was set up for {self.num_workers} workers but runs in {workers}")
        return info.id if info is not None else 0

    def __iter__(self) -> Iterator[dict]:
        # The DataLoader takes batches round-robin starting at worker 0. After skipping k batches the next
        # one is due from logical worker k % W, so physical worker p plays logical worker (p + k) % W, and
        # has (p + k) // W of that worker's batches already consumed.
        physical = self._worker()
        worker = (physical + self.skip_batches) % self.num_workers
        replay = (physical + self.skip_batches) // self.num_workers
        consumer = self.rank * self.num_workers + worker
        settings = self.settings
        pieces = plan_epoch(self.sources, self.epoch, settings.seed, settings.shuffle)
        begin, end = consumer_bounds(sum(map(len, pieces)), consumer, self.num_consumers)
        rng = random.Random(f"mm-consumer:{settings.seed}:{self.epoch}:{consumer}")
        skipped: Counter = Counter()
        raw = read_pieces(slice_pieces(pieces, begin, end), skipped)
        raw = shuffle_buffer(raw, settings.shuffle_buffer if settings.shuffle else 0, rng)
        groups = length_grouped(self._decoded(raw, skipped), settings.batch_size, settings.group_batches, rng)
        yield from self._quota_batches(groups, skipped, replay, consumer, worker)

    def _quota_batches(self, groups, skipped: Counter, replay: int, consumer: int, worker: int) -> Iterator[dict]:
        quota = self.batches_per_worker()
        produced, reported, last = 0, Counter(), None
        for group in groups:
            last = self._batch(group)
            last["index_in_epoch"] = produced * self.num_workers + worker  # the DataLoader's round-robin
            produced += 1
            if produced == quota:  # count the dropped tail now, so the last batch reports it
                dropped = sum(len(rest) for rest in groups)
                if dropped:
                    log.info("consumer %d drops %d samples beyond its %d batches", consumer, dropped, quota)
                    skipped[SkipReason.DROPPED_UNEVEN_TAIL.value] += dropped
            if produced > replay:
                yield self._with_counts(last, skipped, reported, is_padding=False)
            reported = skipped.copy()  # replayed batches were counted before the checkpoint
            if produced == quota:
                break
        while produced < quota:
            if last is None:
                raise NoUsableSample(
                    f"consumer {consumer} (rank {self.rank}) has no valid sample in its slice "
                    f"(skipped: {dict(skipped)}); the data is too corrupt, too small for this many workers, or "
                    "longer than --data.max_length"
                )
            padding = masked_copy(last)
            padding["index_in_epoch"] = produced * self.num_workers + worker
            produced += 1
            if produced > replay:
                yield self._with_counts(padding, skipped, reported, is_padding=True)
            reported = skipped.copy()

    @staticmethod
    def _with_counts(batch: dict, skipped: Counter, reported: Counter, is_padding: bool) -> dict:
        batch = dict(batch)
        batch["skipped"] = dict(skipped - reported)
        batch["is_padding"] = is_padding
        return batch

    def _decoded(self, raw: Iterator[dict], skipped: Counter) -> Iterator[Sample]:
        for record in raw:
            try:
                yield self.decoder(record)
            except SkipSample as error:
                skipped[error.reason.value] += 1
                log.warning("skipped sample (%s)", error)

    def _batch(self, samples: list[Sample]) -> dict:
        if self.settings.packing:
            batch = pack(samples, self.pad_id, self.settings.max_length)
        else:
            batch = collate(samples, self.pad_id)
        batch["keys"] = [sample.key for sample in samples]
        return batch
