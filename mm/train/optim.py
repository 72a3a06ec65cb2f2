"""AdamW parameter groups (per component, decay / no decay), the warmup + cosine schedule, and the global
gradient norm (and clipping by it) for gradients sharded over ranks."""

from __future__ import annotations

import math

import torch
from torch import nn

from mm.train.policy import TrainingPolicy

COMPONENTS = ("vision_tower", "projector", "llm")


# Inserted into parameter names by wrappers (FSDP, activation checkpointing, torch.compile).
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def unwrapped_name(name: str) -> str:
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def no_decay_names(model: nn.Module) -> set[str]:
    """Norm weights, biases (any 1-D parameter) and every embedding table. Decide on the model before a
    strategy wraps it: FSDP shows the optimizer flattened 1-D shards, every one of which looks 1-D."""
    names = {name for name, param in model.named_parameters() if param.ndim < 2}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            names |= {f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters()}
    return {unwrapped_name(name) for name in names}


def component_lrs(policy: TrainingPolicy) -> dict[str, float]:
    return {
        "vision_tower": policy.vision_lr if policy.vision_lr is not None else policy.lr,
        "projector": policy.projector_lr if policy.projector_lr is not None else policy.lr,
        "llm": policy.lr,
    }


def param_groups(model: nn.Module, policy: TrainingPolicy, no_decay: set[str] | None = None) -> list[dict]:
    """One group per (component, decay) holding that component's trainable parameters; `no_decay` is
    `no_decay_names` of the unwrapped model (computed here when not given)."""
    no_decay = no_decay_names(model) if no_decay is None else no_decay
    lrs = component_lrs(policy)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = unwrapped_name(name)
        component = name.split(".", 1)[0]
        if component not in lrs:
            raise ValueError(f"trainable parameter {name!r} belongs to none of {list(COMPONENTS)}")
        groups.setdefault((component, name not in no_decay), []).append(param)
    if not groups:
        raise ValueError("no trainable parameters: check the training stage")
    return [
        {
            "name": f"{component}/{'decay' if decay else 'no_decay'}",
            "params": params,
            "lr": lrs[component],
            "weight_decay": policy.weight_decay if decay else 0.0,
        }
        for (component, decay), params in sorted(groups.items())
    ]


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0):
    """Multiplier of the peak lr at each optimizer step: linear warmup, then cosine to `min_lr_ratio`."""
    if total_steps < 1:
        raise ValueError(f"the schedule needs at least one optimizer step, got {total_steps}")
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: nn.Module, policy: TrainingPolicy, total_steps: int, no_decay: set[str] | None = None):
    optimizer = torch.optim.AdamW(param_groups(model, policy, no_decay), betas=policy.betas, eps=policy.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, policy.warmup_ratio, policy.min_lr_ratio)
    )
    return optimizer, schedule


def global_grad_norm(grads: list[torch.Tensor], sharded_over=None, device=None) -> torch.Tensor:
    """The L2 norm of the whole gradient.

    `sharded_over`: the process group whose ranks each hold a disjoint piece of the gradients (FSDP), so the
    squared norms are summed over it; every rank must call this, also one that holds no piece. None when each
    rank holds all of them (one device, or DDP, whose gradients are already averaged: summing would count
    them world-size times). `device`: where the sum lives (the one the collective runs on)."""
    total = torch.zeros((), dtype=torch.float32, device=device)
    for grad in grads:
        total += torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).to(total.device) ** 2
    if sharded_over is not None:
        torch.distributed.all_reduce(total, group=sharded_over)
    return total.sqrt()


def clip_grad_norm_global(grads: list[torch.Tensor], max_norm: float, sharded_over=None, device=None) -> torch.Tensor:
    """Scale the gradients so that their global norm is at most `max_norm` (as torch's clip_grad_norm_, whose
    norm is local: wrong for shards); returns the norm before clipping."""
    norm = global_grad_norm(grads, sharded_over, device)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.detach().mul_(scale.to(grad.device))
    return norm
