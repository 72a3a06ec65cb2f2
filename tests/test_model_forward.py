"""Scatter of image features into placeholder positions, labels, loss, and pass-through of masks."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers_model import prompt_ids, right_pad, text_ids, tiny_model

from mm.tiny import tiny_config_path


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def reference_embeds(model, ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Straightforward per-sample, per-image loop (the slow path the vectorised scatter replaces)."""
    table = model.llm.get_input_embeddings()
    features = model.encode_images(pixel_values)
    rows, next_image = [], 0
    for sample in ids:
        row = []
        position = 0
        while position < len(sample):
            if sample[position] == model.image_token_id:
                row.append(features[next_image])
                next_image += 1
                position += model.tokens_per_image
            else:
                row.append(table(sample[position : position + 1]))
                position += 1
        rows.append(torch.cat(row))
    assert next_image == len(pixel_values)
    return torch.stack(rows)


def mixed_batch(model):
    """Sample 0: two images, sample 1: text only, sample 2: one image (images in placeholder order)."""
    hello, what = text_ids(model, "USER: hello"), text_ids(model, " What color is the circle?")
    rows = [
        prompt_ids(model, hello, 1, what) + [model.image_token_id] * model.tokens_per_image + what,
        prompt_ids(model, hello + what, 0, what),
        prompt_ids(model, hello, 1, what),
    ]
    ids, mask = right_pad(rows, model.tokenizer.pad_token_id)
    torch.manual_seed(1)
    return ids, mask, torch.randn(3, 3, 64, 64)


def test_scatter_matches_per_sample_loop_with_0_1_2_images(model):
    ids, _, pixel_values = mixed_batch(model)
    with torch.no_grad():
        fast = model.embed_inputs(ids, pixel_values)
        slow = reference_embeds(model, ids, pixel_values)
    assert fast.shape == slow.shape
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    # the images really differ, so a wrong order would be caught
    assert not torch.allclose(fast[0, 4 : 4 + model.tokens_per_image], fast[2, 4 : 4 + model.tokens_per_image])


def test_labels_are_ignored_at_image_positions(model):
    ids, mask, pixel_values = mixed_batch(model)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(ids, pixel_values, attention_mask=mask, labels=labels)
        expected_labels = labels.masked_fill(ids == model.image_token_id, -100)
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        expected = F.cross_entropy(logits, expected_labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    # placeholders would dominate the loss if they were counted: the two must differ
    with_images = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(with_images.item() - out.loss.item()) > 1e-3


def test_num_items_in_batch_divides_the_summed_loss(model):
    ids, mask, pixel_values = mixed_batch(model)
    labels = ids.masked_fill((mask == 0) | (ids == model.image_token_id), -100)
    with torch.no_grad():
        mean_loss = model(ids, pixel_values, attention_mask=mask, labels=labels).loss
        summed = model(ids, pixel_values, attention_mask=mask, labels=labels, num_items_in_batch=1).loss
        scaled = model(ids, pixel_values, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(7)).loss
    count = (labels[:, 1:] != -100).sum()
    torch.testing.assert_close(summed, mean_loss * count)
    torch.testing.assert_close(scaled, mean_loss * count / 7)


def test_packed_row_with_4d_mask_and_position_ids_equals_separate_samples(model):
    """attention_mask (4-D) and position_ids reach the LLM unchanged, so packing isolates samples."""
    first = prompt_ids(model, text_ids(model, "USER: hi"), 1, text_ids(model, " red"))
    second = prompt_ids(model, text_ids(model, "USER: What shape?"), 0, text_ids(model, " star"))
    torch.manual_seed(2)
    pixel_values = torch.randn(1, 3, 64, 64)
    packed = torch.tensor([first + second])
    n1, n = len(first), len(first) + len(second)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:n1, :n1] = torch.ones(n1, n1).tril().bool()
    allowed[n1:, n1:] = torch.ones(n - n1, n - n1).tril().bool()
    mask4d = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    positions = torch.tensor([list(range(n1)) + list(range(n - n1))])
    with torch.no_grad():
        packed_logits = model(packed, pixel_values, attention_mask=mask4d, position_ids=positions).logits
        alone_1 = model(torch.tensor([first]), pixel_values).logits
        alone_2 = model(torch.tensor([second])).logits
    torch.testing.assert_close(packed_logits[:, :n1], alone_1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_logits[:, n1:], alone_2, atol=1e-5, rtol=1e-5)


