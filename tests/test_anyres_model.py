"""Anyres on the model and every path that feeds it: each image's placeholder count from its size (one rule,
`mm.image_tokens.ImageTokens`), views and sizes through prompt encoding, data loading, packing, training,
batched left-padded generation, evaluation and chat; every projector; multi-image and text-only samples."""

from __future__ import annotations

import pytest
import torch
from test_llava_chat_flow import photo

import mm
from mm.chat import encode_prompt, stop_token_ids
from mm.data.batching import collate, pack
from mm.data.samples import SampleDecoder, SkipSample
from mm.tiny import tiny_vlm_config

PINPOINTS = [[64, 128], [128, 64], [128, 128], [64, 192], [192, 64]]  # the tiny tower's 64-px tiles


def anyres_model(projector: str = "mlp2x_gelu", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    config = tiny_vlm_config(projector=projector, image_transform="anyres", image_grid_pinpoints=PINPOINTS, **kwargs)
    return mm.build_vlm(config).eval()


@pytest.fixture(scope="module")
def model():
    return anyres_model()


SIZES = [(45, 80), (150, 60), (64, 64), (31, 200)]  # (height, width): wide, tall, square, very wide


def pictures(sizes=SIZES):
    return [photo(width, height, seed=i) for i, (height, width) in enumerate(sizes)]


def test_counts_follow_the_size_and_the_fixed_transforms_keep_tokens_per_image(model):
    counts = model.image_tokens.counts(SIZES)
    assert len(set(counts)) > 1 and all(count > model.tokens_per_image for count in counts)
    transform = model.make_image_transform()
    for picture, count in zip(pictures(), counts):
        views = transform.views(picture)
        assert views.dtype == torch.uint8 and views.shape[1:] == (3, 64, 64) and views.shape[0] > 1
        assert model.image_features(transform.normalize(views), [(picture.height, picture.width)]).shape[0] == count
    fixed = mm.build_vlm(tiny_vlm_config())
    assert fixed.image_tokens.counts(SIZES) == [fixed.tokens_per_image] * 4 and not fixed.image_tokens.varies
    assert fixed.make_image_transform().views(pictures()[0]).shape == (1, 3, 64, 64)


def test_the_newline_is_a_projector_parameter_saved_and_loaded(model, tmp_path):
    assert "projector.image_newline" in dict(model.named_parameters())
    model.save_pretrained(tmp_path / "ckpt")
    back = mm.load_pretrained(tmp_path / "ckpt")
    assert back.config.image_grid_pinpoints == PINPOINTS and back.config.image_transform == "anyres"
    torch.testing.assert_close(back.projector.image_newline, model.projector.image_newline)


def test_config_checks():
    with pytest.raises(ValueError, match="image_grid_pinpoints go with image_transform 'anyres'"):
        tiny_vlm_config(image_transform="anyres")
    with pytest.raises(ValueError, match="image_grid_pinpoints go with"):
        tiny_vlm_config(image_grid_pinpoints=PINPOINTS)
    with pytest.raises(ValueError, match="anyres_max_tiles=0"):
        tiny_vlm_config(image_transform="anyres", image_grid_pinpoints=PINPOINTS, anyres_max_tiles=0)


def conversation_inputs(model, turns, images):
    transform = model.make_image_transform()
    sizes = [(image.height, image.width) for image in images]
    ids = encode_prompt(turns, model.tokenizer, model.config.chat_template,
                        tokens_per_image=model.image_tokens.counts(sizes))
    pixels = transform.normalize(torch.cat([transform.views(image) for image in images])) if images else None
    return ids, pixels, sizes


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "pixel_shuffle2x_mlp", "linear"])
def test_batched_left_padded_generation_equals_one_by_one(projector):
    model = anyres_model(projector, seed=1)
    images = pictures()
    samples = [  # two images, one, none (text only), one very wide
        ([{"from": "human", "value": "<image>\nFirst.\n<image>\nSecond?"}], images[:2]),
        ([{"from": "human", "value": "<image>\nTall?"}], images[2:3]),
        ([{"from": "human", "value": "Just text."}], []),
        ([{"from": "human", "value": "<image>\nWide?"}], images[3:]),
    ]
    stops = stop_token_ids(model.tokenizer, model.config.chat_template)
    alone = []
    for turns, sample_images in samples:
        ids, pixels, sizes = conversation_inputs(model, turns, sample_images)
        ids = torch.tensor([ids])
        alone.append(model.generate(ids, torch.ones_like(ids), pixels, max_new_tokens=6, eos_token_id=stops,
                                    image_sizes=sizes or None)[0])
    rows, all_pixels, all_sizes = [], [], []
    for turns, sample_images in samples:
        ids, pixels, sizes = conversation_inputs(model, turns, sample_images)
        rows.append(ids)
        all_pixels += [pixels] if pixels is not None else []
        all_sizes += sizes
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    together = model.generate(ids, mask, torch.cat(all_pixels), max_new_tokens=6, eos_token_id=stops,
                              image_sizes=all_sizes)
    for row, single in zip(together, alone):
        assert row[: len(single)].tolist() == single.tolist()


def test_placeholders_must_match_each_images_count(model):
    images = pictures()[:2]
    ids, pixels, sizes = conversation_inputs(model, [{"from": "human", "value": "<image>\n<image>\nHi"}], images)
    with pytest.raises(ValueError, match="anyres needs image_sizes"):
        model(torch.tensor([ids]), pixels)
    with pytest.raises(ValueError, match="does not end where an image's end"):
        model(torch.tensor([ids]), pixels, image_sizes=sizes[::-1])  # the counts of the other order
    with pytest.raises(ValueError, match="views were given"):
        model(torch.tensor([ids]), pixels[:-1], image_sizes=sizes)


