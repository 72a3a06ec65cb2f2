"""GPU numerics (marker `gpu`; `bash bench/gpu_check.sh` runs them): in bf16, mm's model matches transformers'
Llava in forward and backward, and packed batches train as padded ones with SDPA and flash-attention 2.

The fp32 CPU versions are tests/test_llava_interop.py and tests/test_train_packing.py; their helpers are
reused here. Without a CUDA device every test skips.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_llava_interop import batch, positions, save_llava, tiny_llava
from test_train_packing import loss_and_grads, samples_for

import mm
from mm.data.batching import collate, pack
from mm.tiny import tiny_vlm_config
from mm.train.module import VLMTrainingModule
from mm.train.policy import TrainingPolicy

DEVICE = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bash bench/gpu_check.sh)"),
]

# our name prefix -> transformers Llava's, for comparing gradients parameter by parameter
LLAVA_PREFIXES = (("vision_tower.model.", "model.vision_tower."), ("projector.", "model.multi_modal_projector."),
                  ("llm.model.", "model.language_model."), ("llm.lm_head.", "lm_head."))


def llava_name(ours: str) -> str:
    return next(theirs + ours[len(mine):] for mine, theirs in LLAVA_PREFIXES if ours.startswith(mine))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.float(), reference.float()
    return float((value - reference).norm() / reference.norm().clamp(min=1e-12))


def gradient_error(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """Relative error of all gradients together (a parameter whose gradient is ~0, e.g. an attention key's
    bias, would make a per-parameter ratio pure rounding noise)."""
    assert grads.keys() == reference.keys()
    return relative_error(torch.cat([g.flatten() for g in grads.values()]),
                          torch.cat([reference[name].flatten() for name in grads]))


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def to_device(batch: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.parametrize("vision, llm, overrides", [
    ("hf_clip", "llama", {}),
    ("hf_siglip", "qwen2", {"vision_feature_select_strategy": "full", "multimodal_projector_bias": False}),
])
def test_bf16_forward_and_backward_match_llava(tmp_path, vision, llm, overrides):
    llava, tokenizer = tiny_llava(vision, llm, **overrides)
    save_llava(llava, tokenizer, tmp_path)
    ours = mm.load_pretrained(tmp_path).set_trainable(vision=True, projector=True, llm=True)
    llava, ours = llava.to(DEVICE, torch.bfloat16), ours.to(DEVICE, torch.bfloat16)
    ids, mask, pixels = batch(ours.tokens_per_image, ours.image_token_id)
    ids, mask, pixels = ids.to(DEVICE), mask.to(DEVICE), pixels.to(DEVICE, torch.bfloat16)
    labels = ids.masked_fill((mask == 0) | (ids == ours.image_token_id), -100)
    inputs = {"attention_mask": mask, "position_ids": positions(mask)}

    with torch.no_grad():
        theirs_logits = llava(input_ids=ids, pixel_values=pixels, **inputs).logits
        ours_logits = ours(ids, pixels, **inputs).logits
    real = mask.bool()
    assert relative_error(ours_logits[real], theirs_logits[real]) < 1e-2

    # the loss as mm-train computes it (output head on labelled positions only) and transformers' own
    theirs_loss = llava(input_ids=ids, pixel_values=pixels, labels=labels, **inputs).loss
    ours_loss = ours(ids, pixels, labels=labels, return_logits=False, **inputs).loss
    theirs_loss.backward()
    ours_loss.backward()
    torch.testing.assert_close(ours_loss.float(), theirs_loss.float(), rtol=1e-2, atol=0)
    ours_grads = {llava_name(name): g for name, g in grads(ours).items()}
    assert gradient_error(ours_grads, grads(llava)) < 1e-2


@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"])
def test_bf16_packed_equals_padded(attention):
    """bf16 autocast, as `precision: bf16-mixed` trains. A batch whose samples see each other within a row
    ("leaky": the packed rows without their per-sample mask) is the control: it must be far off."""
    if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash_attn is not installed: flash-attention 2 packing not checked (pip install flash-attn)")
    config = tiny_vlm_config()
    config.llm.attn_implementation = attention
    module = VLMTrainingModule(config, TrainingPolicy(stage="full"))
    module.configure_model()
    module.to(DEVICE)
    samples = samples_for(module)
    pad_id = module.vlm.tokenizer.pad_token_id
    packed = pack(samples, pad_id, max_length=sum(map(len, samples[:3])))
    assert packed["input_ids"].shape[0] < len(samples)  # really packed: fewer rows than samples
    leaky = {k: v for k, v in packed.items() if k != "segment_ids"}  # 2-D mask: causal over the whole row
    results = {}
    for name, layout in (("padded", collate(samples, pad_id)), ("packed", packed), ("leaky", leaky)):
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            results[name] = loss_and_grads(module, to_device(layout))
    (padded, padded_grads), (packed_loss, packed_grads), (leaky_loss, leaky_grads) = results.values()
    gap, leak = abs(float(packed_loss - padded)), abs(float(leaky_loss - padded))
    assert gap < leak / 10, (gap, leak)  # bf16 rounding, far below what samples seeing each other change
    errors = gradient_error(packed_grads, padded_grads), gradient_error(leaky_grads, padded_grads)
    assert errors[0] < errors[1] / 10, errors
