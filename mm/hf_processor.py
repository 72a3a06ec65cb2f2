"""The processor files of a llava-hf directory: mm's image transform and chat template, written and read back.

Export writes a `LlavaProcessor` (a `LlavaNextProcessor` for anyres) whose image processor gives the pixels
`mm.transforms.ImageTransform` gives (every mode; the torchvision backend, transformers 5's default) and whose
chat template renders the text `mm.chat` tokenises (`mm.chat.jinja_template`), special tokens (BOS) and all.
Its tokenizer therefore adds none of its own, so every flow gives one BOS: the rendered text tokenised with
or without `add_special_tokens=False` (the two-step flow of llava-hf model cards), or in one step. Import
reads the mode and the template back from them, and has the tokenizer add the BOS again where mm's template
leaves it to the tokenizer.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from mm.chat import encode_prompt, jinja_template, template_name_of
from mm.transforms import ImageTransform
from mm.hub import CheckpointNotFound

log = logging.getLogger(__name__)

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, what mm.transforms resizes with
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class LlavaIncompatible(ValueError):
    """The requested conversion cannot be expressed exactly; the message says why."""


class LlavaDirectoryIncomplete(CheckpointNotFound):
    """A llava-hf directory lacks a file a model needs; the message names what is missing."""


# ----------------------------------------------------------------------------- mm -> llava-hf
def image_processor_for(transform: ImageTransform):
    """A `LlavaImageProcessor` (`LlavaNextImageProcessor` for anyres) computing `transform`
    (test_llava_chat_flow.py and test_llava_next_interop.py compare the pixels)."""
    from transformers import LlavaImageProcessor, LlavaNextImageProcessor

    square = {"height": transform.image_size, "width": transform.image_size}
    if transform.mode == "anyres":
        # the base view and the tiles are already tile-sized, so the shortest-edge resize and the crop that
        # follow are no-ops; do_pad only pads the batch's view counts, the tiles' padding is always black
        return LlavaNextImageProcessor(
            size={"shortest_edge": transform.image_size}, crop_size=square, do_center_crop=True, do_pad=True,
            image_grid_pinpoints=[list(pin) for pin in transform.grid_pinpoints], resample=BICUBIC,
            do_convert_rgb=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
            image_mean=list(transform.mean), image_std=list(transform.std),
        )
    by_mode = {  # pad: LlavaImageProcessor pads with int(mean * 255) before resizing, as LLaVA-1.5 does
        "pad": {"do_pad": True, "size": square, "do_center_crop": False},
        "resize": {"do_pad": False, "size": square, "do_center_crop": False},
        "crop": {"do_pad": False, "size": {"shortest_edge": transform.image_size}, "do_center_crop": True},
    }
    return LlavaImageProcessor(
        **by_mode[transform.mode], crop_size=square, resample=BICUBIC, do_convert_rgb=True, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=list(transform.mean), image_std=list(transform.std),
    )


def processor_for(model, vision_feature_select_strategy: str):
    """The `LlavaProcessor` (`LlavaNextProcessor` for anyres) of an export: image processor, and a copy of the
    tokenizer carrying the Jinja twin of the model's chat template (refused when this tokenizer would tokenise
    it differently from mm.chat)."""
    from transformers import LlavaNextProcessor, LlavaProcessor

    config = model.config
    jinja = jinja_template(config.chat_template, model.tokenizer, config.image_token)
    check_jinja_template(jinja, model.tokenizer, config.chat_template, config.image_token)
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.chat_template = jinja
    if adds_special_tokens(tokenizer):  # the template writes them: adding them again would double the BOS
        set_added_special_tokens(tokenizer, bos=False, eos=False)
        if adds_special_tokens(tokenizer):
            log.warning("the exported tokenizer still adds special tokens itself, and the chat template writes "
                        "them too: tokenise its rendered prompts with add_special_tokens=False")
    processor_class = LlavaNextProcessor if model.is_anyres else LlavaProcessor
    return processor_class(
        image_processor=image_processor_for(model.image_transform_config), tokenizer=tokenizer, chat_template=jinja,
        patch_size=model.vision_tower.patch_size, vision_feature_select_strategy=vision_feature_select_strategy,
        image_token=config.image_token, num_additional_image_tokens=model.vision_tower.num_prefix_tokens,
    )


def adds_special_tokens(tokenizer) -> bool:
    """Whether the tokenizer puts special tokens (BOS, EOS) around a text by itself."""
    return tokenizer("x")["input_ids"] != tokenizer("x", add_special_tokens=False)["input_ids"]


def set_added_special_tokens(tokenizer, *, bos: bool, eos: bool) -> None:
    """Have the tokenizer add BOS / EOS around a text or not (transformers rebuilds its post-processor)."""
    for name, value in (("add_bos_token", bos), ("add_eos_token", eos)):
        if hasattr(tokenizer, name):
            setattr(tokenizer, name, value)


def record_added_special_tokens(directory: Path, tokenizer) -> None:
    """Say in the saved tokenizer_config.json what the tokenizer adds. transformers 5 reads that from
    tokenizer.json (and leaves these keys out), but transformers 4's Llama tokenizers take them from the
    config, adding BOS when it does not say otherwise."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file() or adds_special_tokens(tokenizer):
        return
    config = json.loads(path.read_text())
    config.update(add_bos_token=False, add_eos_token=False)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def check_jinja_template(jinja: str, tokenizer, template: str, image_token: str) -> None:
    """Render sample conversations (system, several images, several turns) through ``jinja`` and mm.chat; the
    token ids must be equal for this tokenizer (a tokenizer can split a special token's text differently)."""
    question = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which one is larger?"}]
    messages = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": question}, {"role": "assistant", "content": "The left one."},
                {"role": "user", "content": [{"type": "text", "text": "Why?"}]}]
    conversation = [{"from": "system", "value": "Answer briefly."},
                    {"from": "human", "value": f"{image_token}\n{image_token}\nWhich one is larger?"},
                    {"from": "gpt", "value": "The left one."}, {"from": "human", "value": "Why?"}]
    for start in (0, 1):  # with and without the system message
        try:
            ours = encode_prompt(conversation[start:], tokenizer, template, tokens_per_image=1, image_token=image_token)
        except Exception:  # noqa: BLE001  the tokenizer's own template refuses this shape (e.g. a system role)
            continue  # in both forms alike
        text = tokenizer.apply_chat_template(messages[start:], chat_template=jinja, tokenize=False,
                                             add_generation_prompt=True)
        theirs = tokenizer(text, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            raise LlavaIncompatible(f"the Jinja form of chat template {template!r} tokenises differently from mm's "
                                    f"with this tokenizer ({len(theirs)} vs {len(ours)} tokens for {text!r})")


# ----------------------------------------------------------------------------- llava-hf -> mm
def check_complete(directory: Path) -> None:
    """Raise LlavaDirectoryIncomplete naming every missing piece, before transformers fails on the first one."""
    missing = []
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer ({', '.join(TOKENIZER_FILES[:-1])} or {TOKENIZER_FILES[-1]})")
    if _image_processor_config(directory) is None:
        missing.append("image processor config (preprocessor_config.json)")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"safetensors weights ({' or '.join(WEIGHT_FILES)})")
    if missing:
        raise LlavaDirectoryIncomplete(f"llava-hf directory {directory} is missing: {'; '.join(missing)}")


