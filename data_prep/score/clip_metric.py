"""``clip``: image-text agreement under an open_clip model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from data_prep.inspect_shards import ShardSample
from mm.chat import GPT

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def answer_text(record: dict) -> str:
    """All assistant answers of the sample, joined by newlines (the text the ``clip`` score compares)."""
    return "\n".join(m["value"] for m in record["conversations"] if m["from"] == GPT)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a local file without running pickled code: safetensors, else ``torch.load(weights_only=True)``.
    A checkpoint wrapping them in ``state_dict`` (open_clip's training checkpoints) and DDP's ``module.``
    prefixes are unwrapped."""
    if path.suffix == ".safetensors":
        from mm.weights import read_safetensors  # a truncated file: one line naming it

        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"--clip-pretrained {path}: not a weights-only torch file ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--clip-pretrained {path}: not a state dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def resolve_model_name(name: str) -> str:
    """An open_clip model name, or a model config JSON file (registered under its file stem)."""
    import open_clip

    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--clip-model {name}: no such config file")
        open_clip.add_model_config(path)
        name = path.stem
    if name not in open_clip.list_models():
        raise ValueError(f"--clip-model {name!r} is not an open_clip model (see open_clip.list_models()) "
                         "nor a model config .json file")  # fmt: skip
    return name


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_clip(model_name: str, pretrained: str, device: str):
    """(model, image preprocess, tokenizer, resolved name). ``pretrained``: an open_clip pretrained tag of the
    model (``open_clip.list_pretrained_tags_by_model``; downloaded by open_clip) or a local weights file."""
    import open_clip

    name = resolve_model_name(model_name)
    local = Path(pretrained)
    is_file = local.suffix in WEIGHT_SUFFIXES or local.exists()
    if is_file and not local.is_file():
        raise FileNotFoundError(f"--clip-pretrained {pretrained}: no such file")
    if not is_file and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        raise ValueError(f"--clip-pretrained {pretrained!r} is neither a file nor a pretrained tag of {name} "
                         f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'})")
    try:
        with _quiet_root_logger():  # open_clip warns "no pretrained weights loaded" before we load the file
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None if is_file else pretrained,
                                                                         device="cpu")  # fmt: skip
    except RuntimeError as error:  # an unknown tag of this model
        raise ValueError(f"--clip-pretrained {pretrained}: {error}") from None
    if is_file:
        try:
            model.load_state_dict(load_state_dict(local))
        except RuntimeError as error:
            raise ValueError(f"--clip-pretrained {pretrained}: does not fit {name} ({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), preprocess, open_clip.get_tokenizer(name), name


class ClipScorer:
    """``clip``: cosine similarity of the sample's image embedding and its answers' text embedding.

        clip = cos(normalize(mean_i normalize(E_img(image_i))), normalize(E_txt(answers)))

    E_img and E_txt: the open_clip model's ``encode_image`` (its own preprocessing) and ``encode_text``; the
    image side is the mean of the sample's unit image embeddings, renormalised; the text is *all* assistant
    answers joined by newlines (``answer_text``: a caption for alignment data, every answer for multi-turn
    VQA, whose single answers such as "yes" say nothing about the picture), tokenised by the model's tokenizer
    and truncated to its context length (77 tokens for OpenAI-style models). In [-1, 1]; higher means the
    text describes the picture. The CLIP-score filtering of LAION-5B (Schuhmann et al. 2022, cosine >= 0.28
    with ViT-B/32) and DataComp (Gadre et al. 2023); CLIPScore (Hessel et al. 2021) is 2.5 * max(cos, 0) of
    the same cosine. Text-only samples: null; an image that cannot be decoded: null and ``clip_error``.
    """

    metrics = ("clip",)

    def __init__(self, model_name: str, pretrained: str, device: str, batch_size: int = 32):
        self.model, self.preprocess, self.tokenizer, self.name = load_clip(model_name, pretrained, device)
        self.pretrained, self.device, self.batch_size = pretrained, device, max(1, batch_size)

    def settings(self) -> dict:
        return {"clip": {"model": self.name, "pretrained": self.pretrained}}

    @torch.inference_mode()
    def _unit(self, encode, batch: torch.Tensor) -> torch.Tensor:
        outputs = [encode(batch[i : i + self.batch_size].to(self.device)).float() for i in range(0, len(batch), self.batch_size)]
        return F.normalize(torch.cat(outputs), dim=-1).cpu()

    def score(self, samples: Sequence[ShardSample]) -> list[dict]:
        from mm.images import load_rgb

        results: list[dict] = [{} for _ in samples]
        pixels, owners, texts = [], [], []
        for index, sample in enumerate(samples):
            if not sample.images:
                results[index] = {"clip": None}
                continue
            try:
                decoded = [self.preprocess(load_rgb(data)) for data in sample.images]
            except Exception as error:  # noqa: BLE001 - PIL raises many kinds for a bad image
                results[index] = {"clip": None, "clip_error": f"bad_image: {error}"}
                continue
            pixels += decoded
            owners += [len(texts)] * len(decoded)
            texts.append((index, answer_text(sample.record)))
        if not texts:
            return results
        images = self._unit(self.model.encode_image, torch.stack(pixels))
        text = self._unit(self.model.encode_text, self.tokenizer([t for _, t in texts]))
        owner = torch.tensor(owners)
        for position, (index, _) in enumerate(texts):
            image = F.normalize(images[owner == position].mean(dim=0), dim=-1)
            results[index] = {"clip": float((image * text[position]).sum())}
        return results
