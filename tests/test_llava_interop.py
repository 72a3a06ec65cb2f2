"""transformers Llava interop: llava-hf directories load with equal logits; mm-export writes ones that do."""

import json

import pytest
import torch
from helpers_model import left_pad, tiny_model

import mm
from mm.export import main as export_main
from mm.llava import LlavaIncompatible, load_llava_hf
from mm.tiny import TOKENIZER_DIR, tiny_config_path, tiny_vlm_config

ATOL = 1e-4


def tiny_llava(vision="hf_clip", llm="llama", seed=0, **overrides):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = transformers.LlavaConfig(
        vision_config=json.loads(tiny_config_path(vision).read_text()),
        text_config=json.loads(tiny_config_path(llm).read_text()),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **overrides,
    )
    torch.manual_seed(seed)
    return transformers.LlavaForConditionalGeneration(config).eval(), tokenizer


# The style of llava-hf/llava-1.5-7b-hf's template: it reads content lists (images first), never strings.
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def save_llava(llava, tokenizer, directory, legacy_layout=False):
    """A directory laid out as llava-hf's: weights, tokenizer, and a processor with a content-list template
    (CLIP: resize the short side and centre-crop, as llava-1.5-hf; SigLIP: resize to the square)."""
    from transformers import CLIPImageProcessor, LlavaProcessor, SiglipImageProcessor

    llava.save_pretrained(directory)
    vision = llava.config.vision_config
    side = vision.image_size
    if vision.model_type == "clip_vision_model":
        images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    else:
        images = SiglipImageProcessor(size={"height": side, "width": side})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=vision.patch_size,
                   vision_feature_select_strategy=llava.config.vision_feature_select_strategy,
                   chat_template=LLAVA_HF_TEMPLATE).save_pretrained(directory)
    if legacy_layout:
        write_legacy_layout(directory)


def write_legacy_layout(directory):
    """Rename weights to the layout of published llava-hf repos (e.g. llava-hf/llava-1.5-7b-hf)."""
    from safetensors.torch import load_file, save_file

    renames = [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.", "multi_modal_projector.")]
    state = load_file(directory / "model.safetensors")
    legacy = {}
    for key, value in state.items():
        for new, old in renames:
            if key.startswith(new):
                key = old + key[len(new):]
                break
        legacy[key] = value
    save_file(legacy, directory / "model.safetensors", metadata={"format": "pt"})


def batch(model_or_tokens_per_image, image_token_id=4):
    """Two left-padded prompts with one image each, as both models see them."""
    per_image = model_or_tokens_per_image
    rows = [[1, 300, 301] + [image_token_id] * per_image + [302, 303, 304], [1] + [image_token_id] * per_image + [305]]
    ids, mask = left_pad(rows, 3)
    return ids, mask, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)  # left padding does not shift positions


def llava_logits(llava, ids, mask, pixels):
    with torch.no_grad():
        return llava(input_ids=ids, attention_mask=mask, position_ids=positions(mask), pixel_values=pixels).logits


def our_logits(model, ids, mask, pixels):
    with torch.no_grad():
        return model(ids, pixels, attention_mask=mask, position_ids=positions(mask)).logits


@pytest.mark.parametrize(
    "vision, llm, overrides, legacy",
    [
        ("hf_clip", "llama", {}, False),
        ("hf_clip", "llama", {"vision_feature_select_strategy": "full", "vision_feature_layer": -1}, True),
        ("hf_siglip", "qwen2", {"vision_feature_select_strategy": "full", "multimodal_projector_bias": False}, False),
    ],
)
def test_llava_hf_directory_loads_with_equal_logits(tmp_path, vision, llm, overrides, legacy):
    llava, tokenizer = tiny_llava(vision, llm, **overrides)
    save_llava(llava, tokenizer, tmp_path, legacy_layout=legacy)
    model = mm.load_pretrained(tmp_path)
    assert model.config.chat_template == "vicuna_v1"  # their template reads content lists: LLaVA-1.5's instead
    assert model.config.image_transform == ("crop" if vision == "hf_clip" else "resize")  # what their processor does
    keeps_cls = vision == "hf_clip" and overrides.get("vision_feature_select_strategy") == "full"
    assert model.tokens_per_image == 64 + keeps_cls
    assert model.config.vision.select_layer == overrides.get("vision_feature_layer", -2)
    ids, mask, pixels = batch(model.tokens_per_image)
    expected = llava_logits(llava, ids, mask, pixels)
    torch.testing.assert_close(our_logits(model, ids, mask, pixels), expected, atol=ATOL, rtol=0)
    real = mask.bool()  # padded positions are never read
    assert not torch.allclose(expected[real], torch.zeros_like(expected[real]))


