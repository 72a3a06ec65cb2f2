"""Contrastive training of a vision tower (stage `contrastive`): the small text encoder, the image head, the
losses and the retrieval metrics, as small functions the LightningModule (`mm.train.contrastive_module`) calls.

- Image embedding: the tower's features (the tokens the projector of a later stage sees: `select_layer`,
  prefix tokens as `keep_prefix_tokens` says), mean-pooled, layer-normed and projected to `embed_dim`.
- Text embedding: a caption's tokens (the model's tokenizer; the labelled tokens of the `plain` template,
  i.e. the caption) through token + position embeddings, `layers` pre-norm transformer blocks, a final
  LayerNorm, mean-pooled over the real tokens and projected to `embed_dim`.
- Losses: open_clip's own `ClipLoss` and `SigLipLoss`, built as open_clip's training builds them
  (`make_loss`), on L2-normalised embeddings with a learnable logit scale (and bias for SigLIP) initialised
  as open_clip's models do (CLIP: log(1/0.07); SigLIP: log(10) and -10) and clamped to [0, log(100)] after
  every optimizer step, as open_clip's training loop does.
- Retrieval accuracy: in-batch top-1 over the (gathered) batch, image->text and text->image.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from open_clip.loss import ClipLoss, SigLipLoss, gather_features
from torch import nn

from mm.chat import IGNORE_INDEX
from mm.data.dataset import NoUsableSample, ShardStreamDataset
from mm.data.samples import Sample, SampleDecoder, SkipSample
from mm.data.shards import ShardSourceError
from mm.data.skips import SkipReason
from mm.image_tokens import ImageTokens
from mm.transforms import ImageTransform

LOSSES = ("clip", "siglip")
LOGIT_SCALE_MAX = math.log(100)  # open_clip's training clamps the (log) logit scale to [0, log(100)]


def initial_logit_scale(loss: str) -> float:
    """log of the initial temperature: open_clip's CLIP models start at 1/0.07, its SigLIP models at 10."""
    return math.log(10) if loss == "siglip" else math.log(1 / 0.07)


def initial_logit_bias(loss: str) -> float | None:
    """open_clip's SigLIP models start their logit bias at -10; CLIP has none."""
    return -10.0 if loss == "siglip" else None


def make_loss(loss: str, *, rank: int = 0, world_size: int = 1, local_loss: bool = False,
              gather_with_grad: bool = False) -> nn.Module:
    """The open_clip loss module, with the arguments open_clip's training passes (`create_loss`)."""
    if loss == "clip":
        return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True, rank=rank,
                        world_size=world_size)
    if loss == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    raise ValueError(f"unknown contrastive loss {loss!r}; valid: {list(LOSSES)}")


def loss_value(loss_module: nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
               logit_scale: torch.Tensor, logit_bias: torch.Tensor | None) -> torch.Tensor:
    """The loss of normalised features; `logit_scale` is the log scale (a parameter), exponentiated here as
    open_clip's models do before handing it to the loss."""
    if isinstance(loss_module, SigLipLoss):
        return loss_module(image_features, text_features, logit_scale.exp(), logit_bias)
    return loss_module(image_features, text_features, logit_scale.exp())


