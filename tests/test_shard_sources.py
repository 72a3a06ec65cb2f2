"""Shard sources that cannot be resolved are one clear error line, also through `mm-train fit`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mm.data.shards import ShardSource, ShardSourceError, count_tar_samples, resolve_source

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


def _write_tar(path, num_samples: int) -> bytes:
    """A complete tar of `num_samples` samples, one 700-byte .json member each (1536 bytes with its header)."""
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(num_samples):
            info = tarfile.TarInfo(f"{i:04d}.json")
            info.size = 700
            tar.addfile(info, io.BytesIO(b" " * 700))
    return path.read_bytes()


@pytest.mark.parametrize("entry, problem", [
    ({"name": "a.tar"}, "shards entry 1 (a.tar): `num_samples` must be a whole number >= 0, got nothing"),
    ({"name": "a.tar", "num_samples": "12"}, 'shards entry 1 (a.tar): `num_samples` must be a whole number >= 0, got "12"'),
    ({"name": "a.tar", "num_samples": 2.5}, "shards entry 1 (a.tar): `num_samples` must be a whole number >= 0, got 2.5"),
    ({"num_samples": 3}, "shards entry 1 has no `name` string"),
])  # fmt: skip
def test_a_manifest_entry_without_a_whole_sample_count_names_manifest_and_entry(tmp_path, entry, problem):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"shards": [entry]}))
    with pytest.raises(ShardSourceError) as raised:
        resolve_source(ShardSource(str(tmp_path)))
    assert str(raised.value) == f"{manifest}: {problem}"


@pytest.mark.parametrize("content", [b"{not json", b'{"shards": ["caf\xe9"]}'])
def test_a_manifest_that_is_not_json_names_it(tmp_path, content):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ShardSourceError, match=f"^cannot read shard sizes from {tmp_path / 'manifest.json'}: "):
        resolve_source(ShardSource(str(tmp_path)))


def test_a_tar_without_manifest_cut_at_a_header_boundary_is_truncated_not_shorter(tmp_path):
    shard = tmp_path / "a.tar"
    data = _write_tar(shard, 3)
    assert count_tar_samples(str(shard)) == 3
    shard.write_bytes(data[: 2 * 1536])  # two whole samples, no end-of-archive blocks: tarfile reads 2, no error
    with pytest.raises(ShardSourceError, match=f"^{shard}: truncated or corrupt: no end-of-archive blocks"):
        count_tar_samples(str(shard))
    with pytest.raises(ShardSourceError, match=f"^{shard}: truncated"):
        resolve_source(ShardSource(str(tmp_path)))
    shard.write_bytes(b"not a tar" * 100)
    with pytest.raises(ShardSourceError, match=f"^{shard}: cannot read the tar"):
        count_tar_samples(str(shard))
