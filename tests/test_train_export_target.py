"""mm-train checks its export folder when fit starts: a run folder is never replaced by the export."""

from __future__ import annotations

import os

import pytest

import mm
from train_helpers import CSV_LOGGER, tiny_cli_config, write_shards

CHECKPOINTS = """
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, save_last: true}}"""

def fit(config, *extra) -> int:
    """mm-train fit's exit status."""
    from mm.train.cli import main

    try:
        main(["fit", "--config", str(config), *extra])
    except SystemExit as exit:
        return exit.code
    return 0


def snapshot(folder):
    """Every file's bytes, but the config the CLI itself saves again on each run."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "config.yaml"}


@pytest.fixture
def run(tmp_path):
    """A finished 1-step run: checkpoints, logs and its export in `root/export`."""
    write_shards(tmp_path / "data", [4])
    root = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(tiny_cli_config(root, tmp_path / "data", trainer=CSV_LOGGER + CHECKPOINTS))
    assert fit(config) == 0
    assert (root / "checkpoints" / "last.ckpt").is_file() and (root / "export" / "mm_config.json").is_file()
    return root, config


def test_an_export_dir_that_is_the_run_folder_is_refused_before_training(run, capsys):
    root, config = run
    before = snapshot(root)
    capsys.readouterr()
    # more steps would rewrite last.ckpt: the refusal must come before any of them
    assert fit(config, "--model.export_dir", str(root), "--trainer.max_steps", "3") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and str(root) in err[0] and "export" in err[0], err
    assert snapshot(root) == before
    assert fit(config, "--model.export_dir", str(root.parent), "--trainer.max_steps", "3") == 2
    assert "--model.overwrite_export" in capsys.readouterr().err
    assert snapshot(root) == before


def test_a_resumed_run_replaces_its_own_export_and_keeps_other_files(run):
    root, config = run
    (root / "export" / "notes.txt").write_text("mine")
    assert fit(config, "--trainer.max_steps", "2", "--ckpt_path", str(root / "checkpoints" / "last.ckpt")) == 0
    assert (root / "export" / "notes.txt").read_text() == "mine"
    assert mm.load_pretrained(root / "export").tokens_per_image > 0
    assert not [name for name in os.listdir(root) if name.startswith(".")]  # no temp folders left
