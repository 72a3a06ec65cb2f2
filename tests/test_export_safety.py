"""mm-export never destroys what is not its own: refused targets, --overwrite, file modes, load errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_model import tiny_model

import mm
from mm.export import main as export_main

MM_EXPORT = str(Path(sys.executable).with_name("mm-export"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt") / "ckpt"
    tiny_model().save_pretrained(directory)
    return directory


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_run(tmp_path, checkpoint) -> Path:
    """A training run folder: its export (the source), a checkpoint and logs."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights and optimizer")
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "logs" / "version_0" / "metrics.csv").write_text("step,loss\n0,1.0\n")
    (run / "export").mkdir()
    for path in checkpoint.iterdir():
        (run / "export" / path.name).write_bytes(path.read_bytes())
    return run


def one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_export_into_the_sources_run_folder_is_refused_and_destroys_nothing(tmp_path, checkpoint):
    run = make_run(tmp_path, checkpoint)
    before = snapshot(run)
    result = subprocess.run([MM_EXPORT, "hf-llava", str(run / "export"), str(run)], capture_output=True, text=True)
    assert result.returncode == 2
    one_error_line(result.stderr, str(run), "--overwrite", "contains the source")
    assert snapshot(run) == before
    # with --overwrite only the export's own files are added; the source, checkpoints and logs stay
    assert export_main(["hf-llava", str(run / "export"), str(run), "--overwrite"]) == 0
    after = snapshot(run)
    assert {k: after[k] for k in before} == before
    assert mm.load_pretrained(run).config.vision.kind == "hf_clip"


def test_a_training_run_folder_is_refused(tmp_path, checkpoint, capsys):
    run = make_run(tmp_path, checkpoint)
    before = snapshot(run)
    assert export_main(["hf-llava", str(checkpoint), str(run)]) == 2
    one_error_line(capsys.readouterr().err, str(run), "training run folder", "--overwrite")
    assert snapshot(run) == before


def test_the_source_itself_is_refused_even_with_overwrite(checkpoint, capsys):
    before = snapshot(checkpoint)
    assert export_main(["hf-llava", str(checkpoint), str(checkpoint), "--overwrite"]) == 2
    one_error_line(capsys.readouterr().err, str(checkpoint), "is what the export is made from")
    assert snapshot(checkpoint) == before


def test_a_users_files_survive_and_an_earlier_export_is_replaced(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export_main(["hf-llava", str(checkpoint), str(out)]) == 2
    one_error_line(capsys.readouterr().err, str(out), "not an earlier mm export", "--overwrite")
    assert os.listdir(out) == ["notes.txt"]
    assert export_main(["hf-llava", str(checkpoint), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    ours = json.loads((out / ".mm-export.json").read_text())["files"]
    assert "model.safetensors" in ours and "notes.txt" not in ours
    # an earlier export of ours is replaceable without --overwrite; the user's file still stays
    (out / "model.safetensors").write_bytes(b"stale")
    assert export_main(["hf-llava", str(checkpoint), str(out)]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert mm.load_pretrained(out).tokens_per_image == mm.load_pretrained(checkpoint).tokens_per_image
    # a folder holding nothing but our export is swapped whole: no temp folders left beside it
    (out / "notes.txt").unlink()
    assert export_main(["hf-llava", str(checkpoint), str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("umask, files, folders", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_exported_files_follow_the_umask(tmp_path, checkpoint, umask, files, folders):
    previous = os.umask(umask)
    try:
        assert export_main(["hf-llava", str(checkpoint), str(tmp_path / "hf")]) == 0
        tiny_model().save_pretrained(tmp_path / "ckpt")
    finally:
        os.umask(previous)
    for folder in (tmp_path / "hf", tmp_path / "ckpt"):
        assert stat.S_IMODE(folder.stat().st_mode) == folders
        for path in folder.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == files, path


def test_a_mistyped_checkpoint_path_says_local_and_hub(tmp_path):
    out = tmp_path / "hf"
    result = subprocess.run([MM_EXPORT, "hf-llava", "./no/such/dir", str(out)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2
    one_error_line(result.stderr, "./no/such/dir", "no such local path", "Hub id")
    # an owner/name that is not local is tried on the Hub; offline that fails, and the error says both
    result = subprocess.run([MM_EXPORT, "hf-llava", "no/such", str(out)], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    one_error_line(result.stderr, "no/such", "no such local path", "as a Hub id it could not be fetched")
    assert not out.exists()


def test_mm_eval_with_a_mistyped_checkpoint_path_is_one_clear_error(tmp_path, capsys, monkeypatch):
    from eval.cli import main as eval_main

    synth = Path(__file__).parent / "fixtures" / "eval" / "synth"
    monkeypatch.chdir(tmp_path)
    code = eval_main(["run", "--task", "synth_vqa", "--data", str(synth), "--checkpoint", "./no/such/dir",
                      "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert code == 2
    one_error_line(capsys.readouterr().err, "./no/such/dir", "no such local path", "Hub id")
