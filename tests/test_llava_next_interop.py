"""transformers LlavaNext interop: `mm-export hf-llava-next` writes directories whose model gives our logits and
whose processor gives our prompt ids, views and image sizes from a raw image; `mm.load_pretrained` reads them,
and llava-hf-made ones, back with equal logits."""

import json

import pytest
import torch
from test_anyres_model import PINPOINTS, anyres_model, conversation_inputs, pictures
from test_export_safety import one_error_line
from test_llava_interop import LLAVA_HF_TEMPLATE, positions, write_legacy_layout

import mm
from mm.anyres import anyres_grid, unpadded_shape
from mm.export import main as export_main
from mm.llava import LlavaIncompatible, load_llava_hf
from mm.tiny import TOKENIZER_DIR, tiny_config_path

ATOL = 1e-4
# (height, width): wide, tall, very wide, square, near square; each prompt row's images in placeholder order
SIZES = [(45, 80), (150, 60), (31, 200), (64, 64), (100, 130)]
ROWS = [[0, 1], [2], [3], [4]]  # row 0: two images in one prompt
QUESTIONS = ["Compare them.", "What is it?", "Wide?", "Square?"]


def test_the_sizes_unpad_on_each_axis():
    """The logits and token counts below see images whose tiles' padding is cropped in rows and in columns."""
    cropped = set()
    for size in SIZES:
        rows, cols = anyres_grid(size, PINPOINTS, 64)
        height, width = unpadded_shape(size, (rows, cols), 8)
        cropped |= {"rows"} if height < rows * 8 else set()
        cropped |= {"columns"} if width < cols * 8 else set()
    assert cropped == {"rows", "columns"}


def conversation(row):
    """One user turn with the row's images, in mm's form and as transformers' content list."""
    text = "".join("<image>\n" for _ in row) + QUESTIONS[ROWS.index(row)]
    content = [{"type": "image"} for _ in row] + [{"type": "text", "text": QUESTIONS[ROWS.index(row)]}]
    return [{"from": "human", "value": text}], [{"role": "user", "content": content}]


def mm_batch(model, images):
    """Every row left-padded into one batch: ids, mask, all views (placeholder order), all sizes."""
    rows, views, sizes = [], [], []
    for row in ROWS:
        ids, pixels, row_sizes = conversation_inputs(model, conversation(row)[0], [images[i] for i in row])
        rows.append(ids)
        views.append(pixels)
        sizes += row_sizes
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask, torch.cat(views), sizes


def our_logits(model, ids, mask, pixels, sizes):
    with torch.no_grad():
        return model(ids, pixels, attention_mask=mask, position_ids=positions(mask), image_sizes=sizes).logits


def next_logits(llava, ids, mask, pixels, sizes):
    with torch.no_grad():
        return llava(input_ids=ids, attention_mask=mask, position_ids=positions(mask), pixel_values=pixels,
                     image_sizes=torch.tensor(sizes)).logits


def assert_same_logits(theirs, ours, mask):
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    real = theirs[mask.bool()]
    assert real.abs().amax() > 0.01  # not a degenerate zero output


@pytest.fixture(scope="module", params=[("hf_clip", "llama"), ("hf_siglip", "qwen2")], ids=lambda p: "-".join(p))
def exported(request, tmp_path_factory):
    vision, llm = request.param
    model = anyres_model(seed=7, vision=vision, llm=llm)
    with torch.no_grad():  # a newline far from the tokens' scale: a misplaced one shows in the logits
        model.projector.image_newline.mul_(20)
    directory = tmp_path_factory.mktemp(f"next-{vision}")
    model.save_pretrained(directory / "ckpt")
    assert export_main(["hf-llava-next", str(directory / "ckpt"), str(directory / "hf")]) == 0
    return model, directory / "hf"


