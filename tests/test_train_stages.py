"""Training policy: which parameters train per stage, LoRA, weight-decay groups, schedule, projector init."""

from __future__ import annotations

import math

import pytest
import torch

from mm.tiny import tiny_vlm_config
from mm.train.init import build_for_stage, load_all, load_projector
from mm.train.optim import param_groups, warmup_cosine
from mm.train.policy import TrainingPolicy


def trainable_parts(vlm) -> dict[str, bool]:
    parts = {}
    for name, param in vlm.named_parameters():
        part = name.split(".", 1)[0]
        parts[part] = parts.get(part, False) or param.requires_grad
    return parts


@pytest.fixture(scope="module")
def config():
    return tiny_vlm_config()


@pytest.mark.parametrize(
    "stage,expected",
    [
        ("align", {"vision_tower": False, "projector": True, "llm": False}),
        ("finetune", {"vision_tower": False, "projector": True, "llm": True}),
        ("full", {"vision_tower": True, "projector": True, "llm": True}),
    ],
)
def test_stage_freezing(config, stage, expected):
    vlm = build_for_stage(config, TrainingPolicy(stage=stage))
    assert trainable_parts(vlm) == expected
    for part, trains in expected.items():  # all of a part, not just some of it
        assert all(p.requires_grad == trains for p in getattr(vlm, part).parameters())


def test_lora_trains_only_adapters_and_projector(config):
    vlm = build_for_stage(config, TrainingPolicy(stage="lora", lora_r=4, lora_alpha=8))
    trainable = [name for name, p in vlm.named_parameters() if p.requires_grad]
    assert trainable
    assert all(name.startswith("projector.") or ".lora_" in name for name in trainable)
    assert any(".lora_A." in name for name in trainable) and any(".lora_B." in name for name in trainable)
    assert all(p.requires_grad for p in vlm.projector.parameters())
    assert not any(p.requires_grad for p in vlm.vision_tower.parameters())
    targets = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if ".lora_" in name}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_random_parts_are_rebuilt_identically_across_stages(config):
    align = build_for_stage(config, TrainingPolicy(stage="align"))
    finetune = build_for_stage(config, TrainingPolicy(stage="finetune"))
    for (name, a), (_, b) in zip(align.state_dict().items(), finetune.state_dict().items()):
        assert torch.equal(a, b), name


