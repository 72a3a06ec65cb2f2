"""Strategy x stage combinations that cannot train or export are refused when `fit` starts, naming one that can;
DeepSpeed is an optional extra whose absence is a one-line install hint, not a traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from mm.train import strategies
from mm.train.strategies import UnsupportedStrategy, check_strategy
from train_helpers import cpu_trainer, tiny_cli_config, tiny_data, tiny_module, write_shards

ROOT = Path(__file__).resolve().parents[1]
FSDP = "lightning.pytorch.strategies.FSDPStrategy"
DEEPSPEED = "lightning.pytorch.strategies.DeepSpeedStrategy"


def fsdp_object(**kwargs):
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(**kwargs)


@pytest.mark.parametrize(
    "strategy, stage, message",
    [
        ("fsdp", "lora", "LoRA under FSDP cannot be exported"),
        ({"class_path": FSDP, "init_args": {"sharding_strategy": "FULL_SHARD"}}, "lora", "use strategy ddp"),
        (fsdp_object, "lora", "use strategy ddp or deepspeed_stage_2"),
        ({"class_path": FSDP, "init_args": {"state_dict_type": "sharded"}}, "finetune", "set state_dict_type: full"),
        (lambda: fsdp_object(state_dict_type="sharded"), "full", "set state_dict_type: full"),
        ("deepspeed_stage_3", "finetune", "ZeRO-3 is not supported"),
        ("deepspeed_stage_3_offload", "lora", "use strategy fsdp"),
        ({"class_path": DEEPSPEED, "init_args": {"stage": 3}}, "align", "ZeRO-3 is not supported"),
        ({"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}, "finetune", "use strategy ddp, fsdp"),
    ],
)
def test_unsupported_combinations_are_refused_with_the_alternative(strategy, stage, message, monkeypatch):
    monkeypatch.setattr(strategies, "deepspeed_installed", lambda: True)
    strategy = strategy() if callable(strategy) else strategy
    with pytest.raises(UnsupportedStrategy) as refused:
        check_strategy(strategy, SimpleNamespace(stage=stage))
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "strategy, stage",
    [("auto", "lora"), ("ddp", "lora"), ("ddp_spawn", "full"), ("fsdp", "finetune"), (fsdp_object, "align"),
     ({"class_path": FSDP, "init_args": {"state_dict_type": "full"}}, "full"), ("deepspeed_stage_2", "lora"),
     ("deepspeed", "finetune"), ({"class_path": DEEPSPEED, "init_args": {"stage": 1}}, "full")],
)
def test_supported_combinations_pass(strategy, stage, monkeypatch):
    monkeypatch.setattr(strategies, "deepspeed_installed", lambda: True)
    check_strategy(strategy() if callable(strategy) else strategy, SimpleNamespace(stage=stage))


def test_deepspeed_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(strategies, "deepspeed_installed", lambda: False)
    for strategy in ("deepspeed_stage_2", {"class_path": DEEPSPEED, "init_args": {"stage": 1}}):
        with pytest.raises(UnsupportedStrategy, match=r"deepspeed is not installed: pip install 'mm\[deepspeed\]'"):
            check_strategy(strategy, SimpleNamespace(stage="lora"))
    check_strategy("ddp", SimpleNamespace(stage="lora"))  # only DeepSpeed needs it


def test_deepspeed_is_an_optional_extra_and_torch_loads_weights_only_by_default():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("deepspeed") for dep in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(dep.startswith("deepspeed") for dep in extras["deepspeed"])
    assert not any("deepspeed" in dep for dep in extras["dev"])
    # torch.load's default is weights_only=True from torch 2.6 (torchvision 0.21 is its pair)
    assert "torch>=2.6,<2.15" in project["dependencies"] and "torchvision>=0.21,<0.30" in project["dependencies"]


@pytest.fixture
def tiny_config(tmp_path):
    write_shards(tmp_path / "data", [2])
    config = tmp_path / "run.yaml"
    config.write_text(tiny_cli_config(tmp_path / "run", tmp_path / "data", stage="lora"))
    return config


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trainer.strategy", "fsdp"], "LoRA under FSDP cannot be exported"),
        (["--trainer.strategy", "deepspeed_stage_3", "--model.policy.stage", "finetune"], "ZeRO-3 is not supported"),
        (["--trainer.strategy", FSDP, "--trainer.strategy.state_dict_type", "sharded", "--model.policy.stage",
          "full"], "set state_dict_type: full"),
        (["--trainer.strategy", "deepspeed_stage_2"], "deepspeed is not installed: pip install 'mm[deepspeed]'"),
    ],
)
def test_mm_train_fit_refuses_before_building_anything(tiny_config, tmp_path, extra, message, monkeypatch, capsys):
    from mm.train.cli import main

    monkeypatch.setattr(strategies, "deepspeed_installed", lambda: False)
    started = time.perf_counter()
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", str(tiny_config), *extra])
    assert refused.value.code == 2 and message in capsys.readouterr().err
    assert time.perf_counter() - started < 10 and not (tmp_path / "run").exists()


def test_setup_hook_refuses_before_the_model_is_built(tmp_path):
    """Trainer.fit without the CLI: the module's setup hook checks the strategy object (ModelParallelStrategy
    would train each rank on its own, with no gradient synchronisation, since mm does not parallelise)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    write_shards(tmp_path / "data", [2])
    module = tiny_module()
    with pytest.raises(UnsupportedStrategy, match="use strategy ddp, fsdp or deepspeed_stage_2"):
        cpu_trainer(tmp_path, strategy=ModelParallelStrategy(), max_steps=1).fit(
            module, datamodule=tiny_data(tmp_path / "data"))
    assert module.vlm is None


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_recipe_without_deepspeed_is_a_one_line_hint():
    done = subprocess.run([sys.executable, "-m", "mm.train.cli", "fit", "--config",
                           str(ROOT / "configs" / "llava15" / "stage2_lora.yaml")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "deepspeed is not installed: pip install 'mm[deepspeed]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_use_supported_combinations(path, monkeypatch):
    import yaml

    monkeypatch.setattr(strategies, "deepspeed_installed", lambda: True)
    config = yaml.safe_load(path.read_text())
    check_strategy(config["trainer"].get("strategy", "auto"), SimpleNamespace(**config["model"]["policy"]))
