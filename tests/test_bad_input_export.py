"""mm-export on bad input, the matrix (issue 20): whose folder an export may replace, read-only targets, broken
checkpoints, bad options. Each refusal is one `mm-export: error:` line naming the file or option, status 2,
and leaves every folder as it was (no temp folder, no half-written export)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from cli_checks import BIN, as_a_user, assert_refused, run_installed
from helpers_model import tiny_model
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mm
import mm.export_target
from mm.export import main as export_main
from mm.export_target import MARKER, source_identity


@pytest.fixture(scope="module")
def run1_export(tmp_path_factory) -> Path:
    """`run1/export` as mm-train writes it: a checkpoint recording run1 as its source."""
    run = tmp_path_factory.mktemp("runs") / "run1"
    tiny_model().save_pretrained(run / "export", source=source_identity(run, "run"))
    return run / "export"


def copy_of(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to, symlinks=True)
    return to


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temp folders an export made beside its target and did not remove."""
    return [name for name in os.listdir(folder) if ".tmp-" in name or ".old-" in name]


@pytest.fixture(autouse=True)
def no_progress_bars():
    """transformers draws a bar on stderr while it writes weights; the error lines are what is checked here."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


def export(*argv) -> tuple[int, str]:
    """mm-export in this process: its status and stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = export_main([*map(str, argv)])
    return status, stderr.getvalue()


def refused(*argv, mentions=()) -> str:
    status, stderr = export(*argv)
    return assert_refused(status, stderr, *map(str, mentions))


# ----------------------------------------------------------------------------- item 1: whose export is it
def test_a_copy_of_another_runs_export_is_refused_and_left_byte_identical(run1_export, tmp_path):
    # the reproducer: cp -r run1/export other; mm-export hf-llava run2/export other
    other = copy_of(run1_export, tmp_path / "other")
    run2_export = copy_of(run1_export, tmp_path / "run2" / "export")
    before = snapshot(other)
    result = run_installed("mm-export", "hf-llava", run2_export, other)
    assert_refused(result.returncode, result.stderr, str(other), "copied or moved here", "--overwrite")
    assert snapshot(other) == before
    # the copy is no export of run1's checkpoint either: it was written elsewhere
    refused("hf-llava", run1_export, other, mentions=(other, "copied or moved here"))
    assert snapshot(other) == before and not leftovers(tmp_path)


def test_an_export_is_replaced_by_a_re_export_of_its_source_only(run1_export, tmp_path):
    out = tmp_path / "hf"
    assert export("hf-llava", run1_export, out)[0] == 0
    record = (out / MARKER).read_text()
    assert "sha256:" in record and str(tmp_path) not in record and str(run1_export) not in record  # no local paths
    exported = snapshot(out)
    (out / "model.safetensors").write_bytes(b"stale")
    assert export("hf-llava", run1_export, out)[0] == 0  # the same source: ours, replaced
    assert snapshot(out) == exported and not leftovers(tmp_path)
    another = copy_of(run1_export, tmp_path / "another")
    refused("hf-llava", another, out, mentions=(out, f"a source other than 'checkpoint {another}'", "--overwrite"))
    assert snapshot(out) == exported


def test_overwrite_replaces_the_exports_files_and_removes_nothing_else(run1_export, tmp_path):
    other = copy_of(run1_export, tmp_path / "other")
    (other / "notes.txt").write_text("mine")
    (tmp_path / "precious.json").write_text("{}")
    (other / "config.json").symlink_to(tmp_path / "precious.json")  # the link is replaced, not what it names
    before = snapshot(other)
    assert export("hf-llava", run1_export, other, "--overwrite")[0] == 0
    assert (tmp_path / "precious.json").read_text() == "{}" and not (other / "config.json").is_symlink()
    after = snapshot(other)
    written = json.loads(after[MARKER])["files"]
    kept = set(before) - set(written) - {MARKER}
    assert {"mm_config.json", "image_processing.json", "notes.txt"} <= kept
    assert {name: after[name] for name in kept} == {name: before[name] for name in kept}
    assert "notes.txt" not in written and not leftovers(tmp_path)


@pytest.mark.parametrize("record", [{"files": ["config.json"]}, None], ids=["marker-without-source", "no-marker"])
def test_an_export_from_before_sources_were_recorded_needs_overwrite(run1_export, tmp_path, record):
    out = tmp_path / "hf"
    assert export("hf-llava", run1_export, out)[0] == 0
    if record is None:
        (out / MARKER).unlink()
    else:
        (out / MARKER).write_text(json.dumps(record))
    before = snapshot(out)
    refused("hf-llava", run1_export, out, mentions=(out, "does not record its source", "--overwrite"))
    assert snapshot(out) == before
    assert export("hf-llava", run1_export, out, "--overwrite")[0] == 0


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
records = st.fixed_dictionaries({"files": json_values, "written_to": json_values, "source": json_values})


