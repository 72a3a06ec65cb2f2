"""Packing: several samples per row with isolated attention give the same loss and gradients as padding."""

from __future__ import annotations

import pytest
import torch

from mm.data.batching import collate, pack, packed_attention_mask
from mm.data.samples import SampleDecoder
from mm.tiny import tiny_vlm_config
from mm.train.module import VLMTrainingModule
from mm.train.policy import TrainingPolicy
from train_helpers import COLORS, caption_record, png_bytes

TEXTS = ["A red square.", "A small green square on a plain background, seen from above.", "Blue.",
         "A yellow square in the middle."]


def samples_for(module):
    vlm = module.vlm
    decoder = SampleDecoder(vlm.tokenizer, "vicuna_v1", vlm.image_tokens, vlm.make_image_transform())
    colors = ["red", "green", "blue", "yellow"]
    sizes = [(12, 8), (40, 90), (200, 60), (64, 64)]  # (width, height): under anyres each its own tiling
    records = [caption_record(f"k{i}", colors[i], text=t) for i, t in enumerate(TEXTS)]
    for record, color, size in zip(records, colors, sizes):
        record["img0.png"] = png_bytes(COLORS[color], size)
    return [decoder({"__key__": f"k{i}", **record}) for i, record in enumerate(records)]


def loss_and_grads(module, batch):
    module.zero_grad()
    loss_sum = module(batch, num_items_in_batch=1.0).loss
    loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss_sum.detach(), grads


ANYRES = {"image_transform": "anyres", "image_grid_pinpoints": [[64, 128], [128, 64], [128, 128]]}


@pytest.mark.parametrize("llm,attention,images", [("llama", "sdpa", {}), ("llama", "eager", {}), ("qwen2", "sdpa", {}),
                                                   ("llama", "sdpa", ANYRES)])  # fmt: skip
def test_packed_equals_padded(llm, attention, images):
    config = tiny_vlm_config(llm=llm, **images)
    config.llm.attn_implementation = attention
    module = VLMTrainingModule(config, TrainingPolicy(stage="full"))
    module.configure_model()
    samples = samples_for(module)
    if images:  # different tilings, so different placeholder counts per image
        assert len({sample.input_ids.count(module.vlm.image_token_id) for sample in samples}) == 4
    pad_id = module.vlm.tokenizer.pad_token_id
    width = sum(map(len, samples[:3]))
    packed = pack(samples, pad_id, max_length=width)
    assert packed["input_ids"].shape[0] < len(samples)  # really packed: fewer rows than samples
    padded = collate(samples, pad_id)
    loss_packed, grads_packed = loss_and_grads(module, packed)
    loss_padded, grads_padded = loss_and_grads(module, padded)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-4)
    assert grads_packed.keys() == grads_padded.keys() and len(grads_packed) > 10
    for name in grads_padded:
        torch.testing.assert_close(grads_packed[name], grads_padded[name], rtol=1e-4, atol=1e-5, msg=name)


def test_pack_layout_positions_segments_and_images():
    class S:  # minimal stand-in: pack only needs ids, labels, images (views), image sizes, len
        def __init__(self, n, tag):
            self.input_ids, self.labels = [tag] * n, [tag] * n
            self.images = [torch.full((1, 3, 2, 2), tag, dtype=torch.uint8)]
            self.image_sizes = [(tag, 10 * tag)]

        def __len__(self):
            return len(self.input_ids)

    batch = pack([S(3, 1), S(5, 2), S(2, 3)], pad_id=0, max_length=7)
    # first-fit decreasing: 5 opens row 0, 3 does not fit beside it (8 > 7) and opens row 1, 2 joins row 0
    assert batch["input_ids"].tolist() == [[2, 2, 2, 2, 2, 3, 3], [1, 1, 1, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 0, 0, 0, 0]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2], [1, 1, 1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 2, 2, 2, -100, 3], [-100, 1, 1, -100, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    assert [int(image[0, 0, 0]) for image in batch["pixel_values"]] == [2, 3, 1]  # row-major placeholder order
    assert batch["image_sizes"].tolist() == [[2, 20], [3, 30], [1, 10]]  # in the same order
    mask = packed_attention_mask(batch["segment_ids"])
    assert mask[0, 0, 6].tolist() == [False] * 5 + [True, True]  # the 2nd sample sees only itself
    assert mask[0, 0, 4].tolist() == [True] * 5 + [False, False]
    assert mask[1, 0, 5].tolist() == [False] * 5 + [True, False]  # padding attends to itself only (no NaN)
    with pytest.raises(ValueError, match="cannot be packed"):
        pack([S(8, 1)], pad_id=0, max_length=7)


def test_flash_attention_gets_the_packed_rows_end_to_end_in_one_row(monkeypatch):
    """transformers' flash attention splits samples by restarting position ids only in a one-row batch."""
    from types import SimpleNamespace

    module = VLMTrainingModule(tiny_vlm_config(), TrainingPolicy(stage="full"))
    module.configure_model()
    samples = samples_for(module)
    packed = pack(samples, module.vlm.tokenizer.pad_token_id, max_length=sum(map(len, samples[:3])))
    assert packed["input_ids"].shape[0] > 1
    seen = {}
    monkeypatch.setattr(module.vlm.llm.config, "_attn_implementation", "flash_attention_2")
    monkeypatch.setattr(module.vlm, "forward", lambda **kw: seen.update(kw) or SimpleNamespace(loss=torch.zeros(())))
    module(packed, num_items_in_batch=1.0)
    assert seen["attention_mask"] is None
    for name in ("input_ids", "labels", "position_ids"):
        assert torch.equal(seen[name], packed[name].reshape(1, -1)), name


def test_packed_rows_end_to_end_with_per_sample_attention_equal_padding():
    """The one-row layout flash attention gets (above) computes what padding does: no target crosses rows."""
    module = VLMTrainingModule(tiny_vlm_config(), TrainingPolicy(stage="full"))
    module.configure_model()
    samples = samples_for(module)
    pad_id = module.vlm.tokenizer.pad_token_id
    packed = pack(samples, pad_id, max_length=sum(map(len, samples[:3])))
    rows = packed["segment_ids"].shape[0]
    offsets = torch.arange(rows).view(-1, 1) * (int(packed["segment_ids"].max()) + 1)
    one_row = {name: packed[name].reshape(1, -1) for name in ("input_ids", "labels", "position_ids", "attention_mask")}
    one_row["segment_ids"] = torch.where(packed["segment_ids"] > 0, packed["segment_ids"] + offsets, 0).reshape(1, -1)
    one_row["pixel_values"] = packed["pixel_values"]
    loss_one_row, _ = loss_and_grads(module, one_row)
    loss_padded, _ = loss_and_grads(module, collate(samples, pad_id))
    torch.testing.assert_close(loss_one_row, loss_padded, rtol=1e-5, atol=1e-4)
