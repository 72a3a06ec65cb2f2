"""Per-sample losses under a checkpoint: ``loss``, ``ifd`` and ``image_reliance``.

Every metric is built from next-token cross-entropies (natural log, float32) of the *answer tokens*: the
tokens ``mm.chat.encode_conversation`` labels for training (the assistant turns and the template's
end-of-turn token; never the image placeholders, never position 0, which has nothing to be predicted
from), at the checkpoint's own ``chat_template``, image preprocessing and (with ``--max-length``) truncation.
The answer tokens of assistant turn k are the labelled tokens that the conversation's first k assistant
turns add (the count of labelled tokens of the conversation cut after turn k, minus that of turn k-1).

Three sequences are scored per sample, each with exactly the same answer tokens as targets:

- *full*: the training sequence, images in place (what training's loss sees);
- *no image*: the same token ids with every image's ``tokens_per_image`` placeholder tokens deleted (the
  text, e.g. the newline after ``<image>``, is left as it is): the instruction and the dialogue so far,
  without the picture;
- *alone*, one per assistant turn: the turn's answer tokens after a single start token (the tokenizer's
  BOS, else its EOS, the document separator of BOS-less tokenizers): no image, no instruction, no
  template, no earlier turns.

Rows are right-padded and run through the model in batches; causal attention and the padding mask keep a
row's losses independent of the batch it is in (tests compare batch 1 with batch 4).
"""

from __future__ import annotations

import math
from functools import partial
from itertools import pairwise
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from data_prep.inspect_shards import ShardSample
from data_prep.score import MODEL_METRICS
from mm.chat import GPT, IGNORE_INDEX, ConversationError, SampleTooLong, encode_conversation



def _mean(values: torch.Tensor) -> float | None:
    return float(values.double().mean()) if values.numel() else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return _finite(numerator / denominator)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else _finite(a - b)


def loss_metric(full: torch.Tensor, bounds: Sequence[int]) -> tuple[float | None, list[float | None]]:
    """``loss``: mean cross-entropy of the answer tokens of the *full* sequence (training's loss of this sample
    alone, as ``mm.model.causal_lm_loss`` computes it over exactly ``encode_conversation``'s labels).

    ``loss_turns[k]`` = mean over the answer tokens of turn k; ``loss`` = mean over all answer tokens of
    the sample (token-weighted, so a long answer weighs more than a "yes"), i.e. the per-sample training
    loss. Curation by loss: e.g. Marion et al. 2023, "When Less is More: Investigating Data Pruning for
    Pretraining LLMs at Scale" (perplexity-based pruning).
    """
    turns = [_finite(_mean(full[a:b])) for a, b in pairwise(bounds)]
    return _finite(_mean(full)), turns


def ifd_metric(full: torch.Tensor, alone: Sequence[torch.Tensor], bounds: Sequence[int]
               ) -> tuple[float | None, list[float | None]]:  # fmt: skip
    """``ifd``, Instruction-Following Difficulty (Li et al. 2024, "From Quantity to Quality: Boosting LLM
    Performance with Self-Guided Data Selection for Instruction Tuning", NAACL; "Cherry LLM").

    The paper's IFD(Q, A) = s(A | Q) / s(A), with s the mean cross-entropy of the answer tokens: conditioned
    on the instruction, and "directly", the answer alone. Here, per assistant turn k:

        ifd_turns[k] = loss(answer_k | images + conversation up to turn k) / loss(answer_k | start token)

    the numerator being ``loss_turns[k]`` (full sequence) and the denominator the *alone* row: the same
    answer tokens after only a BOS, which is what the paper's s(A) is (its reference code scores the bare
    answer text as the tokenizer encodes it, BOS and no prompt template); keeping the exact token ids of
    the training sequence makes numerator and denominator average over identical targets. For a
    multimodal sample "Q" is the image(s) plus the dialogue so far, so IFD measures how much the whole
    context helps predict the answer: near or above 1, it does not help (the answer is generic, or does
    not fit its question and image); well below 1, the answer follows from its context.

    Aggregate ``ifd`` = the ratio of the token-weighted means over all turns (sum of conditioned losses /
    sum of alone losses; the per-turn counts are equal): the paper's formula applied to the whole
    answer text of the sample, so one-token turns do not dominate as in a mean of turn ratios. The
    paper's code ranks by the perplexity ratio exp(s(A|Q)) / exp(s(A)) = exp(s(A|Q) - s(A)); we keep the
    paper's published loss ratio. null where a loss is 0 or there is no answer token.
    """
    turns = [_ratio(_mean(full[a:b]), _mean(turn)) for (a, b), turn in zip(pairwise(bounds), alone)]
    everything = torch.cat(list(alone)) if alone else torch.zeros(0)
    return _ratio(_mean(full), _mean(everything)), turns