def test_export_gives_llava_next_our_logits(exported):
    from transformers import LlavaNextForConditionalGeneration

    model, out = exported
    llava = LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    strategy = "default" if model.vision_tower.num_prefix_tokens else "full"  # CLIP's CLS dropped, SigLIP has none
    assert llava.config.vision_feature_select_strategy == strategy
    assert llava.config.image_grid_pinpoints == PINPOINTS and llava.config.image_seq_length == 64
    torch.testing.assert_close(llava.model.image_newline, model.projector.image_newline, atol=0, rtol=0)
    ids, mask, pixels, sizes = mm_batch(model, pictures(SIZES))
    assert_same_logits(next_logits(llava, ids, mask, pixels, sizes), our_logits(model, ids, mask, pixels, sizes), mask)


def test_the_exported_processor_gives_our_ids_views_and_sizes(exported):
    from test_llava_chat_flow import assert_every_flow_gives, flow_ids
    from transformers import AutoProcessor

    model, out = exported
    processor = AutoProcessor.from_pretrained(out)
    images = pictures(SIZES)
    transform = model.make_image_transform()
    for row in ROWS:
        ours, theirs = conversation(row)
        row_images = [images[i] for i in row]
        prompt = processor.apply_chat_template(theirs, add_generation_prompt=True)
        inputs = processor(images=row_images, text=prompt, add_special_tokens=False, return_tensors="pt")
        ids, _, sizes = conversation_inputs(model, ours, row_images)
        # one BOS whether the rendered prompt is tokenised with special tokens or without, or in one step
        assert_every_flow_gives(flow_ids(processor, theirs, row_images), ids, model.tokenizer.bos_token_id)
        assert inputs["image_sizes"].tolist() == [list(size) for size in sizes]
        for padded, image in zip(inputs["pixel_values"], row_images):  # padded to the prompt's most views
            views = transform.normalize(transform.views(image))
            torch.testing.assert_close(padded[: len(views)], views, atol=1e-5, rtol=0)
            assert not padded[len(views):].any()


