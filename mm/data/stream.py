"""A deterministic, resumable stream of raw samples for one consumer (a rank's dataloader worker).

An epoch is a seeded order of shard pieces from all sources (weights repeat or subsample a source). The
concatenated pieces form one global sequence of N samples; consumer ``c`` of ``C`` reads the contiguous
slice ``[c*N//C, (c+1)*N//C)``. So each sample of the epoch goes to exactly one consumer, slices differ
by at most one sample, and a consumer opens only the shards its slice touches (skipping into the first).
"""

from __future__ import annotations

import logging
import random
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import webdataset

from mm.data.shards import ResolvedSource, sample_key
from mm.data.skips import SkipReason

log = logging.getLogger(__name__)

RawSample = dict  # {"__key__", "__url__", "__index__", suffix: bytes}


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` of one shard, in the shard's own order."""

    url: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_epoch(sources: list[ResolvedSource], epoch: int, seed: int, shuffle: bool = True) -> list[Piece]:
    """The epoch's pieces: integer part of a weight = whole passes, fraction = a seeded subset of shards."""
    rng = random.Random(f"mm-epoch:{seed}:{epoch}")
    pieces: list[Piece] = []
    for source in sources:
        passes, fraction = divmod(source.weight, 1.0)
        for _ in range(int(passes)):
            pieces += [Piece(shard.url, 0, shard.num_samples) for shard in source.shards]
        remaining = round(fraction * source.num_samples)
        order = list(source.shards)
        rng.shuffle(order)
        for shard in order:
            if remaining <= 0:
                break
            take = min(remaining, shard.num_samples)
            pieces.append(Piece(shard.url, 0, take))
            remaining -= take
    if shuffle:
        rng.shuffle(pieces)
    return [piece for piece in pieces if len(piece) > 0]


def consumer_bounds(total: int, consumer: int, num_consumers: int) -> tuple[int, int]:
    return consumer * total // num_consumers, (consumer + 1) * total // num_consumers


def slice_pieces(pieces: list[Piece], begin: int, end: int) -> list[Piece]:
    """The sub-pieces covering global sample indices ``[begin, end)`` of the concatenated pieces."""
    selected, offset = [], 0
    for piece in pieces:
        lo, hi = max(begin, offset), min(end, offset + len(piece))
        if lo < hi:
            selected.append(Piece(piece.url, piece.start + lo - offset, piece.start + hi - offset))
        offset += len(piece)
    return selected


def read_pieces(pieces: list[Piece], skipped: Counter) -> Iterator[RawSample]:
    """Raw samples of the pieces in order. A shard that ends early or breaks mid-way loses its unread
    samples; they are counted in ``skipped["shard_error"]`` and logged, and reading goes on."""
    for piece in pieces:
        delivered = 0
        try:
            for index, sample in enumerate(_tar_samples(piece.url)):
                if index >= piece.stop:
                    break
                if index >= piece.start:
                    delivered += 1
                    yield sample
        except (OSError, tarfile.TarError, EOFError, ValueError) as error:
            log.warning("shard %s failed after %d of %d samples: %s", piece.url, delivered, len(piece), error)
        if delivered < len(piece):
            missing = len(piece) - delivered
            skipped[SkipReason.SHARD_ERROR.value] += missing
            log.warning("shard %s: %d samples of the planned slice could not be read", piece.url, missing)


def _tar_samples(url: str) -> Iterator[RawSample]:
    """Group consecutive tar members sharing a key into one sample dict."""
    stream = webdataset.gopen(url, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            current: RawSample | None = None
            index = 0
            for member in tar:
                if not member.isfile():
                    continue
                key, suffix = sample_key(member.name)
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                        index += 1
                    current = {"__key__": key, "__url__": url, "__index__": index}
                current[suffix] = tar.extractfile(member).read()
            if current is not None:
                yield current
    finally:
        stream.close()


def shuffle_buffer(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """Seeded reservoir-style shuffle of a stream with a buffer of ``size`` items (size <= 1: unchanged)."""
    if size <= 1:
        yield from samples
        return
    buffer: list = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        slot = rng.randrange(size)
        buffer[slot], sample = sample, buffer[slot]
        yield sample
    rng.shuffle(buffer)
    yield from buffer
