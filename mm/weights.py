"""Loading weights into a model skeleton without initialising (or allocating) its parameters twice."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no init cost).

    Buffers stay real: non-persistent ones (rotary frequencies, position ids) are computed in `__init__`
    and are not in checkpoints, so they must not be lost.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def shared_parameter_groups(model: nn.Module) -> list[list[str]]:
    """Names that refer to one Parameter object (tied embeddings), one list per tied Parameter."""
    by_identity: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_identity.setdefault(id(param), []).append(name)
    return [names for names in by_identity.values() if len(names) > 1]


def assign_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Move `state` into `model` (no copies), keeping tied parameters tied; every parameter must be covered.

    A checkpoint stores a tied tensor once, under any one of its names.
    """
    groups = shared_parameter_groups(model)
    state = dict(state)
    for names in groups:
        present = [n for n in names if n in state]
        for name in names:
            if present:
                state.setdefault(name, state[present[0]])
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the model: missing {missing}, unexpected {unexpected}")
    for names in groups:
        _retie(model, names)
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left_on_meta:
        raise ValueError(f"{source}: no weights for {left_on_meta}")


def _retie(model: nn.Module, names: list[str]) -> None:
    first = model.get_parameter(names[0])
    for name in names[1:]:
        owner_name, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner._parameters[attribute] = first