@settings(max_examples=30, deadline=None, derandomize=True)
@given(marker=st.binary(max_size=200) | records.map(lambda record: json.dumps(record).encode()))
@example(marker=b"[" * 200_000)  # nested past the JSON parser's recursion limit
@example(marker=b'{"files": ["../../etc/passwd"], "written_to": null, "source": null}\x00')
@example(marker=b"\xff\xfe" + "{}".encode("utf-16-le"))
def test_any_marker_that_is_not_our_record_is_refused_and_touches_nothing(run1_export, marker):
    with tempfile.TemporaryDirectory() as parent:
        out = Path(parent) / "out"
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"someone else's weights")
        (out / MARKER).write_bytes(marker)
        before = snapshot(out)
        refused("hf-llava", run1_export, out, mentions=(out, "--overwrite"))
        assert snapshot(out) == before and os.listdir(parent) == ["out"]


def test_a_training_run_refuses_another_runs_export_and_replaces_its_own(run1_export, tmp_path):
    from types import SimpleNamespace

    from mm.export_target import ExportTargetError
    from mm.tiny import tiny_vlm_config
    from mm.train.module import VLMTrainingModule

    run2 = tmp_path / "run2"
    trainer = SimpleNamespace(default_root_dir=str(run2), log_dir=str(run2 / "logs"), checkpoint_callbacks=[])
    module = VLMTrainingModule(tiny_vlm_config())
    copy_of(run1_export, run2 / "export")  # cp -r run1/export run2/export
    with pytest.raises(ExportTargetError, match="copied or moved here; pass --model.overwrite_export true"):
        module.check_export_dir(trainer)
    shutil.rmtree(run2 / "export")
    mm.load_pretrained(run1_export).save_pretrained(run2 / "export", source=module._export_source(trainer))
    module.check_export_dir(trainer)  # run2's own export: replaceable


