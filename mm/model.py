"""VisionLanguageModel: vision tower -> projector -> features written into the LLM's input embeddings."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from mm.anyres import anyres_grid, pack_anyres_features
from mm.checkpoint import write_checkpoint
from mm.config import VLMConfig
from mm.generation import generate as generate_tokens
from mm.image_tokens import ImageTokens
from mm.llm import enable_activation_checkpointing, llm_block_class, resolved_llm_config
from mm.projectors import Projector
from mm.transforms import ImageTransform
from mm.vision import VisionTower

IGNORE_INDEX = -100
# Config fields of LLM families whose logits are more than the output layer (Gemma 2/3, Cohere, Granite).
LOGIT_MODIFIERS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class VisionLanguageModel(nn.Module):
    """A vision tower, a projector and a causal LLM.

    Each image becomes `image_token_count(its size)` consecutive `image_token_id` placeholders in `input_ids`
    (as in transformers' Llava and LlavaNext): `tokens_per_image` for the fixed-size transforms, more for a large
    image under anyres; its projected features replace their embeddings in one masked scatter, so any number
    of images per sample, text-only samples included, needs no special code.
    """

    def __init__(
        self, config: VLMConfig, vision_tower: VisionTower, projector: Projector, llm: nn.Module, tokenizer
    ) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        if config.image_token not in tokenizer.get_vocab():
            raise ValueError(f"the tokenizer has no {config.image_token!r} token (build_vlm adds it)")
        self.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
        self.tokens_per_image = projector.num_output_tokens(vision_tower.num_tokens)  # per view
        if self.is_anyres:
            self.image_tokens  # noqa: B018  (a non-square grid is refused now, not at the first image)
            if not isinstance(getattr(projector, "image_newline", None), nn.Parameter):
                raise ValueError("anyres needs the projector's learned row-end vector (build_vlm adds image_newline)")

    # ----------------------------------------------------------------- properties
    @property
    def image_transform_config(self) -> ImageTransform:
        """How images are prepared for this model (the tower's size and normalisation, the config's mode)."""
        tower = self.vision_tower
        pinpoints = self.config.image_grid_pinpoints
        return ImageTransform(
            tower.image_size, tuple(tower.image_mean), tuple(tower.image_std), self.config.image_transform,
            grid_pinpoints=tuple(map(tuple, pinpoints)) if pinpoints else None,
        )

    def make_image_transform(self) -> ImageTransform:
        """The `mm.transforms.ImageTransform` that prepares images for this model."""
        return self.image_transform_config

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def llm_block_class(self) -> type[nn.Module]:
        return llm_block_class(self.llm)

    def set_trainable(self, *, vision: bool | None = None, projector: bool | None = None, llm: bool | None = None):
        """Freeze/unfreeze parts; None leaves a part as it is."""
        for flag, part in ((vision, self.vision_tower), (projector, self.projector), (llm, self.llm)):
            if flag is not None:
                part.requires_grad_(flag)
        return self

    def gradient_checkpointing_enable(self) -> None:
        enable_activation_checkpointing(self.llm)
        if self.vision_tower.is_trainable:
            self.vision_tower.gradient_checkpointing_enable()

    # ----------------------------------------------------------------- embedding
    @property
    def is_anyres(self) -> bool:
        return self.config.image_transform == "anyres"

    @property
    def image_tokens(self) -> ImageTokens:
        """The rule for each image's placeholder count (`mm.image_tokens`)."""
        pinpoints = self.config.image_grid_pinpoints
        return ImageTokens(self.tokens_per_image, self.vision_tower.image_size,
                           tuple(map(tuple, pinpoints)) if pinpoints else None, self.config.anyres_max_tiles)

    def image_token_count(self, image_size: tuple[int, int]) -> int:
        """Placeholders one image of `image_size` (height, width) takes."""
        return self.image_tokens.count(image_size)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(N, 3, S, S)` views -> `(N, tokens_per_image, llm hidden)`."""
        features = self.vision_tower(pixel_values)
        projector_dtype = next(self.projector.parameters()).dtype
        return self.projector(features.to(projector_dtype))

    def image_features(self, pixel_values: torch.Tensor, image_sizes) -> torch.Tensor:
        """Every image's placeholder features, in order: `(sum of image_token_counts, llm hidden)`. Under
        anyres `pixel_values` holds each image's views (`ImageTransform.views`) and `image_sizes` their sizes."""
        features = self.encode_images(pixel_values)
        if not self.is_anyres:
            return features.reshape(-1, features.shape[-1])
        image_sizes = _size_list(image_sizes)
        pinpoints, tile = self.config.image_grid_pinpoints, self.vision_tower.image_size
        views = [1 + rows * cols for rows, cols in (anyres_grid(size, pinpoints, tile) for size in image_sizes)]
        if sum(views) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} views were given for {len(views)} image(s) that make {sum(views)}")
        newline = self.projector.image_newline.to(features.dtype)
        packed = [
            pack_anyres_features(part, size, pinpoints, tile, newline, self.config.anyres_max_tiles)
            for part, size in zip(features.split(views), image_sizes)
        ]  # fmt: skip
        return torch.cat(packed)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                     image_sizes=None) -> torch.Tensor:
        """Token embeddings with each image's projected features written over its placeholders."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, seq_len); got {tuple(input_ids.shape)}")
        image_mask = input_ids == self.image_token_id
        if pixel_values is None:
            counts = []
        elif self.is_anyres:
            if image_sizes is None:
                raise ValueError("anyres needs image_sizes: each image's (height, width) beside its views")
            image_sizes = _size_list(image_sizes)
            counts = self.image_tokens.counts(image_sizes)
        else:
            counts = [self.tokens_per_image] * pixel_values.shape[0]
        self.check_placeholders(image_mask, counts)
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
        if not counts:
            return embeds
        features = self.image_features(pixel_values, image_sizes).to(embeds.dtype)
        # masked_scatter fills positions in row-major order: images go to samples in placeholder order.
        return embeds.masked_scatter(image_mask.unsqueeze(-1), features)

    def check_placeholders(self, image_mask: torch.Tensor, image_counts: Sequence[int]) -> None:
        """Raise a ValueError naming the sample whose placeholders do not match the images: every run of
        consecutive placeholders holds whole images, in order (`image_counts`: each image's placeholders)."""
        lengths, samples = (values.tolist() for values in _placeholder_runs(image_mask))
        ends = list(itertools.accumulate(image_counts))  # placeholders up to the end of each image
        total, image_ends, matched = (ends[-1] if ends else 0), set(ends), 0
        for length, sample in zip(lengths, samples):
            matched += length
            if matched > total:
                raise ValueError(f"sample {sample} has placeholders for more images than the {len(image_counts)} "
                                 f"image(s) given for the whole batch ({matched} placeholders up to it, {total} for the images)")
            if matched not in image_ends:
                raise ValueError(
                    f"sample {sample} has a run of {length} consecutive image placeholders, which does not end where "
                    f"an image's end (placeholders per image: {_count_summary(image_counts)})"
                )
        if matched != total:
            found = ends.index(matched) + 1 if matched else 0
            raise ValueError(f"{len(image_counts)} image(s) were given but the batch has placeholders for only {found}: "
                             f"the extra image(s) have no placeholders after sample {image_mask.shape[0] - 1}")

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        image_sizes=None,
    ) -> CausalLMOutputWithPast:
        """Logits, and the token cross-entropy when `labels` (aligned with `input_ids`) are given.

        `attention_mask` (2-D, or 4-D for packed rows) and `position_ids` go to the LLM unchanged. The loss is
        summed over labelled tokens and divided by `num_items_in_batch` when given, else by their count.
        `return_logits=False` (training) runs the output head on the labelled positions only, where the
        LLM's head is a plain linear layer: the full `(B, T, vocab)` logits are never made.
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
        if labels is not None and not return_logits and self._head_is_plain_linear():
            return self._labelled_positions_loss(inputs_embeds, attention_mask, position_ids, labels,
                                                 input_ids, num_items_in_batch)
        out = self.llm(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels {tuple(labels.shape)} must align with input_ids {tuple(input_ids.shape)}")
            labels = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)
            loss = causal_lm_loss(out.logits, labels, num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=out.logits)

    def _head_is_plain_linear(self) -> bool:
        """True when the LLM's logits are just its output layer applied to the decoder's states."""
        config = self.llm.config
        return all(getattr(config, name, None) in (None, 1.0) for name in LOGIT_MODIFIERS)

    def _labelled_positions_loss(self, inputs_embeds, attention_mask, position_ids, labels, input_ids,
                                 num_items_in_batch) -> CausalLMOutputWithPast:
        hidden = self.llm.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        targets = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)[:, 1:].to(hidden.device)
        keep = targets != IGNORE_INDEX
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep])
        total = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return CausalLMOutputWithPast(loss=total / _loss_denominator(keep, num_items_in_batch), logits=None)

    # ----------------------------------------------------------------- generation
    # The method is `mm.generation.generate` itself (the model is its first argument): one signature.
    generate = torch.no_grad()(generate_tokens)

    # ----------------------------------------------------------------- checkpoints
    def resolved_config(self) -> VLMConfig:
        """The model's config with every architecture inlined (rebuilding it needs no network)."""
        return dataclasses.replace(
            self.config,
            vision=self.vision_tower.resolved_config(),
            llm=resolved_llm_config(self.config.llm, self.llm),
        )

    def save_pretrained(self, directory, *, source: str | None = None, overwrite: bool = False) -> None:
        """Write a self-contained checkpoint directory (`mm.checkpoint`'s format; `mm.load_pretrained` reads it).
        An earlier save of the same `source` there is replaced in one rename; other files in it are kept; a
        folder holding anything else needs `overwrite` (see mm.checkpoint.write_checkpoint)."""
        write_checkpoint(self, directory, source=source, overwrite=overwrite)


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy; labels are aligned with the inputs and shifted here."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / _loss_denominator(shift_labels != IGNORE_INDEX, num_items_in_batch)


def _loss_denominator(labelled: torch.Tensor, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    if num_items_in_batch is None:
        # No labelled token gives 0, not NaN: a fully-masked batch contributes nothing.
        return labelled.sum().clamp(min=1)
    return torch.as_tensor(num_items_in_batch, device=labelled.device)


def _size_list(image_sizes) -> list[tuple[int, int]]:
    """(height, width) pairs as Python ints: one device-to-host copy for a tensor, not one per element."""
    rows = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else image_sizes
    return [(int(height), int(width)) for height, width in rows]


def _count_summary(counts: Sequence[int]) -> str:
    distinct = sorted(set(counts))
    return str(distinct[0]) if len(distinct) == 1 else ", ".join(map(str, counts[:8])) + (" ..." if len(counts) > 8 else "")


def _placeholder_runs(image_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths of the runs of consecutive placeholders and the sample each run is in."""
    padded = F.pad(image_mask, (1, 1), value=False)
    starts = padded[:, 1:-1] & ~padded[:, :-2]
    ends = padded[:, 1:-1] & ~padded[:, 2:]
    position = torch.arange(image_mask.shape[1], device=image_mask.device).expand_as(image_mask)
    lengths = position[ends] - position[starts] + 1
    samples = torch.nonzero(starts)[:, 0]
    return lengths, samples
