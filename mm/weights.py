"""Loading weights into a model skeleton without initialising (or allocating) its parameters twice."""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from mm.cli_errors import BadInput, one_line


class UnreadableWeights(BadInput):
    """A weights file that is missing, empty, cut short or corrupt, or weights that do not fit the model:
    the message names the file (a ValueError, so every CLI reports it in one line)."""


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or `UnreadableWeights` naming it and saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_weights_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise corrupt_weights(path, error) from error


def check_safetensors(path: str | os.PathLike) -> None:
    """Read a safetensors file's header (not its tensors): a truncated or corrupt file fails here, cheaply,
    before a loader that would report it with a traceback (transformers' from_pretrained)."""
    from safetensors import SafetensorError, safe_open

    check_weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as error:
        raise corrupt_weights(path, error) from error


def check_weights_file(path: str | os.PathLike) -> None:
    """A weights file is there, a regular file, and not empty."""
    path = Path(path)
    if not path.exists():
        raise UnreadableWeights(f"{path}: weights file missing")
    if not path.is_file():
        raise UnreadableWeights(f"{path}: is not a regular file (a weights file was expected)")
    if path.stat().st_size == 0:
        raise UnreadableWeights(f"{path}: weights file is empty")


def corrupt_weights(path: str | os.PathLike, error: BaseException) -> UnreadableWeights:
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return UnreadableWeights(f"{path}: not a valid safetensors file (truncated or corrupt?): {reason}")



def lightning_checkpoint_problem(path: Path) -> str | None:
    """What makes `path` no checkpoint to resume from, or None. Memory-mapped, so only the pickled structure
    is read, not the tensors: cheap even for large checkpoints."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file (a .ckpt file is expected)"
    if path.stat().st_size == 0:
        return "empty file"
    if not zipfile.is_zipfile(path):  # torch.save's format since torch 1.6, Lightning's; a cut-off one is none
        return "not a torch checkpoint (no zip archive: truncated, or another kind of file?)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt or foreign bytes; all mean unusable
        reason = one_line(error).split(". ")[0][:300]  # torch's messages go on with advice for its own developers
        return f"not a readable checkpoint (truncated or corrupt?): {type(error).__name__}: {reason}"
    if not isinstance(state, dict) or "state_dict" not in state:
        return "not a Lightning checkpoint (it holds no state_dict)"
    return None


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
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # a tensor of another shape than the config's model has
        raise UnreadableWeights(f"{source}: weights do not match the model: {_first_mismatch(error)}") from error
    if missing or unexpected:
        raise UnreadableWeights(f"{source}: weights do not match the model: missing {missing}, "
                                f"unexpected {unexpected}")
    for names in groups:
        _retie(model, names)
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left_on_meta:
        raise UnreadableWeights(f"{source}: no weights for {left_on_meta}")


def _retie(model: nn.Module, names: list[str]) -> None:
    first = model.get_parameter(names[0])
    for name in names[1:]:
        owner_name, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner._parameters[attribute] = first


def _first_mismatch(error: RuntimeError) -> str:
    """torch lists every size mismatch on its own line under a header; the first says enough."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
