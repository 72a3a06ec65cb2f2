"""mm-export on bad input (issue 9): one `mm-export: error: ...` line and rc 2, never a traceback after the model load."""

from __future__ import annotations

import errno

import pytest
from helpers_model import tiny_model

from mm.export import main as export_main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "ckpt"
    tiny_model().save_pretrained(directory)
    return directory


def test_an_out_below_a_file_is_refused_before_loading(checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" / "export"
    assert export_main(["hf-llava", str(checkpoint), str(out)]) == 2
    assert capsys.readouterr().err == (f"mm-export: error: {out} cannot be created: {tmp_path / 'notes.txt'} is not a folder; "
                                       "choose another output folder\n")


def test_a_dtype_that_is_not_a_float_is_named(checkpoint, tmp_path, capsys):
    assert export_main(["hf-llava", str(checkpoint), str(tmp_path / "out"), "--dtype", "int8"]) == 2
    assert capsys.readouterr().err == "mm-export: error: --dtype 'int8' is not one of float32, bfloat16, float16\n"


def test_a_failed_write_is_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    import mm.llava

    def disk_full(model, out, **ownership):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mm.llava, "export_llava_hf", disk_full)
    assert export_main(["hf-llava", str(checkpoint), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"mm-export: error: cannot write {tmp_path / 'out'}: No space left on device\n"
