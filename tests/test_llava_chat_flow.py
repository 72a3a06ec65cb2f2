"""An mm-export hf-llava directory behaves in transformers' own chat flow exactly as the model does in mm:
same prompt ids, same pixels, same greedy tokens, for every image mode and chat template; and back."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_model import tiny_model
from PIL import Image

import mm
from mm.chat import encode_prompt, jinja_template, stop_token_ids
from mm.export import main as export_main
from mm.llava import LlavaDirectoryIncomplete
from mm.tiny import TOKENIZER_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
MODES = ("pad", "crop", "resize")
TEMPLATES = ("vicuna_v1", "plain", "chat_template")
QUESTION = "What is in the picture?"  # the README snippet's question


def readme_snippet() -> str:
    section = README.read_text().split("## Export and serve", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the export section has one runnable transformers example"
    return blocks[0]


def photo(width=80, height=45, seed=0):
    """Non-square noise: every pixel matters, and pad, crop and resize all give different pictures."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def mm_inputs(model, conversation, images):
    ids = encode_prompt(conversation, model.tokenizer, model.config.chat_template,
                        tokens_per_image=model.tokens_per_image)
    transform = model.make_image_transform()
    return torch.tensor([ids]), transform.normalize(torch.stack([transform(image) for image in images]))


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("mode", MODES)
def test_readme_transformers_snippet_matches_mm(tmp_path, monkeypatch, mode, template):
    model = tiny_model(seed=0, chat_template=template, image_transform=mode)
    model.save_pretrained(tmp_path / "ckpt")
    assert export_main(["hf-llava", str(tmp_path / "ckpt"), str(tmp_path / "my_llava_hf")]) == 0
    photo().save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    theirs = {}
    exec(compile(readme_snippet(), str(README), "exec"), theirs)  # AutoProcessor + LlavaForConditionalGeneration

    image = Image.open(tmp_path / "photo.jpg")  # the same decoded pixels the snippet saw
    ids, pixels = mm_inputs(model, [{"from": "human", "value": f"<image>\n{QUESTION}"}], [image])
    assert torch.equal(theirs["inputs"]["input_ids"], ids)
    torch.testing.assert_close(theirs["inputs"]["pixel_values"], pixels, atol=1e-3, rtol=0)
    new_tokens = theirs["new_tokens"]
    ours = model.generate(ids, torch.ones_like(ids), pixels, max_new_tokens=new_tokens.shape[1],
                          eos_token_id=stop_token_ids(model.tokenizer, template))
    assert torch.equal(new_tokens, ours)
    assert len(set(ours[0].tolist())) > 1  # a real sequence, not one token repeated

    back = mm.load_pretrained(tmp_path / "my_llava_hf")  # the mode and template come back from the processor files
    assert (back.config.image_transform, back.config.chat_template) == (mode, template)
    assert back.image_transform_config == model.image_transform_config


# Conversation shapes in mm's form and in the content lists transformers, vLLM and SGLang send.
SYSTEM = ({"from": "system", "value": "Answer in one word."},
          {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]})
CONVERSATIONS = {
    "one image": [({"from": "human", "value": "<image>\nWhat is it?"},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]})],
    "system, two images, two turns": [
        SYSTEM,
        ({"from": "human", "value": "<image>\n<image>\nCompare them."},
         {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                      {"type": "text", "text": "Compare them."}]}),
        ({"from": "gpt", "value": "Same."}, {"role": "assistant", "content": [{"type": "text", "text": "Same."}]}),
        ({"from": "human", "value": "Why?"}, {"role": "user", "content": "Why?"}),
    ],
    "image after text, answer as a string": [
        ({"from": "human", "value": "Describe\n<image>"},
         {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image"}]}),
        ({"from": "gpt", "value": "A cat."}, {"role": "assistant", "content": "A cat."}),
        ({"from": "human", "value": "<image>\nAnd this?"},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]}),
    ],
}


@pytest.mark.parametrize("shape", sorted(CONVERSATIONS))
@pytest.mark.parametrize("template", TEMPLATES)
def test_jinja_template_renders_what_mm_encodes(template, shape):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    conversation, messages = zip(*CONVERSATIONS[shape])
    jinja = jinja_template(template, tokenizer)
    text = tokenizer.apply_chat_template(list(messages), chat_template=jinja, tokenize=False,
                                         add_generation_prompt=True)
    ours = encode_prompt(list(conversation), tokenizer, template, tokens_per_image=1)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ours
    assert jinja_template(template, tokenizer) == jinja  # deterministic: import recognises it by equality
    string_form = [{"role": m["role"], "content": c["value"]} for m, c in zip(messages, conversation)]
    assert tokenizer.apply_chat_template(string_form, chat_template=jinja, tokenize=False,
                                         add_generation_prompt=True) == text  # mm's own strings render the same


