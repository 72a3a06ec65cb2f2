"""A synthetic training mix shaped like llava_v1_5_mix665k, encoded with our chat template.

mix665k is, by samples: about half academic VQA (VQAv2, GQA, OCR-VQA, ... several short questions per
image, one- to three-word answers), a fifth region tasks (RefCOCO, Visual Genome: short prompts with box
coordinates), a quarter LLaVA-Instruct (multi-turn conversations, detailed descriptions, reasoning: long
answers) and 6% text-only ShareGPT (long multi-turn chats). The words come from the tiny tokenizer's
corpus, so token counts per word are realistic for that tokenizer; only lengths matter for speed.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch

from mm.chat import SampleTooLong, encode_conversation
from mm.data.samples import Sample
from mm.tiny import ASSETS

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class SampleKind:
    """One family of mix665k samples."""

    name: str
    """Label in the statistics."""
    fraction: float
    """Share of the mix, by samples."""
    build: Callable[[random.Random, list[str]], list[dict]]
    """Draws one LLaVA conversation (``[{"from", "value"}, ...]``)."""
    has_image: bool = True
    """Whether the first human turn starts with ``<image>``."""


def _text(rng: random.Random, words: list[str], low: int, high: int) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))


def _turns(rng: random.Random, pairs: int, ask: Callable[[], str], answer: Callable[[], str]) -> list[dict]:
    conversation = []
    for _ in range(pairs):
        conversation += [{"from": "human", "value": ask()}, {"from": "gpt", "value": answer()}]
    return conversation


def vqa(rng: random.Random, words: list[str]) -> list[dict]:
    return _turns(rng, rng.randint(1, 10), lambda: f"{_text(rng, words, 5, 14)}?\n{SHORT_ANSWER_PROMPT}",
                  lambda: _text(rng, words, 1, 3))


def region(rng: random.Random, words: list[str]) -> list[dict]:
    def box() -> str:
        return "[" + ", ".join(f"{rng.random():.2f}" for _ in range(4)) + "]"

    return _turns(rng, rng.randint(2, 8), lambda: f"Please provide a short description for this region: {box()}",
                  lambda: _text(rng, words, 3, 10))


def instruct(rng: random.Random, words: list[str]) -> list[dict]:
    return _turns(rng, rng.randint(1, 5), lambda: _text(rng, words, 6, 25) + "?", lambda: _text(rng, words, 40, 180))


def sharegpt(rng: random.Random, words: list[str]) -> list[dict]:
    return _turns(rng, rng.randint(1, 6), lambda: _text(rng, words, 10, 60), lambda: _text(rng, words, 80, 400))


MIX = (
    SampleKind("vqa", 0.50, vqa),
    SampleKind("region", 0.20, region),
    SampleKind("instruct", 0.24, instruct),
    SampleKind("text-only", 0.06, sharegpt, has_image=False),
)


def corpus_words() -> list[str]:
    text = (ASSETS / "tokenizer_corpus.txt").read_text()
    return sorted(set(re.findall(r"[a-z]+", text.lower())))


def draw_conversation(rng: random.Random, words: list[str]) -> tuple[SampleKind, list[dict]]:
    kind = rng.choices(MIX, weights=[k.fraction for k in MIX])[0]
    conversation = kind.build(rng, words)
    if kind.has_image:
        conversation[0]["value"] = "<image>\n" + conversation[0]["value"]
    return kind, conversation


def encode_mix(
    num_samples: int, tokenizer, *, template: str, tokens_per_image: int, image_size: int, max_length: int, seed: int
) -> tuple[list[Sample], Counter]:
    """``num_samples`` encoded samples with random uint8 images; too-long ones are redrawn and counted."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    words = corpus_words()
    samples: list[Sample] = []
    counts: Counter = Counter()
    while len(samples) < num_samples:
        kind, conversation = draw_conversation(rng, words)
        try:
            encoded = encode_conversation(conversation, tokenizer, template, tokens_per_image=tokens_per_image,
                                          max_length=max_length)
        except SampleTooLong:
            counts["skipped/too_long"] += 1
            continue
        images = [torch.randint(0, 256, (1, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
                  for _ in range(encoded.num_images)]  # one view per image
        sizes = [(image_size, image_size)] * len(images)
        samples.append(Sample(encoded.input_ids, encoded.labels, images, key=kind.name, image_sizes=sizes))
        counts[kind.name] += 1
    return samples, counts


def llava_batches(samples: list[Sample], batch_size: int, seed: int) -> list[list[Sample]]:
    """Batches as LLaVA-1.5's modality-grouped sampler gives them on one GPU: image and text-only samples
    never share a batch, and within a modality batches are random (no length sorting)."""
    rng = random.Random(seed)
    batches = []
    for with_images in (True, False):
        group = [s for s in samples if bool(s.images) == with_images]
        rng.shuffle(group)
        batches += [group[i : i + batch_size] for i in range(0, len(group) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def supervised_tokens(sample: Sample) -> int:
    """Targets in the loss: labelled tokens that a previous token predicts (the first one never is)."""
    return sum(label != -100 for label in sample.labels[1:])


def length_summary(samples: list[Sample]) -> dict[str, float]:
    lengths = sorted(len(s) for s in samples)
    return {
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "p50_tokens": lengths[len(lengths) // 2],
        "p90_tokens": lengths[int(len(lengths) * 0.9)],
        "max_tokens": lengths[-1],
        "mean_supervised": round(sum(map(supervised_tokens, samples)) / len(samples), 1),
    }
