"""Every shipped YAML parses against `mm-train` (no model is built), and the recipes hold their numbers."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from mm.config import VLMConfig
from mm.data.shards import ShardSource
from mm.train.cli import MMTrainCLI
from mm.train.module import VLMTrainingModule
from mm.data.module import ShardDataModule
from mm.train.policy import TrainingPolicy

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


class ParseOnlyCLI(MMTrainCLI):
    def instantiate_classes(self) -> None:  # parse and validate, build nothing
        pass


@functools.lru_cache(maxsize=None)
def parse(path: Path):
    cli = ParseOnlyCLI(VLMTrainingModule, ShardDataModule, seed_everything_default=0, run=False,
                       args=["--config", str(path)], auto_configure_optimizers=False)
    return cli.config


def test_there_are_recipes():
    names = {str(p.relative_to(p.parents[1])) for p in CONFIGS}
    assert {"demo/stage1_captions.yaml", "demo/stage2_finetune.yaml", "llava15/stage1_pretrain.yaml",
            "llava15/stage2_finetune.yaml"} <= names
    assert any(name.startswith("modern/") for name in names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_and_its_parts_validate(path):
    config = parse(path)
    model = config.model
    VLMConfig.from_dict(model.model.as_dict() if hasattr(model.model, "as_dict") else dict(model.model))
    TrainingPolicy(**{k: v for k, v in dict(model.policy).items()})
    for source in config.data.train_shards:
        ShardSource(**dict(source))


def test_a_wrong_key_fails_to_parse(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (Path(__file__).resolve().parents[1] / "configs" / "demo" / "stage1_captions.yaml").read_text()
    bad.write_text(text.replace("stage: full", "stagee: full"))
    with pytest.raises(SystemExit):
        parse(bad)


def global_batch(config) -> int:
    trainer = config.trainer
    return config.data.batch_size * trainer.devices * trainer.num_nodes * trainer.accumulate_grad_batches


def test_llava15_recipes_hold_the_paper_settings():
    base = Path(__file__).resolve().parents[1] / "configs" / "llava15"
    stage1, stage2 = parse(base / "stage1_pretrain.yaml"), parse(base / "stage2_finetune.yaml")
    assert stage1.model.model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert stage1.model.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5"
    assert (stage1.model.policy.stage, stage1.model.policy.lr, stage1.data.template) == ("align", 1e-3, "plain")
    assert global_batch(stage1) == 256 and stage1.trainer.max_epochs == 1
    policy = stage2.model.policy
    assert (policy.stage, policy.lr, policy.warmup_ratio, policy.weight_decay) == ("finetune", 2e-5, 0.03, 0.0)
    assert global_batch(stage2) == 128 and stage2.trainer.max_epochs == 1
    assert stage2.model.model.projector.kind == "mlp2x_gelu" and stage2.data.max_length == 2048
    assert stage2.data.template == "vicuna_v1" and stage2.trainer.precision == "bf16-mixed"
    assert policy.init_projector_from == stage1.model.export_dir


def test_demo_recipes_chain_stage1_into_stage2():
    base = Path(__file__).resolve().parents[1] / "configs" / "demo"
    stage1, stage2 = parse(base / "stage1_captions.yaml"), parse(base / "stage2_finetune.yaml")
    # Nothing in the tiny model is pretrained, so stage 1 trains every part and stage 2 continues it all.
    assert stage1.model.policy.stage == "full" and stage1.data.template == "plain"
    assert stage2.model.policy.init_from == stage1.model.export_dir
    assert stage2.model.policy.init_seed == stage1.model.policy.init_seed  # same random tower and LLM
    assert dict(stage2.model.model.vision) == dict(stage1.model.model.vision)
    assert dict(stage2.model.model.projector) == dict(stage1.model.model.projector)
    assert stage1.trainer.accelerator == stage2.trainer.accelerator == "cpu"