def retrieval_hits(queries: torch.Tensor, keys: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Top-1 in-batch retrieval: how many queries have their own pair as the most similar key. Query i is
    the pair of key `offset + i` (a rank's rows within the gathered batch); ties go to the lower index."""
    similarity = queries @ keys.T
    target = torch.arange(similarity.shape[0], device=similarity.device) + offset
    return (similarity.argmax(dim=1) == target).sum()


def gathered(image_features: torch.Tensor, text_features: torch.Tensor, rank: int, world_size: int):
    """Every rank's features in rank order (open_clip's `gather_features`; without gradients)."""
    if world_size == 1:
        return image_features, text_features
    return gather_features(image_features, text_features, local_loss=False, gather_with_grad=False, rank=rank,
                           world_size=world_size)


class ImageHead(nn.Module):
    """Tower features (N, T, hidden) -> image embeddings (N, embed_dim): mean over tokens, LayerNorm, projection."""

    def __init__(self, hidden_size: int, embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, embed_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(features.mean(dim=1)))


class TextEncoder(nn.Module):
    """Caption token ids (B, T) -> text embeddings (B, embed_dim): token + learned position embeddings,
    `layers` pre-norm transformer blocks (bidirectional, padding masked), LayerNorm, mean over the real
    tokens, projection. `layers=0` is mean-pooled token embeddings with the projection."""

    def __init__(self, vocab_size: int, *, width: int, layers: int, heads: int, max_length: int, embed_dim: int):
        super().__init__()
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_length, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = input_ids[:, : self.max_length], attention_mask[:, : self.max_length]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)
        padding = attention_mask == 0
        for block in self.blocks:
            hidden = block(hidden, src_key_padding_mask=padding)
        hidden = self.norm(hidden)
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.proj(pooled)


class ContrastivePair(nn.Module):
    """The trained parts: the vision tower, its image head, the text encoder, the logit scale (and bias).

    It also carries what `ShardDataModule` reads from a LightningModule's `vlm` to decode samples
    (`tokenizer`, `config`, `image_tokens`, `make_image_transform`): the captions are tokenised with the
    model's tokenizer, the images prepared by the model's image transform."""

    def __init__(self, config, vision_tower: nn.Module, tokenizer, *, loss: str, embed_dim: int, text_width: int,
                 text_layers: int, text_heads: int, text_max_length: int):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.vision_tower = vision_tower
        self.image_head = ImageHead(vision_tower.hidden_size, embed_dim)
        self.text_encoder = TextEncoder(len(tokenizer), width=text_width, layers=text_layers, heads=text_heads,
                                        max_length=text_max_length, embed_dim=embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(initial_logit_scale(loss)))
        bias = initial_logit_bias(loss)
        self.logit_bias = nn.Parameter(torch.tensor(bias)) if bias is not None else None
        self.image_tokens = ImageTokens(1)  # the caption's placeholders are dropped: one is enough

    def make_image_transform(self) -> ImageTransform:
        tower = self.vision_tower
        return ImageTransform(tower.image_size, tuple(tower.image_mean), tuple(tower.image_std),
                              self.config.image_transform)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (N, 3, S, S) -> L2-normalised image embeddings (N, embed_dim)."""
        return nn.functional.normalize(self.image_head(self.vision_tower(pixel_values)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Caption ids (B, T) -> L2-normalised text embeddings (B, embed_dim)."""
        return nn.functional.normalize(self.text_encoder(input_ids, attention_mask), dim=-1)


# ----------------------------------------------------------------------------- data: image-caption pairs
CAPTION_RECORDS = "image-caption records (one image; a human turn, then one gpt turn holding the caption)"


def contrastive_data_problem(*, batch_size: int, packing: bool = False) -> str | None:
    """What makes these data settings unusable for the contrastive stage (a message naming the option), or None."""
    if batch_size < 2:
        return (f"--data.batch_size {batch_size}: the contrastive stage needs at least 2 pairs per batch (the other "
                "pairs of the batch are each pair's negatives)")
    if packing:
        return "--data.packing true: the contrastive stage reads one caption per row; set it false"
    return None


@dataclasses.dataclass
class CaptionDecoder:
    """One caption record -> a `Sample` whose tokens are the caption's only (the labelled tokens of the
    sample decoder's encoding: the gpt turn, under `plain` the caption and its newline) and whose image is
    the record's one image, prepared by the model's transform. Other records are skipped (`bad_conversation`)."""

    decoder: SampleDecoder

    def __call__(self, record: dict) -> Sample:
        key = f"{record.get('__url__', '')}#{record.get('__key__', '')}"
        meta = self.decoder._json(record, key)
        turns = meta.get("conversations")
        roles = [turn.get("from") for turn in turns if isinstance(turn, dict)] if isinstance(turns, list) else []
        if roles and roles[0] == "system":
            roles = roles[1:]
        if roles != ["human", "gpt"] or len(meta.get("images") or []) != 1:
            raise SkipSample(SkipReason.BAD_CONVERSATION, f"{key}: not one of the {CAPTION_RECORDS}")
        sample = self.decoder(record)
        caption = [token for token, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
        if not caption:
            raise SkipSample(SkipReason.TOO_LONG, f"{key}: no caption token is left within max_length")
        return Sample(caption, list(caption), sample.images, sample.key, sample.image_sizes)


class NoCaptions(NoUsableSample):
    """No image-caption record in a consumer's shards (the contrastive stage was given other shards)."""


class TooFewPairs(ShardSourceError):
    """Shards too small for one full batch of pairs per rank and worker."""


class CaptionStreamDataset(ShardStreamDataset):
    """`ShardStreamDataset` over caption records (sharding, shuffling, quotas, resume as any stream); a batch
    holds `batch_size` (image, caption) pairs: `pixel_values` and the captions' `input_ids`, `attention_mask`.

    Full batches only (`drop_uneven_tail` is forced on): open_clip gathers every rank's features with
    `all_gather`, which needs the same batch size on every rank, and its loaders drop the last partial batch
    too. The samples beyond the shortest consumer's full batches are counted as `dropped/uneven_tail`."""

    def __init__(self, sources, decoder, pad_id, settings, **kwargs):
        problem = contrastive_data_problem(batch_size=settings.batch_size, packing=settings.packing)
        if problem:
            raise ValueError(problem)
        if isinstance(decoder, SampleDecoder):
            decoder = CaptionDecoder(decoder)
        try:
            super().__init__(sources, decoder, pad_id, dataclasses.replace(settings, drop_uneven_tail=True), **kwargs)
        except ValueError as error:
            if "no full batch" not in str(error):
                raise
            names = ", ".join(f"{source.name}: {source.num_samples} samples" for source in sources)
            raise TooFewPairs(
                f"--data.batch_size {settings.batch_size}: the contrastive stage trains on full batches on every rank "
                f"and worker, and the shards ({names}) do not fill one per worker; lower --data.batch_size or "
                "--data.num_workers, or give more pairs"
            ) from None

    def _quota_batches(self, groups, skipped, replay, consumer, worker):
        try:
            yield from super()._quota_batches(groups, skipped, replay, consumer, worker)
        except NoUsableSample as error:
            if set(skipped) != {SkipReason.BAD_CONVERSATION.value}:
                raise
            raise NoCaptions(
                f"no image-caption record in the shards of consumer {consumer} (rank {self.rank}; "
                f"{skipped[SkipReason.BAD_CONVERSATION.value]} other records skipped): the contrastive stage trains on "
                f"{CAPTION_RECORDS}, such as mm-prep synth's align/ shards; check --data.train_shards and "
                "--data.val_shards"
            ) from error