def image_reliance_metric(full: torch.Tensor, no_image: torch.Tensor | None, bounds: Sequence[int]
                          ) -> tuple[float | None, list[float | None] | None]:  # fmt: skip
    """``image_reliance``: how much the image lowers the answer's loss.

        image_reliance_turns[k] = loss(answer_k | instruction, no image) - loss(answer_k | image + instruction)

    both means over turn k's answer tokens: the *no image* sequence (placeholder tokens deleted, all text
    kept) minus the *full* one; the aggregate is the same difference of token-weighted means over all
    answer tokens. Near 0 or negative: the answer is predictable from the text alone (a blind-answerable
    or language-prior sample; cf. Goyal et al. 2017, "Making the V in VQA Matter", and the visual-reliance
    filtering of Cambrian-1, Tong et al. 2024); large: the answer needs the picture. A pointwise
    mutual-information estimate between image and answer given the text, per token, in nats. Text-only
    samples: null (turns too).
    """
    if no_image is None:
        return None, None
    turns = [_difference(_mean(no_image[a:b]), _mean(full[a:b])) for a, b in pairwise(bounds)]
    return _difference(_mean(no_image), _mean(full)), turns


@dataclass
class Row:
    """One sequence to score: ids, labels (IGNORE_INDEX where nothing is scored) and its images."""

    ids: list[int]
    labels: list[int]
    images: list[torch.Tensor] = field(default_factory=list)
    """uint8 (V, 3, S, S) views per image."""
    image_sizes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class EncodedSample:
    full: Row
    bounds: list[int]
    """Turn k's answer tokens are the labelled tokens bounds[k]:bounds[k+1] (in order, in every row)."""
    no_image: Row | None
    alone: list[Row]


def answer_bounds(conversation: Sequence[dict], num_labelled: int, encode) -> list[int]:
    """[0, end of turn 1, ..., num_labelled] in labelled-token counts: the labels of the conversation cut
    after each assistant turn (``encode(prefix)``), clamped to the tokens that are there (truncation)."""
    ends = []
    gpt_turns = [i for i, message in enumerate(conversation) if message["from"] == GPT]
    for index in gpt_turns[:-1]:
        labels = encode(conversation[: index + 1]).labels
        ends.append(min(num_labelled, sum(label != IGNORE_INDEX for label in labels[1:])))
    bounds = [0, *ends, num_labelled]
    for i in range(1, len(bounds)):  # a tokenisation merging across a turn border cannot make them decrease
        bounds[i] = max(bounds[i], bounds[i - 1])
    return bounds