# ----------------------------------------------------------------------------- item 10: read-only targets
@pytest.fixture
def read_only_out(tmp_path):
    """`tmp_path/out`, holding a user's file, mode 555 in a writable folder."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    out.chmod(0o555)
    yield out
    out.chmod(0o755)


def test_a_read_only_target_is_refused_before_the_model_loads(run1_export, read_only_out):
    # the issue: the export failed only after a model load and a full temporary copy, left behind (mode 555)
    result = as_a_user([str(BIN / "mm-export"), "hf-llava", str(run1_export), str(read_only_out), "--overwrite"])
    assert_refused(result.returncode, result.stderr, str(read_only_out), "is not writable")
    assert sorted(os.listdir(read_only_out.parent)) == ["out"] and os.listdir(read_only_out) == ["notes.txt"]


def test_a_read_only_parent_is_refused_where_the_temp_folder_would_go(run1_export, tmp_path):
    assert export("hf-llava", run1_export, tmp_path / "exports" / "hf")[0] == 0
    (tmp_path / "exports").chmod(0o555)
    try:
        check = ("import sys; from mm.export_target import check_export_target, ExportTargetError\n"
                 "for out in sys.argv[2:]:\n"
                 "    try: check_export_target(out, sources=[sys.argv[1]])\n"
                 "    except ExportTargetError as error: print(error)\n")
        result = as_a_user([sys.executable, "-c", check, str(run1_export), str(tmp_path / "exports" / "hf"),
                            str(tmp_path / "exports" / "new")], cwd=tmp_path)
    finally:
        (tmp_path / "exports").chmod(0o755)
    assert result.returncode == 0, result.stderr
    earlier, new = result.stdout.splitlines()
    assert f"{tmp_path / 'exports'} is not writable" in earlier
    assert f"cannot be created: {tmp_path / 'exports'} is not writable" in new


def test_a_folder_that_fails_the_publish_is_left_as_it_was_and_no_temp_folder_stays(run1_export, tmp_path,
                                                                                     monkeypatch):
    # as root no folder is read-only, so the rename into place is made to fail as it would for a user
    out = tmp_path / "hf"
    assert export("hf-llava", run1_export, out)[0] == 0
    out.chmod(0o555)  # an export copies the target folder's mode: its temp folder must still be removable
    before = snapshot(out)
    rename = os.replace

    def refuse_the_swap(src, dst):
        if Path(dst) == out and Path(src).name.startswith(".hf.tmp-"):  # putting the earlier one back works
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return rename(src, dst)

    monkeypatch.setattr(mm.export_target.os, "replace", refuse_the_swap)
    refused("hf-llava", run1_export, out, mentions=(out, "Permission denied"))
    monkeypatch.undo()
    out.chmod(0o755)
    assert snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["hf"]


# ----------------------------------------------------------------------------- the target folder
def test_a_target_that_is_a_file_or_inside_the_source_is_refused(run1_export, tmp_path):
    (tmp_path / "file").write_text("x")
    refused("hf-llava", run1_export, tmp_path / "file", mentions=(tmp_path / "file", "is not a folder"))
    inside = run1_export / "hf"
    refused("hf-llava", run1_export, inside, "--overwrite", mentions=(inside, "inside the checkpoint", run1_export))
    assert not inside.exists() and not leftovers(run1_export)


def test_symlinked_targets(run1_export, tmp_path):
    # a link is followed to the folder it names, which the usual rules protect; a link to nowhere is refused
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    refused("hf-llava", run1_export, dangling, mentions=(dangling, "does not exist"))
    assert not (tmp_path / "nowhere").exists()
    to_source = tmp_path / "to_source"
    to_source.symlink_to(run1_export)
    refused("hf-llava", run1_export, to_source, "--overwrite", mentions=(run1_export, "is what the export is made from"))
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.json").write_text("{}")
    (tmp_path / "to_theirs").symlink_to(tmp_path / "theirs")
    refused("hf-llava", run1_export, tmp_path / "to_theirs", mentions=(tmp_path / "theirs", "--overwrite"))
    assert os.listdir(tmp_path / "theirs") == ["config.json"]
    (tmp_path / "hf").mkdir()
    (tmp_path / "to_hf").symlink_to(tmp_path / "hf")
    assert export("hf-llava", run1_export, tmp_path / "to_hf")[0] == 0
    assert export("hf-llava", run1_export, tmp_path / "to_hf")[0] == 0  # our export, through the link: replaced
    assert (tmp_path / "to_hf").is_symlink() and (tmp_path / "hf" / "model.safetensors").is_file()


def test_names_the_system_cannot_look_up_are_one_line(run1_export, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused("hf-llava", run1_export, tmp_path / "loop" / "hf", mentions=(tmp_path / "loop", "cannot be used"))
    refused("hf-llava", tmp_path / "loop", tmp_path / "hf", mentions=(tmp_path / "loop", "cannot be used"))
    too_long = tmp_path / ("x" * 300)
    refused("hf-llava", run1_export, too_long, mentions=(too_long, "File name too long"))
    assert sorted(os.listdir(tmp_path)) == ["loop"]


def test_a_folder_where_an_export_file_goes_is_refused_before_anything_moves(run1_export, tmp_path):
    out = tmp_path / "out"
    (out / "config.json").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    refused("hf-llava", run1_export, out, "--overwrite", mentions=(out, "holds a folder 'config.json'"))
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["config.json", "notes.txt"]
    assert not leftovers(tmp_path)


# ----------------------------------------------------------------------------- the source checkpoint
def corrupt(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def truncate(name: str):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[: (folder / name).stat().st_size // 2])


SOURCES = {  # id -> (how the copied checkpoint is broken, what the error line names besides the checkpoint)
    "truncated weights": (truncate("model.safetensors"), "model.safetensors"),
    "empty weights": (corrupt("model.safetensors", b""), "model.safetensors"),
    "garbage weights": (corrupt("model.safetensors", b"\xff" * 64), "model.safetensors"),
    "config not JSON": (corrupt("mm_config.json", b"{\"format_version\": 1,"), "mm_config.json"),
    "config nested": (corrupt("mm_config.json", b"[" * 100_000 + b"]" * 100_000), "mm_config.json"),
    "config not UTF-8": (corrupt("mm_config.json", b"\xff\xfe\x00{"), "mm_config.json"),
    "config a list": (corrupt("mm_config.json", b"[1, 2]"), "mm_config.json"),
    "config NUL bytes": (corrupt("mm_config.json", b"\x00" * 16), "mm_config.json"),
    "no config": (lambda folder: (folder / "mm_config.json").unlink(), "neither an mm checkpoint"),
    "truncated tokenizer": (truncate("tokenizer.json"), "tokenizer"),
}


@pytest.mark.parametrize("breakage, named", SOURCES.values(), ids=SOURCES.keys())
def test_a_broken_checkpoint_is_one_line_naming_it(run1_export, tmp_path, breakage, named):
    source = copy_of(run1_export, tmp_path / "ckpt")
    breakage(source)
    refused("hf-llava", source, tmp_path / "hf", mentions=(f"cannot load {source}", named))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_sources_that_are_no_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    for source, named in [(tmp_path / "missing", "no such local path"), (tmp_path / "empty", "neither an mm checkpoint"),
                          (tmp_path / "a_file", "is a file")]:
        refused("hf-llava", source, tmp_path / "hf", mentions=(source, named))
    assert sorted(os.listdir(tmp_path)) == ["a_file", "empty"]


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("dtype", ["int8", "nan", "", "float64", "bfloat16; rm -rf /"])
def test_a_dtype_that_is_not_offered_is_named_before_loading(run1_export, tmp_path, dtype):
    refused("hf-llava", run1_export, tmp_path / "hf", "--dtype", dtype, mentions=("--dtype", repr(dtype)))
    assert not (tmp_path / "hf").exists()
