"""generate(): KV cache exactness, left-padded batches, sampling, EOS handling."""

import pytest
import torch
from helpers_model import left_pad, prompt_ids, text_ids, tiny_model

from mm.generation import _pick


@pytest.fixture(scope="module")
def model():
    return tiny_model(llm="qwen2")


def batch_of_four(model):
    prompts = [
        prompt_ids(model, text_ids(model, "USER: "), 1, text_ids(model, " What color is the circle? ASSISTANT:")),
        prompt_ids(model, text_ids(model, "USER: How many stars are there?"), 0, text_ids(model, " ASSISTANT:")),
        prompt_ids(model, text_ids(model, "USER: "), 2, text_ids(model, " Is there a square? ASSISTANT:")),
        prompt_ids(model, text_ids(model, "USER: hi"), 1, []),
    ]
    torch.manual_seed(3)
    images = [1, 0, 2, 1]
    pixel_values = torch.randn(sum(images), 3, 64, 64)
    return prompts, images, pixel_values


def test_batch_of_four_equals_one_by_one_and_cache_equals_no_cache(model):
    prompts, images, pixel_values = batch_of_four(model)
    ids, mask = left_pad(prompts, model.tokenizer.pad_token_id)
    no_eos = -1  # generate the full length so every step is compared
    batched = model.generate(ids, mask, pixel_values, max_new_tokens=8, eos_token_id=no_eos)
    uncached = model.generate(ids, mask, pixel_values, max_new_tokens=8, eos_token_id=no_eos, use_cache=False)
    assert batched.shape == (4, 8)
    assert torch.equal(batched, uncached)
    first_image = 0
    for i, prompt in enumerate(prompts):
        single_pixels = pixel_values[first_image : first_image + images[i]]
        first_image += images[i]
        single = model.generate(
            torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
            single_pixels if images[i] else None, max_new_tokens=8, eos_token_id=no_eos,
        )
        assert torch.equal(single[0], batched[i]), f"sample {i}"


def test_greedy_equals_argmax_of_forward(model):
    prompts, _, pixel_values = batch_of_four(model)
    ids = torch.tensor([prompts[0]])
    new = model.generate(ids, torch.ones_like(ids), pixel_values[:1], max_new_tokens=3, eos_token_id=-1)
    sequence = ids
    for step in range(3):
        with torch.no_grad():
            logits = model(sequence, pixel_values[:1]).logits
        expected = logits[0, -1].argmax()
        assert new[0, step] == expected
        sequence = torch.cat([sequence, expected.view(1, 1)], dim=1)


def test_tokens_after_eos_are_pad_and_others_keep_going(model):
    prompts, images, pixel_values = batch_of_four(model)
    ids, mask = left_pad(prompts[:2], model.tokenizer.pad_token_id)
    pixels = pixel_values[: images[0]]
    free = model.generate(ids, mask, pixels, max_new_tokens=6, eos_token_id=-1)
    stop = int(free[0, 1])  # pretend sample 0's second token is EOS
    assert stop not in free[1].tolist(), "precondition: sample 1 never emits the chosen stop token"
    out = model.generate(ids, mask, pixels, max_new_tokens=6, eos_token_id=[12345, stop])
    first_stop = free[0].tolist().index(stop)
    pad = model.tokenizer.pad_token_id
    assert out[0].tolist() == free[0, : first_stop + 1].tolist() + [pad] * (5 - first_stop)
    assert torch.equal(out[1], free[1])
    # once every sample has finished, generation stops early
    alone = model.generate(ids[:1], mask[:1], pixels, max_new_tokens=6, eos_token_id=stop)
    assert alone[0].tolist() == free[0, : first_stop + 1].tolist()


def test_sampling_is_reproducible_with_a_seed_and_varies_without(model):
    prompts, _, pixel_values = batch_of_four(model)
    ids, mask = left_pad(prompts, model.tokenizer.pad_token_id)
    kwargs = dict(max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.95, eos_token_id=-1)
    torch.manual_seed(7)
    a = model.generate(ids, mask, pixel_values, **kwargs)
    torch.manual_seed(7)
    b = model.generate(ids, mask, pixel_values, **kwargs)
    c = model.generate(ids, mask, pixel_values, **kwargs, generator=torch.Generator().manual_seed(7))
    d = model.generate(ids, mask, pixel_values, **kwargs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(c, d)
    e = model.generate(ids, mask, pixel_values, **kwargs, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(c, e)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([_pick(logits, True, 1.0, 0.8, generator) for _ in range(400)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    share_of_first = (draws == 0).float().mean().item()
    assert 0.55 < share_of_first < 0.70  # renormalised 0.5 / 0.8 = 0.625
    draws = torch.stack([_pick(logits, True, 1.0, 0.81, generator) for _ in range(200)])
    assert 2 in set(draws.flatten().tolist())


def test_generate_rejects_right_padding_and_bad_arguments(model):
    ids = torch.tensor([[1, 5, 6, 3]])
    with pytest.raises(ValueError, match="left padding"):
        model.generate(ids, torch.tensor([[1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, torch.ones_like(ids), do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, torch.ones_like(ids), top_p=0)
