"""Checkpoints are loaded with weights_only=True, explicitly: a checkpoint carrying a pickled callable is
refused by `mm-train fit --ckpt_path` even where torch's default would unpickle it (torch < 2.6, simulated
by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD), and every torch.load in the code says weights_only=True."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_cli_config, write_shards

ROOT = Path(__file__).resolve().parents[1]

class Payload:
    """Unpickling this runs os.mkdir(marker): what a crafted checkpoint could run instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("ckpt_path", ["last", "file"])
def test_fit_ckpt_path_refuses_a_checkpoint_that_unpickles_code(tmp_path, monkeypatch, capsys, ckpt_path):
    """`last` is the resume path (the run's checkpoints/last.ckpt); a plain file path is also read by
    LightningCLI itself (for hyperparameters), which passes weights_only=True on its own. Either is refused
    by mm-train's own check first: one line naming the file, status 2 (mm.cli_errors)."""
    from mm.train.cli import main

    write_shards(tmp_path / "data", [2])
    config = tmp_path / "run.yaml"
    config.write_text(tiny_cli_config(tmp_path / "run", tmp_path / "data", steps=2))
    marker = tmp_path / "code_ran"
    evil = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evil.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": Payload(marker)}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch < 2.6: weights_only=False by default
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", str(config), "--ckpt_path", "last" if ckpt_path == "last" else str(evil)])
    assert refused.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "UnpicklingError: Weights only load failed" in error and str(evil) in error
    assert not marker.exists()


def torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"]


def test_every_torch_load_passes_weights_only_true():
    offenders, calls = [], 0
    for folder in ("mm", "data_prep", "eval", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for call in torch_load_calls(path):
                calls += 1
                flags = [k.value for k in call.keywords if k.arg == "weights_only"]
                if not (flags and isinstance(flags[0], ast.Constant) and flags[0].value is True):
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert calls and not offenders, offenders