def read_image_settings(directory: Path, image_size: int, grid_pinpoints=None
                        ) -> tuple[list[float] | None, list[float] | None, str]:
    """(mean, std, mode) of the directory's image processor; LlavaIncompatible when no mm mode computes it.
    `grid_pinpoints` (a LlavaNext model's): the processor must tile by them, and the mode is anyres."""
    from transformers.image_processing_utils import get_size_dict

    data = _image_processor_config(directory) or {}
    size = get_size_dict(data.get("size", image_size), default_to_square=False)
    crop = get_size_dict(data.get("crop_size", image_size), default_to_square=True, param_name="crop_size")
    square, short_side = {"height": image_size, "width": image_size}, {"shortest_edge": image_size}
    cropped = data.get("do_center_crop", False)
    if grid_pinpoints is not None:
        mode = _anyres_mode(directory, data, grid_pinpoints, size in (square, short_side) and crop == square)
    elif data.get("do_pad") and size in (square, short_side) and (not cropped or crop == square):
        mode = "pad"
    elif cropped and size == short_side and crop == square:
        mode = "crop"
    elif not cropped and size == square:
        mode = "resize"
    else:
        raise LlavaIncompatible(
            f"{directory}: the image processor (size {size}, center crop {crop if cropped else 'no'}, pad "
            f"{bool(data.get('do_pad'))}) is none of mm's image transforms at the tower's {image_size}px: "
            "pad, resize or crop"
        )
    if data.get("resample", BICUBIC) != BICUBIC:
        log.warning("%s: the image processor resizes with resample=%s; mm resizes bicubic, so pixels differ slightly",
                    directory, data["resample"])
    return data.get("image_mean"), data.get("image_std"), mode