def png(picture) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def shard_record(key: str, images, text: str = "What is it?", answer: str = "A thing.") -> dict:
    import json

    meta = {"conversations": [{"from": "human", "value": "<image>\n" * len(images) + text},
                              {"from": "gpt", "value": answer}],
            "images": [f"img{i}.png" for i in range(len(images))]}
    return {"__key__": key, "json": json.dumps(meta).encode(),
            **{f"img{i}.png": png(image) for i, image in enumerate(images)}}


def decoder_for(model, max_length=None):
    return SampleDecoder(model.tokenizer, model.config.chat_template, model.image_tokens,
                         model.make_image_transform(), max_length=max_length)


def test_training_batches_collate_and_pack_views_and_sizes_in_placeholder_order(model):
    images = pictures()
    decoder = decoder_for(model)
    samples = [decoder(shard_record("a", images[:2])), decoder(shard_record("b", images[2:3])),
               decoder(shard_record("c", [])), decoder(shard_record("d", images[3:]))]
    for sample, expected in zip(samples, [SIZES[:2], SIZES[2:3], [], SIZES[3:]]):
        assert sample.image_sizes == expected
        assert sample.input_ids.count(model.image_token_id) == sum(model.image_tokens.counts(expected))
    transform = model.make_image_transform()
    total_views = sum(views.shape[0] for sample in samples for views in sample.images)
    collated, packed = collate(samples, 0), pack(samples, 0, 4096)
    assert collated["image_sizes"].tolist() == [list(size) for size in SIZES]  # the samples' order
    assert sorted(packed["image_sizes"].tolist()) == sorted(list(size) for size in SIZES)  # rows' order
    losses = []
    for batch in (collated, packed):
        assert batch["pixel_values"].shape[0] == total_views
        with torch.no_grad():
            out = model(batch["input_ids"], transform.normalize(batch["pixel_values"]), labels=batch["labels"],
                        image_sizes=batch["image_sizes"], position_ids=batch.get("position_ids"))
        losses.append(out.loss)
    assert torch.isfinite(losses[0]) and torch.isfinite(losses[1])


def test_max_length_counts_the_real_placeholders(model):
    big = pictures([(190, 190)])
    count = model.image_tokens.count((190, 190))
    assert count > 3 * model.tokens_per_image
    with pytest.raises(SkipSample, match="too_long"):
        decoder_for(model, max_length=count)(shard_record("k", big))  # the image alone fills it
    assert len(decoder_for(model, max_length=count + 64)(shard_record("k", big))) <= count + 64


def test_training_and_dpo_fit_on_anyres_and_the_export_evaluates(tmp_path):
    from eval.cli import main as eval_main
    from eval.tiny_bench import write_tiny_vqa_benchmark
    from mm.train.dpo_module import DPOTrainingModule
    from mm.train.module import VLMTrainingModule
    from mm.train.policy import TrainingPolicy
    from test_train_dpo_fit import write_pref_shards
    from train_helpers import cpu_trainer, tiny_data, write_shards

    config = tiny_vlm_config(image_transform="anyres", image_grid_pinpoints=PINPOINTS)
    write_shards(tmp_path / "sft", [4])
    module = VLMTrainingModule(config, TrainingPolicy(stage="full", lr=1e-3, warmup_ratio=0.0),
                               export_dir=str(tmp_path / "export"))
    cpu_trainer(tmp_path / "run", max_steps=2).fit(module, datamodule=tiny_data(tmp_path / "sft", template="vicuna_v1", max_length=512))
    assert torch.isfinite(module.trainer.callback_metrics["train/loss"])
    newline = module.vlm.projector.image_newline
    assert newline.requires_grad  # trained with the projector

    write_pref_shards(tmp_path / "pref", [4])
    dpo = DPOTrainingModule(config, TrainingPolicy(stage="dpo", lr=1e-3, init_from=str(tmp_path / "export")))
    cpu_trainer(tmp_path / "dpo", max_steps=1).fit(dpo, datamodule=tiny_data(tmp_path / "pref", template="vicuna_v1", max_length=512))
    assert dpo.trainer.callback_metrics["train/loss"] == pytest.approx(0.6931, abs=1e-4)  # policy == reference

    bench = write_tiny_vqa_benchmark(tmp_path / "bench", num_images=2, questions_per_image=2)
    assert eval_main(["run", "--checkpoint", str(tmp_path / "export"), "--task", "vqav2", "--out", str(tmp_path / "eval"),
                      "--device", "cpu", "--max-new-tokens", "4", "--image-workers", "1", "--batch-size", "3",
                      "--questions", bench["questions"], "--annotations", bench["annotations"],
                      "--image-root", bench["image_root"]]) == 0
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 4


def test_an_anyres_stage_starts_from_a_single_view_export(tmp_path):
    from mm.train.init import build_for_stage
    from mm.train.policy import TrainingPolicy

    torch.manual_seed(0)
    single = mm.build_vlm(tiny_vlm_config())
    single.save_pretrained(tmp_path / "single")
    config = tiny_vlm_config(image_transform="anyres", image_grid_pinpoints=PINPOINTS)
    for policy in (TrainingPolicy(stage="full", init_from=str(tmp_path / "single")),
                   TrainingPolicy(stage="finetune", init_projector_from=str(tmp_path / "single"))):
        anyres = build_for_stage(config, policy)
        assert torch.equal(anyres.projector.linear_1.weight, single.projector.linear_1.weight)
        assert anyres.projector.image_newline.abs().sum() > 0  # its own init
