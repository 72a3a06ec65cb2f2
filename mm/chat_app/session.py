"""One conversation with one model: what the terminal and the browser chat both drive.

The conversation is kept as LLaVA turns (`{"from": "human" | "gpt", "value": ...}`): images attached with
`attach_image` go before the next message's text as `<image>\\n` (LLaVA's CLI convention), so an answer is
`mm.generation.generate` on `mm.chat.encode_prompt` of the same conversation, and `/save` writes a record
that `mm-prep convert` reads as training data.
"""

from __future__ import annotations

import math
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from mm.atomic import write_json_atomic
from mm.chat import encode_prompt, stop_token_ids
from mm.generation import stream_tokens


class ChatError(ValueError):
    """A user-facing problem (an unreadable image, a bad setting): one line, the session carries on."""


@dataclass
class Sampling:
    """How answers are drawn."""

    temperature: float = 0.2
    """0 picks the most likely token every step (greedy, deterministic)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = 512
    """The longest answer, in tokens."""
    seed: int = 0
    """Seeds sampling; each answer draws from its own generator seeded by this and the turn number."""

    # below this, logits / temperature overflow float32 and sampling fails; 0 is the way to ask for greedy
    MIN_TEMPERATURE = 1e-4
    MAX_SEED = 2**32 - 1

    def check(self) -> None:
        if not (math.isfinite(self.temperature) and (self.temperature == 0 or self.temperature >= self.MIN_TEMPERATURE)):
            raise ChatError(f"temperature must be 0 (greedy) or a finite number >= {self.MIN_TEMPERATURE}, "
                            f"got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ChatError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ChatError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.seed <= self.MAX_SEED:
            raise ChatError(f"seed must be a whole number from 0 to {self.MAX_SEED}, got {self.seed}")


def context_length(model) -> int | None:
    """How many tokens the model's LLM reads at most (prompt and answer together); None if it does not say."""
    length = getattr(model.llm.config.get_text_config(), "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 0 else None


def open_picture(transform, path: str | Path, name: str | None = None) -> Image.Image:
    """An image file decoded by the model's transform, or a ChatError naming it (as `name`, else its path):
    missing, a folder, not an image, or a decompression bomb (over PIL's pixel limit: refused, not decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return transform.open(Path(path))
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ChatError(f"cannot open image {name or path}: {error}") from None


class ChatSession:
    def __init__(self, model, sampling: Sampling | None = None, *, name: str = "model"):
        """A conversation with `model` (an `mm.load_pretrained` model, on its device, in eval mode)."""
        self.model, self.sampling, self.name = model, sampling or Sampling(), name
        self.template = model.config.chat_template
        self.image_token = model.config.image_token
        self.transform = model.make_image_transform()
        self.stop_ids = set(stop_token_ids(model.tokenizer, self.template))
        # `_check_fits` refuses an over-long conversation in one line, against the LLM's own context; the
        # tokenizer's warning (against its model_max_length, which may differ) would only add a second line
        getattr(model.tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and its images."""
        self.turns: list[dict] = []
        self.images: list[Image.Image] = []  # in placeholder order
        self.image_names: list[str] = []
        self.pending = 0  # images attached since the last message

    def attach_image(self, image: str | Path | Image.Image, name: str | None = None) -> None:
        """Attach an image (a path or a PIL image) to the next message."""
        if isinstance(image, Image.Image):
            picture, name = image.convert("RGB"), name or f"image{len(self.images)}.png"
        else:
            picture, name = open_picture(self.transform, image), name or str(image)
        self.images.append(picture)
        self.image_names.append(name)
        self.pending += 1

    def detach_pending(self) -> None:
        """Take back the images attached since the last message."""
        if self.pending:
            del self.images[-self.pending:], self.image_names[-self.pending:]
            self.pending = 0

    def send(self, text: str) -> Iterator[str]:
        """Ask `text` (after the images attached since the last message); yields the answer's text as it
        grows, piece by piece. The whole answer (`self.turns[-1]["value"]`) is the pieces joined, stripped."""
        self.sampling.check()
        self.check_text(text)
        pending, value = self.pending, f"{self.image_token}\n" * self.pending + text
        self.turns.append({"from": "human", "value": value})
        self.pending = 0
        try:
            answer = yield from self._stream_answer()
        except BaseException:  # a failed or interrupted answer leaves the conversation as it was
            self.turns.pop()
            self.pending = pending
            raise
        self.turns.append({"from": "gpt", "value": answer})

    def check_text(self, text: str) -> None:
        """Refuse a message that cannot be asked: no image placeholders typed in, text the tokenizer can
        encode, and cheaply (no tokenizing megabytes) not longer than the model's context could hold."""
        if self.image_token in text:
            raise ChatError(f"attach images with /image (or the upload button), not by writing {self.image_token}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: undecodable input smuggled through as text
            raise ChatError(f"the message is not valid Unicode text (at character {error.start})") from None
        context = context_length(self.model)
        if context is not None and len(text) > context * self._longest_token():
            raise ChatError(f"the message is too long: {len(text):,} characters cannot fit the model's context of "
                            f"{context:,} tokens")

    def _longest_token(self) -> int:
        """The most characters one token stands for (so len(text) / this is at least its token count)."""
        if not hasattr(self, "_longest"):
            self._longest = max(map(len, self.model.tokenizer.get_vocab()), default=1)
        return self._longest

    def _check_fits(self, prompt_tokens: int) -> None:
        context = context_length(self.model)
        if context is not None and prompt_tokens + self.sampling.max_new_tokens > context:
            raise ChatError(f"the conversation is {prompt_tokens:,} tokens (images included) and max_new_tokens "
                            f"{self.sampling.max_new_tokens:,}: over the model's context of {context:,} tokens; "
                            "start a new conversation (/reset) or send less")

    def answer(self, text: str) -> str:
        """`send` without streaming: the whole answer."""
        for _ in self.send(text):
            pass
        return self.turns[-1]["value"]

    @torch.inference_mode()
    def _stream_answer(self) -> Iterator[str]:
        model = self.model
        sizes = [(image.height, image.width) for image in self.images]
        ids = encode_prompt(self.turns, model.tokenizer, self.template, tokens_per_image=model.image_tokens.counts(sizes),
                            image_token=self.image_token)
        self._check_fits(len(ids))
        input_ids = torch.tensor([ids], device=model.device)
        pixels = None
        if self.images:
            views = torch.cat([self.transform.views(image) for image in self.images]).to(model.device)
            pixels = self.transform.normalize(views).to(next(model.vision_tower.parameters()).dtype)
        tokens, shown = [], ""
        arguments = {**self._sampling_arguments(), "image_sizes": sizes or None}
        for step in stream_tokens(model, input_ids, torch.ones_like(input_ids), pixels, **arguments):
            token = int(step[0])
            if token in self.stop_ids:
                break
            tokens.append(token)
            text = model.tokenizer.decode(tokens, skip_special_tokens=True).lstrip()
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        return model.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def _sampling_arguments(self) -> dict:
        settings = self.sampling
        arguments = {"max_new_tokens": settings.max_new_tokens, "eos_token_id": sorted(self.stop_ids)}
        if settings.temperature == 0:
            return {**arguments, "do_sample": False}
        generator = torch.Generator(device=self.model.device).manual_seed(settings.seed * 100_003 + len(self.turns))
        return {**arguments, "do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                "generator": generator}

    def to_llava_record(self) -> dict:
        """The conversation as a LLaVA training record (`image` holds the names the images were attached as)."""
        record = {"id": uuid.uuid4().hex[:12], "conversations": list(self.turns)}
        if self.image_names:
            record["image"] = self.image_names[0] if len(self.image_names) == 1 else list(self.image_names)
        return record

    def save(self, path: str | Path) -> Path:
        """Write `to_llava_record()` as a one-record LLaVA JSON list (atomically)."""
        if not self.turns:
            raise ChatError("nothing to save yet")
        path = Path(path)
        try:
            write_json_atomic(path, [self.to_llava_record()])
        except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
            raise ChatError(f"cannot write {path}: {error}") from None
        return path
