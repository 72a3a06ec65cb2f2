"""Bad input to `mm-train` (issue 20, item 6, and the rest of the class): a --ckpt_path that is missing, a
folder, empty, truncated, not a checkpoint or carrying pickled code; `--ckpt_path last` when the newest
last.ckpt is cut short; bad option values, settings out of range and broken config files. Each is one
`mm-train: error:` line and status 2, never a traceback, and a refused run leaves no folder behind.
Refusals come before training, so these run in seconds on the tiny offline model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_checks import assert_refused, run_installed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from train_helpers import CSV_LOGGER, tiny_cli_config, write_shards

from mm.train.cli import main as train_main

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny-model config logging under `<folder>/run` (which no refused run may create), and checkpoint files."""
    folder = tmp_path_factory.mktemp("bad_train")
    write_shards(folder / "data", [4])
    config = folder / "run.yaml"
    config.write_text(tiny_cli_config(folder / "run", folder / "data", steps=1, trainer=CSV_LOGGER))
    return folder, config


def lightning_checkpoint(path: Path) -> Path:
    """What Lightning's loader needs to find in a checkpoint (a state_dict); enough for the file checks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 1}, path)
    return path


def truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def refused_in_process(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as refused:
        train_main(argv)
    return assert_refused(refused.value.code, capsys.readouterr().err, "mm-train: error:")


# ----------------------------------------------------------------------------- item 6: --ckpt_path
def test_a_missing_ckpt_path_is_refused_before_the_model_is_built(setup):
    folder, config = setup
    done = run_installed("mm-train", "fit", "--config", config, "--ckpt_path", "/missing.ckpt", env=ENV, cwd=folder)
    assert_refused(done.returncode, done.stderr, "--ckpt_path", "/missing.ckpt", "no such file")
    assert not (folder / "run").exists() and not (folder / "lightning_logs").exists()


def test_a_truncated_last_ckpt_names_it_and_the_checkpoint_before_it(setup, tmp_path, capsys):
    _, config = setup
    checkpoints = tmp_path / "checkpoints"
    older = lightning_checkpoint(checkpoints / "epoch=0-step=1.ckpt")
    last = truncated(lightning_checkpoint(checkpoints / "last.ckpt"))
    line = refused_in_process(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
                               "--ckpt_path", "last"], capsys)
    assert line.startswith(f"mm-train: error: --ckpt_path last: {last}: not a torch checkpoint"), line
    assert line.endswith(f"the newest readable checkpoint beside it is {older}")
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # no logs, no export of a run that never started
    assert not (setup[0] / "run").exists()


def _folder(path: Path) -> None:
    path.mkdir(parents=True)


def _write(data: bytes):
    return lambda path: path.write_bytes(data)


def _pickled_code(path: Path) -> None:
    torch.save({"state_dict": {}, "code": os.system}, path)  # refused by weights_only, never run


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "gone.ckpt")


BAD_CHECKPOINTS = {  # how the file is made, what the line says
    "a_folder": (_folder, "not a file"),
    "empty": (_write(b""), "empty file"),
    "text": (_write(b"model: yes\n"), "not a torch checkpoint (no zip archive"),
    "truncated": (lambda path: truncated(lightning_checkpoint(path)), "not a torch checkpoint (no zip archive"),
    "nul_bytes": (_write(b"\x00" * 4096), "not a torch checkpoint"),
    "a_tensor": (lambda path: torch.save(torch.zeros(2), path), "not a Lightning checkpoint (it holds no state_dict)"),
    "pickled_code": (_pickled_code, "Weights only load failed"),
    "dangling_symlink": (_dangling, "no such file"),
}


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_a_bad_ckpt_path_is_one_line_and_leaves_no_folder(setup, tmp_path, capsys, kind):
    folder, config = setup
    make, says = BAD_CHECKPOINTS[kind]
    path = tmp_path / f"{kind}.ckpt"
    make(path)
    line = refused_in_process(["fit", "--config", str(config), "--ckpt_path", str(path)], capsys)
    assert f"--ckpt_path: {path}: " in line and says in line
    assert not (folder / "run").exists()


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands_check_the_ckpt_path_too(setup, capsys, subcommand):
    _, config = setup
    line = refused_in_process([subcommand, "--config", str(config), "--ckpt_path", "/missing.ckpt"], capsys)
    assert "/missing.ckpt: no such file" in line


def test_a_good_checkpoint_beside_a_bad_explicit_one_is_suggested(setup, tmp_path, capsys):
    _, config = setup
    older = lightning_checkpoint(tmp_path / "epoch=0-step=4.ckpt")
    broken = truncated(lightning_checkpoint(tmp_path / "epoch=1-step=8.ckpt"))
    line = refused_in_process(["fit", "--config", str(config), "--ckpt_path", str(broken)], capsys)
    assert line.endswith(f"the newest readable checkpoint beside it is {older}")


# ----------------------------------------------------------------------------- options and settings
BAD_SETTINGS = [  # an option, its bad value, what the line names
    ("--data.batch_size", "0", "--data.batch_size 0"),
    ("--data.batch_size", "-1", "--data.batch_size -1"),
    ("--data.num_workers", "-1", "--data.num_workers -1"),
    ("--data.max_length", "0", "--data.max_length 0"),
    ("--data.template", "nope", "--data.template 'nope'"),
    ("--trainer.accumulate_grad_batches", "0", "--trainer.accumulate_grad_batches 0"),
    ("--trainer.max_steps", "0", "--trainer.max_steps 0"),
    ("--trainer.max_steps", "abc", "trainer.max_steps"),
    ("--trainer.precision", "7", "trainer.precision"),
    ("--model.policy.lr", "-1", "--model.policy.lr -1.0"),
    ("--model.policy.lr", "0", "--model.policy.lr 0.0"),
    ("--model.policy.lr", "nan", "model.policy.lr"),
    ("--model.policy.warmup_ratio", "2", "warmup_ratio must be in [0, 1)"),
    ("--model.policy.stage", "nope", "unknown stage 'nope'"),
    ("--model.policy.dpo_beta", "0", "dpo_beta must be > 0"),
    ("--nonsense", "1", "unrecognized arguments: --nonsense"),
]


@pytest.mark.parametrize("option, value, says", BAD_SETTINGS)
def test_a_bad_setting_is_one_line_naming_it_before_anything_is_built(setup, capsys, option, value, says):
    folder, config = setup
    line = refused_in_process(["fit", "--config", str(config), option, value], capsys)
    assert says in line
    assert not (folder / "run").exists()


@pytest.mark.parametrize("content", [None, b"", b"trainer: [unclosed\n", b"\xff\xfe\x00\x01", b"[1, 2, 3]\n",
                                     b"trainer:\n  max_steps: {a: 1}\n", b"a: " + b"[" * 5000])
def test_a_broken_config_file_is_one_line(setup, tmp_path, capsys, content):
    folder, _ = setup
    path = tmp_path / "broken.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    line = refused_in_process(["fit", "--config", str(path)], capsys)
    if content == b"\xff\xfe\x00\x01":
        assert f"--config {path}: not UTF-8 text" in line
    assert not (folder / "run").exists()


def test_no_subcommand_or_an_unknown_one_is_one_line(capsys):
    assert "subcommand" in refused_in_process([], capsys)
    assert "invalid choice: 'frobnicate'" in refused_in_process(["frobnicate"], capsys)


NOT_A_NUMBER = st.text(alphabet="abcxyz!?&*%", min_size=1, max_size=12)
BAD_VALUES = {  # values each option must refuse: built so that none of them could start a run
    "--data.batch_size": st.integers(max_value=0).map(str) | NOT_A_NUMBER,
    "--model.policy.lr": st.floats(max_value=0).map(str) | st.sampled_from(["inf", "-inf", "nan"]) | NOT_A_NUMBER,
}


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(option_value=st.sampled_from(sorted(BAD_VALUES)).flatmap(
    lambda option: st.tuples(st.just(option), BAD_VALUES[option])))
def test_any_bad_batch_size_or_lr_is_refused_in_one_line(setup, capsys, option_value):
    folder, config = setup
    option, value = option_value
    line = refused_in_process(["fit", "--config", str(config), f"{option}={value}"], capsys)
    assert option.removeprefix("--") in line
    assert not (folder / "run").exists()


def test_a_truncated_init_projector_from_checkpoint_is_one_line_naming_it(setup, tmp_path, capsys):
    _, config = setup
    bad = truncated(lightning_checkpoint(tmp_path / "align.ckpt"))
    line = refused_in_process(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run"),
                               "--model.policy.init_projector_from", str(bad)], capsys)
    assert f"{bad}: not a torch checkpoint" in line, line


@pytest.mark.parametrize("workers", ["0", "1"])  # in a DataLoader worker the error arrives wrapped in its traceback
def test_a_max_length_no_sample_fits_is_one_line(setup, tmp_path, capsys, workers):
    config = tmp_path / "run.yaml"  # this run starts (and logs) before its data fails: not under the shared folder
    config.write_text(tiny_cli_config(tmp_path / "run", setup[0] / "data", steps=1, trainer=CSV_LOGGER))
    line = refused_in_process(["fit", "--config", str(config), "--data.max_length", "2", "--data.num_workers", workers],
                              capsys)
    assert "has no valid sample in its slice" in line and "--data.max_length" in line, line
