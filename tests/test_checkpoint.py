"""Checkpoints: self-contained round trip, atomic writes, safe loading; config JSON; the shipped tokenizer."""

import json
import os

import pytest
import torch
from helpers_model import prompt_ids, text_ids, tiny_model

import mm
from mm.config import VLMConfig
from mm.tiny import TINY_LLMS, TOKENIZER_DIR, tiny_config_path, tiny_vlm_config


def logits_of(model, seed: int = 0) -> torch.Tensor:
    ids = torch.tensor([prompt_ids(model, text_ids(model, "USER: "), 1, text_ids(model, " What color?"))])
    with torch.no_grad():
        return model(ids, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))).logits


@pytest.mark.parametrize(
    "vision, llm, projector",
    [("hf_clip", "llama", "mlp2x_gelu"), ("open_clip", "qwen2", "pixel_shuffle2x_mlp"), ("hf_siglip", "llama", "linear"),
     ("hf_clip", "qwen3", "pixel_shuffle2x_mlp")],
)
def test_round_trip_gives_the_same_logits(tmp_path, vision, llm, projector):
    model = tiny_model(vision, llm, projector, chat_template="plain", image_transform="crop")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = mm.load_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(logits_of(loaded), logits_of(model), rtol=0, atol=0)
    assert loaded.config.chat_template == "plain" and loaded.image_transform_config == model.image_transform_config
    assert loaded.tokens_per_image == model.tokens_per_image and loaded.image_token_id == model.image_token_id
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    # parameters were built on the meta device and replaced by the stored tensors: none may be left behind,
    # tied embeddings stay one Parameter, and the default trainable parts are restored
    assert {t.device.type for t in [*loaded.parameters(), *loaded.buffers()]} == {"cpu"}
    tied = loaded.llm.get_output_embeddings().weight is loaded.llm.get_input_embeddings().weight
    assert tied == (llm == "qwen2")
    assert [p.requires_grad for p in loaded.vision_tower.parameters()] == [False] * len(list(loaded.vision_tower.parameters()))
    assert all(p.requires_grad for p in [*loaded.projector.parameters(), *loaded.llm.parameters()])