def test_greedy_generation_matches_llava(tmp_path):
    llava, tokenizer = tiny_llava(seed=4)
    save_llava(llava, tokenizer, tmp_path)
    model = mm.load_pretrained(tmp_path)
    ids, mask, pixels = batch(64)
    theirs = llava.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=6,
                            do_sample=False, eos_token_id=None, pad_token_id=3, min_new_tokens=6)
    ours = model.generate(ids, mask, pixels, max_new_tokens=6, eos_token_id=-1)
    assert torch.equal(ours, theirs[:, ids.shape[1]:])


@pytest.mark.parametrize(
    "vision, llm, keep_cls, strategy",
    [("hf_clip", "llama", False, "default"), ("hf_clip", "qwen2", True, "full"), ("hf_siglip", "llama", False, "full")],
)
def test_export_to_llava_gives_equal_logits(tmp_path, vision, llm, keep_cls, strategy):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    config = tiny_vlm_config(vision, llm)
    config.vision.keep_prefix_tokens = keep_cls
    torch.manual_seed(5)
    model = mm.build_vlm(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert export_main(["hf-llava", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert llava.config.vision_feature_select_strategy == strategy
    assert llava.config.image_seq_length == model.tokens_per_image
    ids, mask, pixels = batch(model.tokens_per_image)
    torch.testing.assert_close(llava_logits(llava, ids, mask, pixels), our_logits(model, ids, mask, pixels),
                               atol=ATOL, rtol=0)
    # the processor expands one <image> into as many placeholders as the model expects
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    encoded = processor(images=Image.new("RGB", (80, 60)), text="USER: <image>\nHi ASSISTANT:", return_tensors="pt")
    assert int((encoded["input_ids"] == model.image_token_id).sum()) == model.tokens_per_image
    assert encoded["pixel_values"].shape == (1, 3, 64, 64)
    # and the exported directory loads back into mm with the same logits
    back = mm.load_pretrained(tmp_path / "hf")
    assert back.image_transform_config == model.image_transform_config  # size, normalisation and mode
    assert back.config.chat_template == model.config.chat_template
    torch.testing.assert_close(our_logits(back, ids, mask, pixels), our_logits(model, ids, mask, pixels),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "vision, projector, reason",
    [
        ("open_clip", "mlp2x_gelu", "the vision tower is 'open_clip'; transformers' Llava builds its tower with AutoModel"),
        ("hf_clip", "pixel_shuffle2x_mlp", "the projector is 'pixel_shuffle2x_mlp'; Llava's projector is Linear -> GELU"),
        ("hf_siglip", "linear", "the projector is 'linear'"),
    ],
)
def test_export_refuses_what_llava_cannot_express(tmp_path, capsys, vision, projector, reason):
    tiny_model(vision, "llama", projector).save_pretrained(tmp_path / "ckpt")
    assert export_main(["hf-llava", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_export_refuses_learned_grid_positions(tmp_path, capsys):
    import mm
    from mm.tiny import tiny_vlm_config

    config = tiny_vlm_config()
    config.projector.grid_position = True
    mm.build_vlm(config).save_pretrained(tmp_path / "ckpt")
    assert export_main(["hf-llava", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2
    assert "learned row and column embeddings (grid_position); Llava has none" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "vision, overrides, message",
    [
        ("hf_siglip", {"vision_feature_select_strategy": "default"}, "drops a real patch token"),
        ("hf_clip", {"vision_feature_layer": [-2, -1]}, "several layers concatenated"),
        ("hf_clip", {"projector_hidden_act": "relu"}, "only 'gelu' is supported"),
    ],
)
def test_loading_refuses_llava_settings_we_cannot_reproduce(tmp_path, vision, overrides, message):
    llava, tokenizer = tiny_llava(vision, **overrides)
    save_llava(llava, tokenizer, tmp_path)
    with pytest.raises(LlavaIncompatible, match=message):
        load_llava_hf(tmp_path)


def test_export_can_cast_weights(tmp_path):
    from safetensors import safe_open

    tiny_model().save_pretrained(tmp_path / "ckpt")
    assert export_main(["hf-llava", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"BF16"}


def test_export_cli_usage(tmp_path, capsys):
    assert export_main(["hf-llava", str(tmp_path / "missing"), str(tmp_path / "hf")]) == 2
    assert "mm-export: error: cannot load" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        export_main(["onnx", "a", "b"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
