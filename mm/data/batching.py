"""Samples -> padded batches: length grouping, padding to the longest, and optional packing.

A batch is a dict of tensors: ``input_ids``/``labels`` (R, T), ``attention_mask`` (R, T) 1 on real
tokens, ``pixel_values`` uint8 (N, 3, S, S): every image's views in placeholder order (row-major), or None,
``image_sizes`` (images, 2) each image's (height, width) or None, and, when packed,
``position_ids`` restarting at 0 per sample and ``segment_ids`` (1, 2, ... per sample in a row, 0 on
padding) from which the per-sample causal mask is built on the device (``packed_attention_mask``).
"""

from __future__ import annotations

import random
from typing import Iterator

import torch

from mm.chat import IGNORE_INDEX
from mm.data.samples import Sample


def length_grouped(samples: Iterator[Sample], batch_size: int, group_batches: int, rng: random.Random):
    """Lists of ``batch_size`` samples. With ``group_batches > 1``, a buffer of that many batches' samples
    is sorted by length, cut into batches, and the batches are shuffled (less padding, same samples)."""
    if group_batches <= 1:
        yield from _chunks(samples, batch_size)
        return
    window = batch_size * group_batches
    for buffer in _chunks(samples, window):
        buffer.sort(key=len)
        batches = [buffer[i : i + batch_size] for i in range(0, len(buffer), batch_size)]
        rng.shuffle(batches)
        yield from batches


def _chunks(items: Iterator, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def collate(samples: list[Sample], pad_id: int) -> dict:
    """One sample per row, right-padded to the longest."""
    width = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        input_ids[row, : len(sample)] = torch.tensor(sample.input_ids)
        labels[row, : len(sample)] = torch.tensor(sample.labels)
        attention_mask[row, : len(sample)] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    batch.update(_images(samples))
    batch["num_samples"] = len(samples)
    return batch


def pack(samples: list[Sample], pad_id: int, max_length: int) -> dict:
    """Several samples per row (first-fit decreasing, rows of at most ``max_length`` tokens)."""
    rows: list[list[Sample]] = []
    for sample in sorted(samples, key=len, reverse=True):
        if len(sample) > max_length:
            raise ValueError(f"sample of {len(sample)} tokens cannot be packed into rows of {max_length}")
        row = next((r for r in rows if sum(map(len, r)) + len(sample) <= max_length), None)
        if row is None:
            rows.append([sample])
        else:
            row.append(sample)
    width = max(sum(map(len, row)) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    in_row_order = []
    for r, row in enumerate(rows):
        offset = 0
        for segment, sample in enumerate(row, start=1):
            end = offset + len(sample)
            input_ids[r, offset:end] = torch.tensor(sample.input_ids)
            labels[r, offset:end] = torch.tensor(sample.labels)
            # Nothing in the sample predicts its first token; in a packed row the previous sample's last
            # token would, so that target is removed to keep the loss equal to the unpacked one.
            labels[r, offset] = IGNORE_INDEX
            position_ids[r, offset:end] = torch.arange(len(sample))
            segment_ids[r, offset:end] = segment
            in_row_order.append(sample)
            offset = end
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": (segment_ids > 0).long()}
    batch.update(position_ids=position_ids, segment_ids=segment_ids)
    batch.update(_images(in_row_order))
    batch["num_samples"] = len(samples)
    return batch


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (R, 1, T, T) mask: causal within each sample, nothing across samples. Padding positions
    attend to themselves only, so no row is fully masked (which would give NaNs in softmax)."""
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids > 0)[:, :, None]
    diagonal = torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return ((same & real & causal) | diagonal)[:, None]


def masked_copy(batch: dict) -> dict:
    """The batch with every label ignored: keeps all ranks in step while adding nothing to the loss."""
    copy = dict(batch)
    copy["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    return copy


def _images(samples: list[Sample]) -> dict:
    """`pixel_values` (all views, in placeholder order) and `image_sizes`, or None for text-only batches."""
    views = [image for sample in samples for image in sample.images]
    sizes = [size for sample in samples for size in sample.image_sizes]
    return {"pixel_values": torch.cat(views) if views else None,
            "image_sizes": torch.tensor(sizes, dtype=torch.long) if sizes else None}
