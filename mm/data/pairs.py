"""Preference pairs on the training path: a shard record with a prompt and two answers -> two samples.

A preference record is an ordinary mm-prep record whose `conversations` ends with a human turn (the prompt),
plus ``"chosen": str`` and ``"rejected": str``. Each answer is appended as the final gpt turn and encoded by
the same `SampleDecoder` (and so the same template, label masks, truncation and image checks) as any
sample: the labels cover exactly the answer's tokens (the earlier turns' answers of a multi-turn prompt are
context, not trained). A batch of P pairs holds 2P rows, the P chosen rows first, then the P rejected rows
in the same order, and each pair's images twice (placeholder order, row-major), so that one forward pass
gives every log-probability the loss needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mm.chat import IGNORE_INDEX
from mm.data.batching import collate
from mm.data.dataset import ShardStreamDataset
from mm.data.samples import Sample, SampleDecoder, SkipSample
from mm.data.skips import SkipReason


@dataclass
class PreferencePair:
    chosen: Sample
    rejected: Sample
    key: str

    def __len__(self) -> int:  # length grouping sorts pairs by their longer row
        return max(len(self.chosen), len(self.rejected))


def answer_labelled(sample: Sample) -> bool:
    """True when some next-token target is left (the first position is never one)."""
    return any(label != IGNORE_INDEX for label in sample.labels[1:])


@dataclass
class PreferenceDecoder:
    """Decode one preference record into a `PreferencePair`; raises `SkipSample` on bad input."""

    decoder: SampleDecoder

    def __call__(self, record: dict) -> PreferencePair:
        key = f"{record.get('__url__', '')}#{record.get('__key__', '')}"
        meta = self.decoder._json(record, key)
        prompt = meta.get("conversations")
        answers = [meta.get("chosen"), meta.get("rejected")]
        if not isinstance(prompt, list) or not prompt or not isinstance(prompt[-1], dict) \
                or prompt[-1].get("from") != "human":
            raise SkipSample(SkipReason.BAD_CONVERSATION, f"{key}: a preference prompt must end with a human turn")
        if not all(isinstance(answer, str) and answer.strip() for answer in answers):
            raise SkipSample(SkipReason.BAD_CONVERSATION, f"{key}: `chosen` and `rejected` must be non-empty strings")
        chosen, rejected = (self._with_answer(record, meta, answer) for answer in answers)
        for sample in (chosen, rejected):
            if not answer_labelled(sample):  # truncation cut the answer away: nothing to compare
                raise SkipSample(SkipReason.TOO_LONG, f"{key}: no answer token is left within max_length")
        return PreferencePair(chosen, rejected, key)

    def _with_answer(self, record: dict, meta: dict, answer: str) -> Sample:
        conversation = [*meta["conversations"], {"from": "gpt", "value": answer}]
        sample = self.decoder({**record, "json": json.dumps({**meta, "conversations": conversation}).encode()})
        sample.labels = last_answer_only(sample.labels)
        return sample


def last_answer_only(labels: list[int]) -> list[int]:
    """The labels of the final answer only (its trained tokens are the last contiguous labelled run): the
    answers of earlier turns are context of a multi-turn prompt, not part of the compared response."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [IGNORE_INDEX] * start + labels[start:]


def collate_pairs(pairs: list[PreferencePair], pad_id: int) -> dict:
    """Rows: every chosen answer, then every rejected one (pair i is rows i and P + i)."""
    batch = collate([pair.chosen for pair in pairs] + [pair.rejected for pair in pairs], pad_id)
    batch["num_samples"] = len(pairs)
    return batch


class PreferenceStreamDataset(ShardStreamDataset):
    """`ShardStreamDataset` over preference records: the same sharding, shuffling, quotas, masked padding
    batches, `index_in_epoch` and resume; a sample is a pair, a batch holds `batch_size` pairs."""

    def __init__(self, sources, decoder, pad_id, settings, **kwargs):
        if settings.packing:
            raise ValueError("packing is not supported for preference pairs (rows are paired by position)")
        if isinstance(decoder, SampleDecoder):
            decoder = PreferenceDecoder(decoder)
        super().__init__(sources, decoder, pad_id, settings, **kwargs)

    def _batch(self, samples: list[PreferencePair]) -> dict:
        batch = collate_pairs(samples, self.pad_id)
        batch["keys"] = [pair.key for pair in samples]
        return batch