def test_the_readme_snippet_with_llava_next_generates_our_tokens(exported, tmp_path, monkeypatch):
    from PIL import Image
    from test_llava_chat_flow import QUESTION, readme_snippet

    from mm.chat import stop_token_ids

    model, out = exported
    (tmp_path / "my_llava_hf").symlink_to(out)
    pictures([(150, 60)])[0].save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    theirs = {}
    snippet = readme_snippet().replace("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
    exec(snippet, theirs)  # noqa: S102  (the README's own code, as test_llava_chat_flow runs it)
    image = Image.open(tmp_path / "photo.jpg")
    ids, pixels, sizes = conversation_inputs(model, [{"from": "human", "value": f"<image>\n{QUESTION}"}], [image])
    assert theirs["inputs"]["input_ids"][0].tolist() == ids
    ids = torch.tensor([ids])
    ours = model.generate(ids, torch.ones_like(ids), pixels, max_new_tokens=theirs["new_tokens"].shape[1],
                          eos_token_id=stop_token_ids(model.tokenizer, model.config.chat_template), image_sizes=sizes)
    assert torch.equal(theirs["new_tokens"], ours)


def test_the_export_loads_back_with_our_logits(exported):
    model, out = exported
    back = mm.load_pretrained(out)
    assert back.config.image_transform == "anyres" and back.config.image_grid_pinpoints == PINPOINTS
    assert back.image_transform_config == model.image_transform_config
    assert back.config.chat_template == model.config.chat_template
    assert back.config.vision.keep_prefix_tokens is False
    ids, mask, pixels, sizes = mm_batch(model, pictures(SIZES))
    assert_same_logits(our_logits(back, ids, mask, pixels, sizes), our_logits(model, ids, mask, pixels, sizes), mask)


# ----------------------------------------------------------------------------- llava-hf-made directories
def tiny_llava_next(vision, llm, seed=0, **overrides):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = transformers.LlavaNextConfig(
        vision_config=json.loads(tiny_config_path(vision).read_text()),
        text_config=json.loads(tiny_config_path(llm).read_text()),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS, **overrides,
    )
    torch.manual_seed(seed)
    return transformers.LlavaNextForConditionalGeneration(config).eval(), tokenizer


def save_llava_next(llava, tokenizer, directory, processor_pinpoints=PINPOINTS):
    """Laid out as llava-hf/llava-v1.6-*: LlavaNextImageProcessor at the tower's size, content-list template."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    llava.save_pretrained(directory)
    vision = llava.config.vision_config
    side = vision.image_size
    images = LlavaNextImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                     image_grid_pinpoints=processor_pinpoints)
    LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=vision.patch_size,
                       vision_feature_select_strategy=llava.config.vision_feature_select_strategy,
                       num_additional_image_tokens=int(vision.model_type == "clip_vision_model"),
                       chat_template=LLAVA_HF_TEMPLATE).save_pretrained(directory)


@pytest.mark.parametrize("vision, llm, overrides, legacy", [
    ("hf_clip", "llama", {}, False),
    ("hf_clip", "llama", {}, True),  # weights named as in the published llava-hf/llava-v1.6-* repos
    ("hf_siglip", "qwen2", {"vision_feature_select_strategy": "full", "vision_feature_layer": -1}, False),
])
def test_llava_hf_next_directory_loads_with_equal_logits(tmp_path, vision, llm, overrides, legacy):
    llava, tokenizer = tiny_llava_next(vision, llm, seed=2, **overrides)
    save_llava_next(llava, tokenizer, tmp_path)
    if legacy:
        write_legacy_layout(tmp_path)
    model = mm.load_pretrained(tmp_path)
    assert model.config.image_transform == "anyres" and model.config.image_grid_pinpoints == PINPOINTS
    assert model.config.chat_template == "vicuna_v1"  # their template reads content lists: LLaVA-1.5's instead
    assert model.config.vision.select_layer == overrides.get("vision_feature_layer", -2)
    ids, mask, pixels, sizes = mm_batch(model, pictures(SIZES))
    assert_same_logits(next_logits(llava, ids, mask, pixels, sizes), our_logits(model, ids, mask, pixels, sizes), mask)


@pytest.mark.parametrize("overrides, pinpoints, message", [
    ({"vision_feature_select_strategy": "full"}, PINPOINTS, "keeps hf_clip's class token"),
    ({}, PINPOINTS[:2], "the image processor tiles at"),
])
def test_loading_refuses_llava_next_settings_we_cannot_reproduce(tmp_path, overrides, pinpoints, message):
    llava, tokenizer = tiny_llava_next("hf_clip", "llama", **overrides)
    save_llava_next(llava, tokenizer, tmp_path, processor_pinpoints=pinpoints)
    with pytest.raises(LlavaIncompatible, match=message):
        load_llava_hf(tmp_path)


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("fmt, kwargs, reason", [
    ("hf-llava-next", {"projector": "pixel_shuffle2x_mlp"},
     "the projector is 'pixel_shuffle2x_mlp'; LlavaNext's projector is Linear -> GELU -> Linear"),
    ("hf-llava-next", {"anyres_max_tiles": 4}, "anyres_max_tiles=4 pools the tiles' features"),
    ("hf-llava", {}, "the model tiles images (image_transform 'anyres'), which Llava cannot; export it as hf-llava-next"),
])
def test_export_refuses_what_llava_next_cannot_express(tmp_path, capsys, fmt, kwargs, reason):
    anyres_model(**kwargs).save_pretrained(tmp_path / "ckpt")
    assert export_main([fmt, str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2
    one_error_line(capsys.readouterr().err, f"cannot export {tmp_path / 'ckpt'} as {fmt}", reason)
    assert not (tmp_path / "hf").exists()


def test_a_single_view_model_is_sent_to_hf_llava(tmp_path, capsys):
    from helpers_model import tiny_model

    tiny_model().save_pretrained(tmp_path / "ckpt")
    assert export_main(["hf-llava-next", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2
    one_error_line(capsys.readouterr().err, "image_transform is 'pad'; export it as hf-llava")
    assert not (tmp_path / "hf").exists()