def test_text_only_batch_needs_no_pixel_values(model):
    ids = torch.tensor([prompt_ids(model, text_ids(model, "USER: How many?"), 0, [])])
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], model.llm.config.vocab_size)
    assert torch.isfinite(out.loss)


def test_too_few_images_names_the_sample(model):
    ids, _, pixel_values = mixed_batch(model)  # needs 3 images
    with pytest.raises(ValueError, match=r"sample 2 has placeholders for more images than the 2 image\(s\) given"):
        model(ids, pixel_values[:2])


def test_too_many_images_is_an_error(model):
    ids, _, pixel_values = mixed_batch(model)
    with pytest.raises(ValueError, match=r"4 image\(s\) were given but the batch has placeholders for only 3"):
        model(ids, torch.cat([pixel_values, pixel_values[:1]]))


def test_wrong_placeholder_run_names_the_sample(model):
    rows = [
        prompt_ids(model, text_ids(model, "USER: hi"), 1, []),
        [model.tokenizer.bos_token_id] + [model.image_token_id] * (model.tokens_per_image - 1) + [10],
    ]
    ids, _ = right_pad(rows, model.tokenizer.pad_token_id)
    with pytest.raises(ValueError, match=rf"sample 1 has a run of {model.tokens_per_image - 1} consecutive"):
        model(ids, torch.zeros(2, 3, 64, 64))


def test_image_transform_config_describes_the_tower(model):
    cfg = model.image_transform_config
    assert (cfg.image_size, cfg.mode) == (64, "pad")
    assert cfg.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert cfg.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert model.tokens_per_image == 64  # 8x8 patches, CLS dropped


def test_malformed_inputs_are_clear_errors(model):
    ids, _, pixel_values = mixed_batch(model)
    with pytest.raises(ValueError, match=r"pixel_values must be \(num_images, 3, 64, 64\); got \(3, 3, 32, 32\)"):
        model(ids, pixel_values[:, :, :32, :32])
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq_len\)"):
        model(ids[0], pixel_values)
    with pytest.raises(ValueError, match="labels .* must align with input_ids"):
        model(ids, pixel_values, labels=ids[:, 1:])


@pytest.mark.parametrize("llm", ["llama", "qwen2", "qwen3"])
def test_labelled_positions_loss_equals_full_logits_loss_and_gradients(llm):
    """return_logits=False runs the head on labelled positions only: same loss, same gradients."""
    model = tiny_model(llm=llm)
    ids, mask, pixel_values = mixed_batch(model)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : ids.shape[1] // 2] = -100  # only the later tokens are targets, as for assistant turns

    def loss_and_grads(return_logits):
        model.zero_grad()
        out = model(ids, pixel_values, attention_mask=mask, labels=labels, num_items_in_batch=5,
                    return_logits=return_logits)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    full, full_grads = loss_and_grads(True)
    fast, fast_grads = loss_and_grads(False)
    assert fast.logits is None and full.logits is not None
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == full_grads.keys() and len(fast_grads) > 0
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_logit_modifying_heads_keep_the_full_path(model, monkeypatch):
    """A soft-capped head (Gemma 2 style) is not a plain linear layer: the full forward is used."""
    monkeypatch.setattr(model.llm.config, "final_logit_softcapping", 30.0, raising=False)
    assert not model._head_is_plain_linear()
    monkeypatch.setattr(model.llm.config, "final_logit_softcapping", None)
    assert model._head_is_plain_linear()


def test_tiny_qwen3_is_the_tiny_llama_with_qk_norm():
    """README finding 5 compares the two as one lever: same shape, plus RMSNorm on queries and keys."""
    llama, qwen3 = (json.loads(tiny_config_path(name).read_text()) for name in ("llama", "qwen3"))
    head_dim = llama["hidden_size"] // llama["num_attention_heads"]
    assert qwen3 == {**llama, "model_type": "qwen3", "head_dim": head_dim}
    plain, normed = tiny_model(llm="llama"), tiny_model(llm="qwen3")
    attention = normed.llm.model.layers[0].self_attn
    assert attention.q_norm.weight.shape == attention.k_norm.weight.shape == (head_dim,)
    extra = sum(p.numel() for p in normed.llm.parameters()) - sum(p.numel() for p in plain.llm.parameters())
    assert extra == 2 * head_dim * llama["num_hidden_layers"]
