"""configs/llava_next holds LLaVA-NeXT-7B's published settings (each cited in the YAML's comments)."""

from __future__ import annotations

from pathlib import Path

from test_configs import global_batch, parse

BASE = Path(__file__).resolve().parents[1] / "configs" / "llava_next"


def test_llava_next_recipes_hold_the_published_settings():
    stage1, stage2 = parse(BASE / "stage1_pretrain.yaml"), parse(BASE / "stage2_finetune.yaml")
    for stage in (stage1, stage2):
        assert stage.model.model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
        assert stage.model.model.vision.select_layer == -2 and stage.model.model.projector.kind == "mlp2x_gelu"
        assert stage.model.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5" and stage.trainer.max_epochs == 1
    # Stage 1 is LLaVA-1.5's (the connector is re-used): projector only, one view, lr 1e-3, batch 256.
    assert (stage1.model.policy.stage, stage1.model.policy.lr, stage1.data.template) == ("align", 1e-3, "plain")
    assert stage1.model.model.image_transform == "crop" and global_batch(stage1) == 256
    # Stage 2: anyres on LLaVA-NeXT's five grids, the whole model, the tower at 2e-6 against 1e-5.
    model, policy = stage2.model.model, stage2.model.policy
    assert model.image_transform == "anyres" and model.anyres_max_tiles is None
    assert model.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert (policy.stage, policy.lr, policy.vision_lr, policy.projector_lr) == ("full", 1e-5, 2e-6, None)
    assert (policy.warmup_ratio, policy.weight_decay) == (0.03, 0.0)
    assert stage2.data.max_length == 4096 and global_batch(stage2) == 128 and stage2.data.template == "vicuna_v1"
    assert policy.init_projector_from == stage1.model.export_dir
