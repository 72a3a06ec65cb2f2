"""Planted noise in the instruction split, so data filters can be measured against known bad samples.

A noisy sample is either `wrong_answer` (every assistant answer replaced by a wrong one of the same kind:
another colour, shape, size, count, letter, the other yes/no, another scene's description) or
`wrong_image` (the conversation is unchanged, the image is another training scene's). `noise.jsonl` lists
each noisy sample's id and kind; the samples themselves carry no mark.
"""

from __future__ import annotations

import dataclasses
import random

from data_prep.records import ImageRef, Sample
from data_prep.synth.programs import LETTERS, QA
from data_prep.synth.world import WorldConfig

NOISE_KINDS = ("wrong_answer", "wrong_image")


def wrong_answer(qa: dict, world: WorldConfig, rng: random.Random, other_description: str) -> str:
    """An answer of the same kind as `qa`'s that is not its answer."""
    qa = QA(**qa)
    if qa.program == "describe":
        return other_description
    if qa.choices:
        space = list(LETTERS[:len(qa.choices)])
    elif qa.answer_type == "yes/no":
        space = ["yes", "no"]
    elif qa.answer_type == "number":
        space = [str(n) for n in range(world.max_objects + 1)]
    else:
        attribute = qa.program.removeprefix("attribute_")
        space = list(getattr(world, attribute + "s"))
    return rng.choice([value for value in space if value != qa.answer])


def _with_wrong_answers(sample: Sample, world: WorldConfig, rng: random.Random, other_description: str) -> Sample:
    conversations = [dict(message) for message in sample.conversations]
    answers = iter(wrong_answer(qa, world, rng, other_description) for qa in sample.meta["qa"])
    for message in conversations:
        if message["from"] == "gpt":
            message["value"] = next(answers)
    return dataclasses.replace(sample, conversations=conversations)


def _with_other_image(sample: Sample, other: Sample) -> Sample:
    image = sample.images[0]
    return dataclasses.replace(sample, images=[ImageRef(name=image.name, data=other.images[0].data)])


def add_noise(samples: list[Sample], fraction: float, world: WorldConfig, rng: random.Random,
              descriptions: list[str]) -> tuple[list[Sample], list[dict]]:
    """`fraction` of the samples (rounded down, chosen by `rng`) made noisy, half of each kind; returns the
    samples in their order and the noise records `{id, kind}`. `descriptions[i]` describes sample i's scene."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--noise must be in [0, 1), got {fraction}")
    chosen = sorted(rng.sample(range(len(samples)), int(fraction * len(samples))))
    records, out = [], list(samples)
    for rank, index in enumerate(chosen):
        kind = NOISE_KINDS[rank % 2]
        # another scene: the next one with a different description (the same scene twice is no noise)
        other = next((j % len(samples) for j in range(index + 1, index + len(samples))
                      if descriptions[j % len(samples)] != descriptions[index]), None)
        if other is None:
            continue
        if kind == "wrong_answer":
            out[index] = _with_wrong_answers(samples[index], world, rng, descriptions[other])
        else:
            out[index] = _with_other_image(samples[index], samples[other])
        records.append({"id": samples[index].id, "kind": kind})
    return out, records