def _anyres_mode(directory: Path, data: dict, grid_pinpoints, tile_sized: bool) -> str:
    """'anyres' when the LlavaNext image processor tiles as mm.anyres does: by the model's pinpoints, into
    tower-sized tiles (its crop), with a tower-sized base view (its size) that the crop leaves whole."""
    theirs = data.get("image_grid_pinpoints")
    if theirs is not None and [list(pin) for pin in theirs] != [list(pin) for pin in grid_pinpoints]:
        raise LlavaIncompatible(f"{directory}: the image processor tiles at {theirs}, the model at {grid_pinpoints}")
    if not tile_sized:
        raise LlavaIncompatible(
            f"{directory}: the image processor's size {data.get('size')} and crop {data.get('crop_size')} are not "
            "the tower's image size; mm's anyres views are tower-sized (size shortest_edge or height/width, and "
            "crop_size, all the tower's image_size)"
        )
    return "anyres"


def read_chat_template(tokenizer, image_token: str) -> str:
    """The mm template an export's Jinja chat template was written for; vicuna_v1 (LLaVA-1.5's) for any other
    (llava-hf's own templates expect content lists, not the strings mm.chat renders). The tokenizer is set to
    add the special tokens that template leaves to it (`restore_added_special_tokens`)."""
    name = template_name_of(getattr(tokenizer, "chat_template", None))
    if name is None:
        return "vicuna_v1"
    if name != "chat_template" and not restore_added_special_tokens(tokenizer, name, image_token):
        log.warning("the %s chat template was edited after export; mm renders its own %s", name, name)
    return name


def restore_added_special_tokens(tokenizer, name: str, image_token: str) -> bool:
    """An export's tokenizer adds no special tokens; mm's `name` template leaves the BOS to the tokenizer.
    Set the tokenizer to add what makes the export's template the one mm writes for it (the template begins
    with the BOS exactly when the exported model's tokenizer added one); False when no setting does (the
    template was edited), leaving the tokenizer as it was."""
    if tokenizer.chat_template == jinja_template(name, tokenizer, image_token):
        return True
    trial = copy.deepcopy(tokenizer)
    for bos, eos in ((True, False), (False, True), (True, True)):
        set_added_special_tokens(trial, bos=bos, eos=eos)
        if tokenizer.chat_template == jinja_template(name, trial, image_token):
            set_added_special_tokens(tokenizer, bos=bos, eos=eos)
            return True
    return False


def _image_processor_config(directory: Path) -> dict | None:
    """preprocessor_config.json, or the image processor inside processor_config.json (transformers 5)."""
    for name in IMAGE_PROCESSOR_FILES:
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text())
            data = data.get("image_processor", data) if name == "processor_config.json" else data
            if "image_mean" in data or "size" in data:
                return data
    return None
