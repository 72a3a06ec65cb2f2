"""Which Lightning strategies mm-train can train and export with, checked before anything is built.

    strategy                     align / finetune / full       lora
    single device, ddp           yes                           yes
    fsdp (state_dict_type full)  yes (export gathered)         no: peft merges adapters on one rank
    (dpo, dpo_lora: as lora, and not fsdp either: the frozen reference would be sharded and exported too)
    deepspeed stage 1 / 2        yes                           yes
    deepspeed stage 3            no: weights are partitioned while the model loads, and the export saves the
                                 local partitions (use fsdp)

`check_strategy` takes the strategy in any form the Trainer accepts (a name such as "deepspeed_stage_3", the
YAML {class_path, init_args}, or a Strategy object), so `mm-train` can refuse before the Trainer is built:
Lightning itself refuses FSDP on CPU and DeepSpeed without the package, with messages that name no fix.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    SingleDeviceStrategy,
    Strategy,
    StrategyRegistry,
)

from mm.train.policy import CONTRASTIVE_STAGE, LORA_STAGES, PREFERENCE_STAGES

SUPPORTED = (SingleDeviceStrategy, DDPStrategy, FSDPStrategy)  # DeepSpeedStrategy is a DDPStrategy


class UnsupportedStrategy(ValueError):
    """This strategy cannot train or export this stage; the message names one that can."""


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _class_and_settings(strategy: Any) -> tuple[type | None, dict]:
    """The strategy's class and the settings the rules read; (None, {}) for "auto" or a name unknown here
    (Lightning chooses or rejects those itself)."""
    if isinstance(strategy, Strategy):
        settings = {"state_dict_type": getattr(strategy, "_state_dict_type", "full")}
        if isinstance(strategy, DeepSpeedStrategy):
            settings["stage"] = strategy.config.get("zero_optimization", {}).get("stage", 0)
        return type(strategy), settings
    if isinstance(strategy, str):
        entry = StrategyRegistry[strategy] if strategy in StrategyRegistry else None  # .get() would build it
        return (entry["strategy"], dict(entry["init_params"])) if entry else (None, {})
    if strategy is not None and "class_path" in strategy:  # {class_path, init_args} from YAML
        module, _, name = strategy["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name), dict(strategy.get("init_args") or {})
    return None, {}


def check_strategy(strategy: Any, policy) -> None:
    """Raise `UnsupportedStrategy` if `fit` with this strategy and `policy.stage` could not train correctly or
    could not write the export at the end, naming a strategy that can."""
    cls, settings = _class_and_settings(strategy)
    if cls is None:
        return
    name = cls.__name__
    if not issubclass(cls, SUPPORTED):
        raise UnsupportedStrategy(f"mm-train does not support {name}: use strategy ddp, fsdp or deepspeed_stage_2")
    if policy.stage == CONTRASTIVE_STAGE and issubclass(cls, (FSDPStrategy, DeepSpeedStrategy)):
        raise UnsupportedStrategy(f"stage 'contrastive' trains on one device or with ddp, not {name}: use strategy ddp")
    if issubclass(cls, FSDPStrategy):
        if policy.stage in PREFERENCE_STAGES:
            raise UnsupportedStrategy(
                "DPO under FSDP is not supported (the frozen reference model would be sharded with the trained one "
                "and the gathered export would hold both): use strategy ddp or deepspeed_stage_2"
            )
        if policy.stage in LORA_STAGES:
            raise UnsupportedStrategy(
                "LoRA under FSDP cannot be exported (the adapters are merged into the LLM on one rank): "
                "use strategy ddp or deepspeed_stage_2"
            )
        if settings.get("state_dict_type", "full") != "full":
            raise UnsupportedStrategy(
                "FSDP with state_dict_type 'sharded' cannot be exported (the export loads a full state dict): "
                "set state_dict_type: full"
            )
    if issubclass(cls, DeepSpeedStrategy):
        # Lightning's default stage is 2; with a DeepSpeed `config` the stage is read from the built object
        if settings.get("stage", None if "config" in settings else 2) == 3:
            raise UnsupportedStrategy(
                "DeepSpeed ZeRO-3 is not supported (weights are partitioned while the pretrained model loads, "
                "and the export would save each rank's partition): use strategy fsdp (as "
                "configs/llava15/stage2_finetune.yaml), or deepspeed_stage_2 for LoRA"
            )
        if not deepspeed_installed():
            raise UnsupportedStrategy(f"deepspeed is not installed: pip install 'mm[deepspeed]' (strategy {name})")


def grad_shard_group(strategy: Strategy):
    """The process group whose ranks hold disjoint shards of the gradients (FSDP, except NO_SHARD), or None when
    every rank holds all of them (one device; DDP, where they are already averaged over ranks)."""
    if not isinstance(strategy, FSDPStrategy):
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    root = next(m for m in strategy.model.modules() if isinstance(m, FullyShardedDataParallel))
    # HYBRID_SHARD: this is the node's group; the other nodes hold replicas of the same shards.
    return None if root.sharding_strategy == ShardingStrategy.NO_SHARD else root.process_group