def test_param_groups_lrs_and_no_decay(config):
    vlm = build_for_stage(config, TrainingPolicy(stage="full"))
    policy = TrainingPolicy(stage="full", lr=1e-4, projector_lr=1e-3, vision_lr=1e-5, weight_decay=0.1)
    groups = {g["name"]: g for g in param_groups(vlm, policy)}
    assert {g["lr"] for n, g in groups.items() if n.startswith("projector")} == {1e-3}
    assert {g["lr"] for n, g in groups.items() if n.startswith("llm")} == {1e-4}
    assert {g["lr"] for n, g in groups.items() if n.startswith("vision_tower")} == {1e-5}
    names = {id(p): n for n, p in vlm.named_parameters()}
    no_decay = [names[id(p)] for n, g in groups.items() if n.endswith("/no_decay") for p in g["params"]]
    decay = [names[id(p)] for n, g in groups.items() if n.endswith("/decay") for p in g["params"]]
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("/no_decay"))
    assert all(g["weight_decay"] == 0.1 for n, g in groups.items() if n.endswith("/decay"))
    assert "llm.model.embed_tokens.weight" in no_decay
    assert any("norm" in n for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    assert not any("norm" in n or n.endswith(".bias") for n in decay)
    tables = {n for m_name, m in vlm.named_modules() if isinstance(m, torch.nn.Embedding)
              for n in (f"{m_name}.{p}" for p, _ in m.named_parameters())}
    assert tables and tables <= set(no_decay)  # token and position embedding tables (not the patch conv)
    assert any(n.endswith("q_proj.weight") for n in decay)
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == sum(1 for p in vlm.parameters() if p.requires_grad)


def test_warmup_cosine_values():
    factor = warmup_cosine(total_steps=10, warmup_ratio=0.2, min_lr_ratio=0.1)  # 2 warmup steps
    assert [factor(0), factor(1)] == pytest.approx([1 / 3, 2 / 3])
    assert factor(2) == pytest.approx(1.0)
    assert factor(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(10) == pytest.approx(0.1)


def test_unknown_stage_lists_valid_ones():
    with pytest.raises(ValueError, match="align"):
        TrainingPolicy(stage="pretrain")


def test_projector_init_from_export_and_checkpoint(config, tmp_path):
    source = build_for_stage(config, TrainingPolicy(stage="align", init_seed=1))
    source.save_pretrained(tmp_path / "export")
    state = {f"vlm.{k}": v for k, v in source.state_dict().items() if k.startswith("projector.")}
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    for path in (tmp_path / "export", tmp_path / "last.ckpt"):
        target = build_for_stage(config, TrainingPolicy(stage="finetune", init_projector_from=str(path)))
        for key, value in source.projector.state_dict().items():
            assert torch.equal(target.projector.state_dict()[key], value)
        assert not torch.equal(target.llm.lm_head.weight, source.llm.lm_head.weight)  # only the projector
    other = build_for_stage(tiny_vlm_config(projector="linear"), TrainingPolicy(stage="align"))
    with pytest.raises(ValueError, match="do not fit"):
        load_projector(other, tmp_path / "export")
    with pytest.raises(FileNotFoundError):
        load_projector(other, tmp_path / "missing")


@pytest.mark.parametrize("llm", ["llama", "qwen2"])  # qwen2's tiny config ties its embeddings
def test_init_from_export_loads_every_weight_then_applies_the_stage(tmp_path, llm):
    config = tiny_vlm_config(llm=llm)
    source = build_for_stage(config, TrainingPolicy(stage="full", init_seed=1))
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.5)  # as if trained: differs from any freshly seeded build
    source.save_pretrained(tmp_path / "export")
    target = build_for_stage(config, TrainingPolicy(stage="finetune", init_from=str(tmp_path / "export")))
    target_state = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(target_state[key], value), key
    assert trainable_parts(target) == {"vision_tower": False, "projector": True, "llm": True}
    other = build_for_stage(tiny_vlm_config(llm=llm, projector="linear"), TrainingPolicy(stage="align"))
    with pytest.raises(ValueError, match="do not (fit|match)"):
        load_all(other, tmp_path / "export")
    with pytest.raises(ValueError, match="export directory"):
        load_all(other, tmp_path / "missing.ckpt")


@pytest.mark.parametrize("kind", ["hf_clip", "open_clip"])
def test_init_from_a_tower_export_sets_the_tower_only(tmp_path, kind):
    from mm.train.contrastive_module import export_tower

    config = tiny_vlm_config(vision=kind)
    source = build_for_stage(config, TrainingPolicy(stage="full", init_seed=1))
    with torch.no_grad():
        for param in source.vision_tower.parameters():
            param.add_(0.5)
    export_tower(source.vision_tower, tmp_path / "tower", source="test")
    target = build_for_stage(config, TrainingPolicy(stage="full", init_seed=2, init_from=str(tmp_path / "tower")))
    fresh = build_for_stage(config, TrainingPolicy(stage="full", init_seed=2))
    for key, value in source.vision_tower.state_dict().items():
        assert torch.equal(target.vision_tower.state_dict()[key], value), key
    for part in ("projector", "llm"):  # as built from the stage's own seed
        for (key, value), fresh_value in zip(getattr(target, part).state_dict().items(),
                                             getattr(fresh, part).state_dict().values()):
            assert torch.equal(value, fresh_value), key
    (tmp_path / "not_a_tower").mkdir()
    with pytest.raises(ValueError, match="neither an mm export"):
        load_all(fresh, tmp_path / "not_a_tower")


def test_gradient_checkpointing_keeps_the_gradients(config):
    from mm.data.batching import collate
    from mm.data.samples import Sample

    plain = build_for_stage(config, TrainingPolicy(stage="full"))
    checkpointed = build_for_stage(config, TrainingPolicy(stage="full", gradient_checkpointing=True))
    assert checkpointed.llm.is_activation_checkpointing and not plain.llm.is_activation_checkpointing
    ids = [1] + [plain.image_token_id] * plain.tokens_per_image + list(range(20, 40))
    sample = Sample(ids, [-100] * (1 + plain.tokens_per_image) + list(range(20, 40)),
                    [torch.full((1, 3, 64, 64), 100, dtype=torch.uint8)], image_sizes=[(64, 64)])
    batch = collate([sample], pad_id=0)
    grads = []
    for vlm in (plain, checkpointed):
        vlm.train()
        out = vlm(batch["input_ids"], pixel_values=batch["pixel_values"].float() / 255,
                  attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        grads.append({n: p.grad for n, p in vlm.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_lora_export_merges_adapters_into_a_plain_llm(config, tmp_path):
    import mm
    from mm.train.init import merge_lora

    vlm = build_for_stage(config, TrainingPolicy(stage="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0))
    with torch.no_grad():
        for name, param in vlm.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.1)  # trained adapters are non-zero
    ids = torch.tensor([[1, 20, 21, 22, 23]])
    vlm.eval()
    with torch.no_grad():
        before = vlm(ids).logits
    merge_lora(vlm)
    vlm.save_pretrained(tmp_path / "export")
    loaded = mm.load_pretrained(tmp_path / "export")
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, before, rtol=1e-4, atol=1e-5)