class ModelScorer:
    """Scores batches of samples with one loaded model (see the module docstring and the metric functions)."""

    def __init__(self, model, metrics: Sequence[str], dtype: torch.dtype, batch_size: int = 8,
                 max_length: int | None = None, checkpoint: str = ""):  # fmt: skip
        unknown = sorted(set(metrics) - set(MODEL_METRICS))
        if unknown:
            raise ValueError(f"not model metrics: {unknown}")
        if batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        self.model, self.metrics, self.dtype = model, tuple(metrics), dtype
        self.batch_size, self.max_length, self.checkpoint = batch_size, max_length, checkpoint
        self.tokenizer = model.tokenizer
        self.template = model.config.chat_template
        self.image_token = model.config.image_token
        self.image_id = model.image_token_id
        self.transform = model.make_image_transform()
        tokenizer = self.tokenizer
        self.start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if self.start_id is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to start the ifd 'alone' sequences")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)

    def settings(self) -> dict:
        common = {"checkpoint": self.checkpoint, "chat_template": self.template, "dtype": str(self.dtype).replace("torch.", ""),
                  "max_length": self.max_length}  # fmt: skip
        return {metric: common for metric in self.metrics}

    # ------------------------------------------------------------------ encoding
    def _encode(self, conversation, max_length=None, num_images=None, counts=None):
        return encode_conversation(conversation, self.tokenizer, self.template,
                                   tokens_per_image=self.model.tokens_per_image if counts is None else counts,
                                   image_token=self.image_token, max_length=max_length, num_images=num_images)  # fmt: skip

    def _encode_prefix(self, prefix, counts: list[int]):
        """A conversation's first turns, which hold its first images: their counts, in order."""
        return self._encode(prefix, counts=counts[:sum(turn["value"].count(self.image_token) for turn in prefix)])

    def encode(self, sample: ShardSample) -> EncodedSample:
        """The rows of one sample; ConversationError, SampleTooLong or an image error when it cannot be scored."""
        conversation = sample.record["conversations"]
        pictures = [self.transform.open(data) for data in sample.images]
        sizes = [(picture.height, picture.width) for picture in pictures]
        counts = self.model.image_tokens.counts(sizes)
        encoded = self._encode(conversation, self.max_length, num_images=len(sample.images), counts=counts)
        images = [self.transform.views(picture) for picture in pictures]
        ids, labels = encoded.input_ids, list(encoded.labels)
        labels[0] = IGNORE_INDEX  # nothing predicts position 0 (causal_lm_loss shifts it out)
        positions = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        bounds = answer_bounds(conversation, len(positions), partial(self._encode_prefix, counts=counts))
        full = Row(ids, labels, images, sizes)
        no_image = None
        if "image_reliance" in self.metrics and images:
            kept = [i for i, token in enumerate(ids) if token != self.image_id]
            no_image = Row([ids[i] for i in kept], [labels[i] for i in kept])
        alone = []
        if "ifd" in self.metrics:
            for a, b in pairwise(bounds):
                tokens = [ids[p] for p in positions[a:b]]
                alone.append(Row([self.start_id, *tokens], [IGNORE_INDEX, *tokens]))
        return EncodedSample(full, bounds, no_image, alone)

    # ------------------------------------------------------------------ forward
    def _head_is_plain_linear(self) -> bool:
        from mm.model import LOGIT_MODIFIERS

        config = self.model.llm.config
        return all(getattr(config, name, None) in (None, 1.0) for name in LOGIT_MODIFIERS)

    @torch.inference_mode()
    def token_losses(self, rows: Sequence[Row]) -> list[torch.Tensor]:
        """Cross-entropy (float32, CPU) of each row's labelled tokens, in order; one forward pass, right-padded."""
        model, device = self.model, self.model.device
        width = max(len(row.ids) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row.ids)] = torch.tensor(row.ids)
            labels[i, : len(row.ids)] = torch.tensor(row.labels)
            mask[i, : len(row.ids)] = 1
        ids, mask = ids.to(device), mask.to(device)
        views = [image for row in rows for image in row.images]
        sizes = [size for row in rows for size in row.image_sizes]
        pixel_values = self.transform.normalize(torch.cat(views).to(device), self.dtype) if views else None
        embeds = model.embed_inputs(ids, pixel_values, sizes or None)
        targets = labels[:, 1:].to(device)
        keep = targets != IGNORE_INDEX
        if self._head_is_plain_linear():  # the output layer only where a token is scored (vocab-sized logits are big)
            hidden = model.llm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
            logits = model.llm.get_output_embeddings()(hidden[:, :-1][keep])
        else:
            logits = model.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits[:, :-1][keep]
        losses = F.cross_entropy(logits.float(), targets[keep], reduction="none").cpu()
        return list(losses.split(keep.sum(dim=1).tolist()))

    def losses_of(self, rows: Sequence[Row]) -> list[torch.Tensor]:
        """``token_losses`` in batches of ``batch_size`` rows, longest first (similar lengths pad least)."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].ids))
        results: list[torch.Tensor | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for index, losses in zip(chunk, self.token_losses([rows[i] for i in chunk])):
                results[index] = losses
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ metrics
    def _failed(self, reason: str) -> dict:
        out = {}
        for metric in self.metrics:
            out.update({metric: None, f"{metric}_turns": None, f"{metric}_error": reason})
        return out

    def score(self, samples: Sequence[ShardSample]) -> list[dict]:
        from PIL import Image

        encoded: list[EncodedSample | None] = []
        results: list[dict] = []
        for sample in samples:
            try:
                encoded.append(self.encode(sample))
                results.append({})
            except ConversationError as error:
                encoded.append(None)
                results.append(self._failed(f"{error.reason}: {error}"))
            except SampleTooLong as error:
                encoded.append(None)
                results.append(self._failed(f"too_long: {error}"))
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                encoded.append(None)
                results.append(self._failed(f"bad_image: {error}"))
        rows, owners = [], []
        for index, item in enumerate(encoded):
            if item is None:
                continue
            for kind, row in [("full", item.full), ("no_image", item.no_image), *(("alone", r) for r in item.alone)]:
                if row is not None:
                    rows.append(row)
                    owners.append((index, kind))
        losses: dict[int, dict[str, list[torch.Tensor]]] = {}
        for (index, kind), value in zip(owners, self.losses_of(rows) if rows else []):
            losses.setdefault(index, {}).setdefault(kind, []).append(value)
        for index, item in enumerate(encoded):
            if item is None:
                continue
            found = losses[index]
            full, bounds = found["full"][0], item.bounds
            if "loss" in self.metrics:
                results[index]["loss"], results[index]["loss_turns"] = loss_metric(full, bounds)
            if "ifd" in self.metrics:
                results[index]["ifd"], results[index]["ifd_turns"] = ifd_metric(full, found.get("alone", []), bounds)
            if "image_reliance" in self.metrics:
                no_image = found.get("no_image", [None])[0]
                results[index]["image_reliance"], results[index]["image_reliance_turns"] = (
                    image_reliance_metric(full, no_image, bounds))
        return results
