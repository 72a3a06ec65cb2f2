"""Shard sources that cannot be resolved are one clear error line, also through `mm-train fit`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mm.data.shards import ShardSource, ShardSourceError, resolve_source

ASSETS = Path(__file__).resolve().parents[1] / "mm" / "assets"
CONFIG = f"""
trainer: {{accelerator: cpu, devices: 1, max_steps: 1, logger: false, enable_checkpointing: false,
          enable_progress_bar: false, enable_model_summary: false}}
model:
  model:
    vision: {{kind: hf_clip, name_or_path: {ASSETS}/configs/hf_clip.json}}
    projector: {{kind: mlp2x_gelu}}
    llm: {{name_or_path: {ASSETS}/configs/llama.json, tokenizer: {ASSETS}/tokenizer}}
data: {{train_shards: [{{urls: placeholder}}], num_workers: 0}}
"""


def test_a_missing_local_path_says_it_does_not_exist(tmp_path):
    missing = tmp_path / "shards-typo"
    with pytest.raises(ShardSourceError, match=f"^{missing} does not exist"):
        resolve_source(ShardSource(str(missing)))
    with pytest.raises(ShardSourceError, match="shard-000.tar does not exist"):
        resolve_source(ShardSource(str(tmp_path / "shard-{000..001}.tar"), manifest=str(tmp_path / "sizes.json")))


def test_mm_train_fit_with_a_mistyped_shard_folder_is_one_error_line(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    mm_train = Path(sys.executable).parent / "mm-train"
    result = subprocess.run([str(mm_train), "fit", "--config", str(config), "--trainer.default_root_dir",
                             str(tmp_path), "--data.train_shards", '[{"urls": "/no/such"}]'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "mm-train: error: /no/such does not exist (shard source '/no/such')"
