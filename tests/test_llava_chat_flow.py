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
from mm.llm import load_tokenizer
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


def flow_ids(processor, messages: list[dict], images: list) -> dict[str, list[int]]:
    """The prompt ids of transformers' flows over an exported processor: one step (`apply_chat_template` with
    `tokenize=True`, the images inside the messages), and two steps (render, then `processor(text=...)`) with
    special tokens left on, as on llava-hf model cards, or off, as in the README."""
    pictures = iter(images)
    inline = [{**message, "content": [{**item, "image": next(pictures)} if item["type"] == "image" else item
                                      for item in message["content"]]} if isinstance(message["content"], list)
              else message for message in messages]
    one_step = processor.apply_chat_template(inline, add_generation_prompt=True, tokenize=True, return_dict=True,
                                             return_tensors="pt")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    flows = {"one step": one_step,
             "two steps": processor(images=images, text=prompt, return_tensors="pt"),
             "two steps, add_special_tokens=False": processor(images=images, text=prompt, add_special_tokens=False,
                                                              return_tensors="pt")}
    return {name: inputs["input_ids"][0].tolist() for name, inputs in flows.items()}


def assert_every_flow_gives(flows: dict[str, list[int]], ours: list[int], bos_id: int | None) -> None:
    for name, ids in flows.items():
        assert ids == ours, name
        assert ids.count(bos_id) == ours.count(bos_id) <= 1, name  # one BOS at most, wherever the template puts it


def test_installed_export_gives_one_bos_in_every_transformers_flow(tmp_path):
    """Issue 20 item 11: the llava-hf two-step flow without add_special_tokens=False put two BOS in front."""
    from cli_checks import run_installed
    from transformers import AutoProcessor, AutoTokenizer

    model = tiny_model(seed=0, chat_template="vicuna_v1", image_transform="pad")  # its tokenizer adds a BOS
    model.save_pretrained(tmp_path / "ckpt")
    result = run_installed("mm-export", "hf-llava", tmp_path / "ckpt", tmp_path / "hf")
    assert result.returncode == 0, result.stderr.decode()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    conversation, messages = zip(*CONVERSATIONS["one image"])
    image = photo()
    ours = mm_inputs(model, list(conversation), [image])[0][0].tolist()
    assert ours[0] == model.tokenizer.bos_token_id
    assert_every_flow_gives(flow_ids(processor, list(messages), [image]), ours, model.tokenizer.bos_token_id)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")  # the template writes the BOS; the tokenizer adds none
    assert tokenizer("What is it?")["input_ids"] == tokenizer("What is it?", add_special_tokens=False)["input_ids"]
    config = (tmp_path / "hf" / "tokenizer_config.json").read_text()
    assert '"add_bos_token": false' in config  # for transformers 4's Llama tokenizers, which read it there

    back = mm.load_pretrained(tmp_path / "hf")  # mm adds the BOS again where its template leaves it to the tokenizer
    assert mm_inputs(back, list(conversation), [image])[0][0].tolist() == ours
    assert back.tokenizer("x")["input_ids"] == model.tokenizer("x")["input_ids"]
    # the export folder as a tokenizer source (`llm.tokenizer: EXPORT`, `mm-prep score --tokenizer EXPORT`)
    assert load_tokenizer(str(tmp_path / "hf"))("x")["input_ids"] == model.tokenizer("x")["input_ids"]


@pytest.mark.parametrize("shape", ["system, two images, two turns", "image after text, answer as a string"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_every_transformers_flow_gives_mm_ids(tmp_path, template, shape):
    from transformers import AutoProcessor

    model = tiny_model(seed=1, chat_template=template, image_transform="crop")
    mm.llava.export_llava_hf(model, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    conversation, messages = zip(*CONVERSATIONS[shape])
    images = [photo(40 + 10 * i, 45, seed=i) for i in range(sum(m["value"].count("<image>") for m in conversation))]
    ours = mm_inputs(model, list(conversation), images)[0][0].tolist()
    assert_every_flow_gives(flow_ids(processor, list(messages), images), ours, model.tokenizer.bos_token_id)


def test_a_tokenizer_that_keeps_adding_its_bos_is_exported_with_a_warning_and_loads_back(tmp_path, monkeypatch,
                                                                                        caplog):
    """A tokenizer whose BOS cannot be switched off (and exports written before the switch) still give mm's
    ids in the flows that tokenise without special tokens, and load back unchanged."""
    import mm.hf_processor

    model = tiny_model(seed=2, chat_template="vicuna_v1", image_transform="pad")
    monkeypatch.setattr(mm.hf_processor, "set_added_special_tokens", lambda tokenizer, bos, eos: None)
    with caplog.at_level("WARNING", logger="mm.hf_processor"):
        mm.llava.export_llava_hf(model, tmp_path / "hf")
    assert "add_special_tokens=False" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    back = mm.load_pretrained(tmp_path / "hf")
    assert "edited" not in caplog.text
    conversation = [{"from": "human", "value": "<image>\nHi"}]
    assert mm_inputs(back, conversation, [photo()])[0].tolist() == mm_inputs(model, conversation, [photo()])[0].tolist()


def test_an_edited_template_is_named_and_leaves_the_tokenizer_as_exported(tmp_path, caplog):
    model = tiny_model(seed=2, chat_template="vicuna_v1", image_transform="pad")
    mm.llava.export_llava_hf(model, tmp_path / "hf")
    jinja = tmp_path / "hf" / "chat_template.jinja"
    jinja.write_text(jinja.read_text() + "{{- ' edited' -}}")
    with caplog.at_level("WARNING", logger="mm.hf_processor"):
        back = mm.load_pretrained(tmp_path / "hf")
    assert "vicuna_v1 chat template was edited after export" in caplog.text
    assert back.tokenizer("x")["input_ids"] == back.tokenizer("x", add_special_tokens=False)["input_ids"]


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