def test_checkpoint_is_self_contained_and_pickle_free(tmp_path):
    model = tiny_model(image_transform="resize")
    model.save_pretrained(tmp_path / "ckpt")
    files = set(os.listdir(tmp_path / "ckpt"))
    assert {"mm_config.json", "model.safetensors", "tokenizer.json", "image_processing.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".py"))]
    saved = json.loads((tmp_path / "ckpt" / "mm_config.json").read_text())
    # architectures inline: loading needs neither the network nor the original config files
    assert saved["llm"]["model_config"]["hidden_size"] == 128 and saved["vision"]["model_config"]["patch_size"] == 8
    assert (saved["chat_template"], saved["image_transform"], saved["format_version"]) == ("vicuna_v1", "resize", 1)
    image = json.loads((tmp_path / "ckpt" / "image_processing.json").read_text())
    assert image == {"image_size": 64, "mean": [0.48145466, 0.4578275, 0.40821073],
                     "std": [0.26862954, 0.26130258, 0.27577711], "mode": "resize", "tokens_per_image": 64}
    assert set(os.listdir(tmp_path)) == {"ckpt"}  # no temp directories left behind


def test_saving_over_a_checkpoint_is_atomic(tmp_path, monkeypatch):
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    first.save_pretrained(tmp_path / "ckpt")
    import safetensors.torch

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", fail)
    with pytest.raises(OSError, match="disk full"):
        second.save_pretrained(tmp_path / "ckpt")
    assert set(os.listdir(tmp_path)) == {"ckpt"}
    torch.testing.assert_close(logits_of(mm.load_pretrained(tmp_path / "ckpt")), logits_of(first))
    monkeypatch.undo()
    second.save_pretrained(tmp_path / "ckpt")
    assert set(os.listdir(tmp_path)) == {"ckpt"}
    torch.testing.assert_close(logits_of(mm.load_pretrained(tmp_path / "ckpt")), logits_of(second))


def test_new_image_token_grows_the_embeddings_and_survives_saving(tmp_path):
    model = tiny_model(image_token="<img>")
    assert len(model.tokenizer) == 1239 and model.image_token_id == 1238
    assert {"<img>", "<image>", "<|im_start|>", "<|im_end|>"} <= set(model.tokenizer.all_special_tokens)
    assert model.llm.get_input_embeddings().num_embeddings == 1239
    assert model.llm.get_output_embeddings().weight.shape[0] == 1239
    model.save_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(logits_of(mm.load_pretrained(tmp_path / "ckpt")), logits_of(model))


def test_missing_or_extra_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_model().save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if k != "projector.linear_2.bias"}, weights)
    with pytest.raises(ValueError, match=r"missing \['projector.linear_2.bias'\]"):
        mm.load_pretrained(tmp_path / "ckpt")
    save_file({**state, "projector.extra": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match=r"unexpected \['projector.extra'\]"):
        mm.load_pretrained(tmp_path / "ckpt")


def test_torch_dtype_on_load(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ckpt")
    model = mm.load_pretrained(tmp_path / "ckpt", torch_dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert logits_of(model).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown or non-float torch_dtype 'float99'"):
        mm.load_pretrained(tmp_path / "ckpt", torch_dtype="float99")


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: no such local path, and it is not a Hub id"):
        mm.load_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither an mm checkpoint"):
        mm.load_pretrained(tmp_path / "empty")
    tiny_model().save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "mm_config.json").read_text())
    (tmp_path / "ckpt" / "mm_config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        mm.load_pretrained(tmp_path / "ckpt")


def test_hub_ids_that_cannot_be_fetched_are_reported(monkeypatch):
    import huggingface_hub

    requested = []

    def offline(repo_id, **kwargs):
        requested.append(repo_id)
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="someone/model: no such local path, and as a Hub id it could not be fetched: offline"):
        mm.load_pretrained("someone/model")
    assert requested == ["someone/model"]


def test_custom_code_needs_trust_remote_code(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "mm_config.json"
    config = json.loads(path.read_text())
    config["llm"]["model_config"]["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        mm.load_pretrained(tmp_path / "ckpt")


# ----------------------------------------------------------------------------- config
def test_config_json_round_trip_and_validation(tmp_path):
    config = tiny_vlm_config("open_clip", "qwen2", "pixel_shuffle2x_mlp", chat_template="chat_template")
    config.save_json(tmp_path / "c.json")
    assert VLMConfig.load_json(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match=r"unknown VisionTowerConfig fields \['layer'\]"):
        VLMConfig.from_dict({"vision": {"layer": 3}})
    with pytest.raises(ValueError, match="image_transform='squash' is not one of"):
        VLMConfig(image_transform="squash")
    with pytest.raises(ValueError, match="no tiny vision tower 'vit'"):
        tiny_vlm_config(vision="vit")


# ----------------------------------------------------------------------------- shipped tokenizer
def test_shipped_tokenizer_is_rebuilt_identically(tmp_path):
    from mm.assets.build_tokenizer import build

    build(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / name).read_text() == (TOKENIZER_DIR / name).read_text(), name


def test_shipped_tokenizer_properties():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    assert tok.is_fast
    for name in TINY_LLMS:
        assert json.loads(tiny_config_path(name).read_text())["vocab_size"] == len(tok)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>"]
    assert tok.convert_tokens_to_ids(specials) == list(range(7))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    text = "USER: <image>\nWhat color is the star? ASSISTANT: Purple, naïve 日本 🙂</s>"
    encoded = tok(text, return_offsets_mapping=True)
    assert encoded.input_ids[0] == tok.bos_token_id
    assert tok.decode(encoded.input_ids[1:]) == text  # byte-level: anything round-trips
    assert encoded.input_ids.count(tok.convert_tokens_to_ids("<image>")) == 1
    assert text[slice(*encoded.offset_mapping[1])] == "USER"
    # the synthetic-scene vocabulary is made of whole tokens
    for word in ("circle", "square", "triangle", "purple", "yellow", "left", "below", "How", "many"):
        assert len(tok(" " + word, add_special_tokens=False).input_ids) == 1, word
    assert len(tok.get_vocab()) < 4096


def test_shipped_tokenizer_chat_template_is_chatml():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    rendered = tok.apply_chat_template([{"role": "user", "content": "Is there a star?"}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nIs there a star?<|im_end|>\n<|im_start|>assistant\n"
    )


# ----------------------------------------------------------------------------- building from sources
def test_llm_from_a_local_directory_loads_its_weights(tmp_path):
    import transformers

    from mm.config import LLMConfig

    arch = json.loads(tiny_config_path("llama").read_text())
    torch.manual_seed(9)
    llama = transformers.LlamaForCausalLM(transformers.AutoConfig.for_model(**arch)).eval()
    llama.save_pretrained(tmp_path / "llm")
    transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(tmp_path / "llm")
    config = tiny_vlm_config()
    config.llm = LLMConfig(name_or_path=str(tmp_path / "llm"))
    model = mm.build_vlm(config).eval()
    ids = torch.tensor([[1, 300, 301, 302]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llama(ids).logits)


def test_a_saved_config_rebuilds_from_its_sources(tmp_path):
    """mm_config.json records inline architectures, yet reusing it for a new run reads the named sources."""
    tiny_model().save_pretrained(tmp_path / "ckpt")
    from mm.checkpoint import read_config

    model = mm.build_vlm(read_config(tmp_path / "ckpt"))
    assert model.tokens_per_image == 64 and model.llm.config.hidden_size == 128


def test_parts_of_a_llava_directory_are_refused(tmp_path):
    from mm.config import LLMConfig, VisionTowerConfig

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    config = tiny_vlm_config()
    config.llm = LLMConfig(name_or_path=str(tmp_path))
    with pytest.raises(ValueError, match="is a llava-hf directory: load it whole with mm.load_pretrained"):
        mm.build_vlm(config)
    config = tiny_vlm_config()
    config.vision = VisionTowerConfig(kind="hf_clip", name_or_path=str(tmp_path))
    with pytest.raises(ValueError, match="is a llava-hf directory"):
        mm.build_vlm(config)


def test_parts_from_inline_config_dicts():
    """name_or_path "" + model_config: a new model with random weights, no files needed."""
    from mm.config import LLMConfig, VisionTowerConfig

    config = tiny_vlm_config()
    config.vision = VisionTowerConfig(kind="hf_siglip", name_or_path="",
                                      model_config=json.loads(tiny_config_path("hf_siglip").read_text()))
    config.llm = LLMConfig(name_or_path="", model_config=json.loads(tiny_config_path("qwen2").read_text()),
                           tokenizer=str(TOKENIZER_DIR))
    model = mm.build_vlm(config)
    assert type(model.llm).__name__ == "Qwen2ForCausalLM" and model.vision_tower.num_prefix_tokens == 0
    config.llm = LLMConfig(name_or_path="", tokenizer=str(TOKENIZER_DIR))
    with pytest.raises(ValueError, match="needs an inline `model_config` or a config JSON"):
        mm.build_vlm(config)