@pytest.mark.parametrize("template", TEMPLATES)
def test_processor_expands_several_images_and_turns_like_mm(tmp_path, template):
    from transformers import AutoProcessor

    model = tiny_model(vision="hf_siglip", llm="qwen2", seed=1, chat_template=template, image_transform="pad")
    mm.llava.export_llava_hf(model, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    conversation, messages = zip(*CONVERSATIONS["system, two images, two turns"])
    images = [photo(80, 45, seed=2), photo(30, 70, seed=3)]
    prompt = processor.apply_chat_template(list(messages), add_generation_prompt=True)
    inputs = processor(images=images, text=prompt, add_special_tokens=False, return_tensors="pt")
    ids, pixels = mm_inputs(model, list(conversation), images)
    assert torch.equal(inputs["input_ids"], ids)
    torch.testing.assert_close(inputs["pixel_values"], pixels, atol=1e-3, rtol=0)


def test_round_trip_keeps_config_and_logits(tmp_path):
    model = tiny_model(vision="hf_siglip", llm="qwen2", seed=2, chat_template="chat_template", image_transform="crop")
    mm.llava.export_llava_hf(model, tmp_path / "hf")
    back = mm.load_pretrained(tmp_path / "hf")
    back.save_pretrained(tmp_path / "mm")
    mm.llava.export_llava_hf(mm.load_pretrained(tmp_path / "mm"), tmp_path / "hf2")  # and once more
    jinja = [(tmp_path / folder / "chat_template.jinja").read_text() for folder in ("hf", "hf2")]
    assert jinja[0] == jinja[1]  # a re-export does not wrap the template twice
    for key in ("image_transform", "chat_template", "image_token"):
        assert getattr(back.config, key) == getattr(model.config, key)
    assert back.image_transform_config == model.image_transform_config  # image size, mean, std, mode
    ids, pixels = mm_inputs(model, [{"from": "human", "value": "<image>\nHi"}], [photo()])
    with torch.no_grad():
        torch.testing.assert_close(back(ids, pixels).logits, model(ids, pixels).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("select_layer", [0, 1, -1])
def test_transformers_runs_an_export_of_any_feature_layer(tmp_path, select_layer):
    # the demo recipes read the embeddings (select_layer 0), which transformers' Llava took for "no hidden states"
    from transformers import LlavaForConditionalGeneration
    from mm.tiny import tiny_vlm_config

    config = tiny_vlm_config()
    config.vision.select_layer = select_layer
    torch.manual_seed(0)
    model = mm.build_vlm(config).eval()
    mm.llava.export_llava_hf(model, tmp_path / "hf")
    theirs = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ids, pixels = mm_inputs(model, [{"from": "human", "value": "<image>\nHi"}], [photo()])
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids, pixel_values=pixels).logits, model(ids, pixels).logits,
                                   atol=1e-4, rtol=0)
    back = mm.load_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids, pixels).logits, model(ids, pixels).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "remove, named",
    [
        (("tokenizer.json",), "tokenizer (tokenizer.json"),
        (("preprocessor_config.json", "processor_config.json"), "image processor config (preprocessor_config.json)"),
        (("model.safetensors",), "safetensors weights (model.safetensors or model.safetensors.index.json)"),
    ],
)
def test_incomplete_llava_directory_is_one_clear_error(tmp_path, capsys, remove, named):
    from eval.cli import main as eval_main
    from eval.tiny_bench import write_tiny_vqa_benchmark

    hf = tmp_path / "hf"
    mm.llava.export_llava_hf(tiny_model(), hf)
    for name in remove:
        (hf / name).unlink()
    capsys.readouterr()  # the export's progress bars
    with pytest.raises(LlavaDirectoryIncomplete, match=re.escape(f"llava-hf directory {hf} is missing: {named}")):
        mm.load_pretrained(hf)

    assert export_main(["hf-llava", str(hf), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mm-export: error: cannot load {hf}: llava-hf directory {hf} is missing: {named}")
    assert err.count("\n") == 1

    options = write_tiny_vqa_benchmark(tmp_path / "bench", num_images=1, questions_per_image=1)
    argv = ["run", "--checkpoint", str(hf), "--task", "vqav2", "--out", str(tmp_path / "out"), "--device", "cpu",
            "--questions", options["questions"], "--annotations", options["annotations"],
            "--image-root", options["image_root"]]
    assert eval_main(argv) == 2
    err = capsys.readouterr().err
    assert f"mm-eval: error: llava-hf directory {hf} is missing: {named}" in err and "Traceback" not in err
