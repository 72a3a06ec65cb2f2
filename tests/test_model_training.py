"""Freezing, graph-free frozen towers, gradient checkpointing, block classes for FSDP."""

import torch
from helpers_model import prompt_ids, text_ids, tiny_model


def one_sample(model):
    ids = torch.tensor([prompt_ids(model, text_ids(model, "USER: "), 1, text_ids(model, " red circle"))])
    torch.manual_seed(0)
    return ids, torch.randn(1, 3, 64, 64)


def grads_by_part(model) -> dict[str, bool]:
    return {
        name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
        for name, part in (("vision", model.vision_tower), ("projector", model.projector), ("llm", model.llm))
    }


def test_default_freezes_the_tower_only():
    model = tiny_model()
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.projector.parameters())
    assert all(p.requires_grad for p in model.llm.parameters())
    ids, pixels = one_sample(model)
    model(ids, pixels, labels=ids).loss.backward()
    assert grads_by_part(model) == {"vision": False, "projector": True, "llm": True}


def test_frozen_tower_builds_no_graph_and_a_trainable_one_does():
    model = tiny_model()
    _, pixels = one_sample(model)
    features = model.vision_tower(pixels)
    assert not features.requires_grad and features.grad_fn is None
    model.set_trainable(vision=True)
    features = model.vision_tower(pixels)
    assert features.requires_grad and features.grad_fn is not None


def test_stage_one_trains_only_the_projector():
    model = tiny_model(vision="open_clip", projector="pixel_shuffle2x_mlp").set_trainable(llm=False)
    ids, pixels = one_sample(model)
    model(ids, pixels, labels=ids).loss.backward()
    assert grads_by_part(model) == {"vision": False, "projector": True, "llm": False}


def test_everything_trainable_gets_gradients():
    model = tiny_model(vision="hf_siglip").set_trainable(vision=True)
    model.train()
    model.gradient_checkpointing_enable()
    assert model.llm.is_activation_checkpointing and model.vision_tower.model.is_activation_checkpointing
    ids, pixels = one_sample(model)
    model(ids, pixels, labels=ids).loss.backward()
    assert grads_by_part(model) == {"vision": True, "projector": True, "llm": True}


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(vision="open_clip").set_trainable(vision=True)
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.vision_tower.visual.transformer.grad_checkpointing
        ids, pixels = one_sample(model)
        model(ids, pixels, labels=ids).loss.backward()
        # blocks after select_layer and the pooling head get no gradient at all
        grads.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_block_classes_for_fsdp():
    from open_clip.transformer import ResidualAttentionBlock
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    assert tiny_model().llm_block_class() is LlamaDecoderLayer
    assert tiny_model().vision_tower.block_class is CLIPEncoderLayer
    assert tiny_model(llm="qwen2").llm_block_class() is Qwen2DecoderLayer
    assert tiny_model(vision="hf_siglip").vision_tower.block_class is SiglipEncoderLayer
    assert tiny_model(vision="open_clip").vision_tower.block_class is ResidualAttentionBlock
