"""Bad input to `mm-prep llava | vqa | pref | synth | select` (issue 20 items 1, 4, 5 and the hunt beyond them).

The contract (mm/cli_errors.py): a bad record among many is a counted rejection in rejected.jsonl, never the
end of the run; a bad file or option is one `mm-prep CMD: error:` line naming it, status 2, no traceback, no
output left behind; `--overwrite` removes only files the command recorded as its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_checks import BIN, as_a_user, assert_refused, run_installed
from data_prep.cli import main
from data_prep.records import MAX_RECORD_DEPTH
from data_prep.select import MAX_WHERE_CHARS, MAX_WHERE_DEPTH
from test_prep_llava import gpt, human, image_bytes
from test_prep_select import write_scores

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
DEEP = "[" * 5000 + "]" * 5000  # past Python's JSON reader (about 1,000 levels)


def prep(*argv: str) -> tuple[int, str]:
    """`mm-prep ARGV` in process: (status, stderr); argparse's exit included."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main([str(arg) for arg in argv])
        except SystemExit as exit_:
            status = exit_.code
    return status, err.getvalue()


def refused(argv: list, *mentions: str) -> str:
    status, err = prep(*argv)
    return assert_refused(status, err, *mentions)


def good(number: int) -> dict:
    return {"id": f"good-{number}", "image": "a.png", "conversations": [human("<image>\nWhat is it?"), gpt("A block.")]}


def good_pair(number: int) -> dict:
    return {"id": f"good-{number}", "image": "a.png", "conversations": [human("<image>\nWhat is it?")],
            "chosen": "A red block.", "rejected": "A blue ball."}  # fmt: skip


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(image_bytes("PNG"))
    return root


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def rejected(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def write_records(path: Path, records: list) -> Path:
    """JSON lines or a JSON list (by suffix); a str record is written as it is (raw JSON text)."""
    texts = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(texts) + "\n" if path.suffix == ".jsonl" else "[" + ",\n".join(texts) + "]")
    return path


# ------------------------------------------------------------------------- item 4: one bad record, one rejection


@pytest.mark.parametrize("command, make", [("llava", good), ("pref", good_pair)])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_nul_image_path_and_a_deep_record_are_counted_skips(tmp_path, images, command, make, suffix):
    nul = dict(make(1), id="nul", image="a\x00.png")
    annotations = write_records(tmp_path / f"data{suffix}", [make(0), nul, DEEP, make(2)])
    out = tmp_path / "out"
    argv = [command, "--annotations", annotations, "--image-root", images, "--out", out, "--workers", "1", "--no-progress"]
    if command == "llava" and suffix == ".jsonl":  # the issue's case as a user runs it
        result = run_installed("mm-prep", *argv)
        status, err = result.returncode, result.stderr.decode()
    else:
        status, err = prep(*argv)
    assert status == 0 and "Traceback" not in err, err
    written = manifest(out)
    assert written["num_input_records"] == 4 and written["num_records_written"] == 2
    assert written["rejected_by_reason"] == {"malformed_record": 2}
    details = {row["index"]: row for row in rejected(out)}
    assert "NUL" in details[1]["detail"] and details[1]["record"]["image"] == "a\x00.png"
    assert f"nested deeper than {MAX_RECORD_DEPTH} levels" in details[2]["detail"]
    assert details[2]["record"] == DEEP  # the raw text kept: nothing lost


def test_a_record_deep_but_readable_is_rejected_before_anything_recurses(tmp_path, images):
    nested = "[" * 900 + "]" * 900  # Python's JSON reader takes it; walking or writing it back would not
    annotations = write_records(tmp_path / "data.json", [good(0), {"id": "deep", "extra": json.loads(nested)}])
    assert prep("llava", "--annotations", annotations, "--image-root", images, "--out", tmp_path / "o",
                "--workers", "1", "--no-progress")[0] == 0  # fmt: skip
    assert manifest(tmp_path / "o")["rejected_by_reason"] == {"malformed_record": 1}


def test_vqa_nul_and_deep_questions_are_per_question(tmp_path, images):
    (images / "COCO_x_000000000001.jpg").write_bytes(image_bytes("JPEG"))
    question = {"question_id": 1, "image_id": 1, "question": "What?"}
    deep = {"question_id": 2, "image_id": 1, "question": "What?", "x": json.loads("[" * 900 + "]" * 900)}
    questions = {"data_subtype": "x", "questions": [question, deep, {**question, "question_id": 3, "image_id": [1]}]}
    answers = {"annotations": [{"question_id": n, "answers": [{"answer": "a"}]} for n in (1, 2, 3)]
               + [{"question_id": [4], "answers": 5}]}  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(answers))
    vqa = ["vqa", "--questions", tmp_path / "q.json", "--annotations", tmp_path / "a.json", "--image-root", images,
           "--workers", "1", "--no-progress"]  # fmt: skip
    assert prep(*vqa, "--out", tmp_path / "o")[0] == 0
    assert manifest(tmp_path / "o")["num_records_written"] == 1
    assert manifest(tmp_path / "o")["rejected_by_reason"] == {"malformed_record": 2}
    questions["data_subtype"] = "x\x00"  # every image path then holds a NUL: each question rejected, none crashes
    (tmp_path / "q.json").write_text(json.dumps(questions))
    assert prep(*vqa, "--out", tmp_path / "o2")[0] == 0
    assert manifest(tmp_path / "o2")["num_records_written"] == 0
    (tmp_path / "q.json").write_text('{"questions": [' + DEEP + "]}")
    refused([*vqa, "--out", tmp_path / "o3"], "q.json", "nested too deeply")
    assert not (tmp_path / "o3").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "not valid JSON"),
    (b"{oops", "not valid JSON"),
    (b'{"a": 1}', "expected a JSON list of records"),
    (b'"text"', "expected a JSON list of records"),
    (('{"a": ' * 3000 + "1" + "}" * 3000).encode(), "got value nested too deeply"),
    (b'[{"id": 1}] trailing', "Extra data"),
    (b'[{"id": 1} {"id": 2}]', "Expecting ',' delimiter"),
    (b'[{"id": 1},]', "not valid JSON"),
    (b"[" + b"[" * 5000, "not valid JSON"),
    (b'\xff\xfe[{"id": 1}]', "not UTF-8"),
    (b'[{"id": 1}]\x00', "not valid JSON"),
    (image_bytes("PNG"), "not UTF-8"),
])  # fmt: skip
def test_a_json_list_file_that_cannot_be_read_is_one_line(tmp_path, images, content, message):
    (tmp_path / "data.json").write_bytes(content)
    refused(["llava", "--annotations", tmp_path / "data.json", "--image-root", images, "--out", tmp_path / "o"],
            "data.json", message)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_an_unreadable_file_through_the_installed_command(tmp_path, images):
    (tmp_path / "data.json").write_text('{"not": "a list"}')
    result = run_installed("mm-prep", "pref", "--annotations", tmp_path / "data.json", "--image-root", images,
                           "--out", tmp_path / "o")  # fmt: skip
    assert_refused(result.returncode, result.stderr, "mm-prep pref: error:", "data.json", "expected a JSON list")


@FUZZ
@given(line=st.binary(max_size=200))
def test_any_bytes_as_a_jsonl_line_are_a_counted_skip(images, line):
    with tempfile.TemporaryDirectory() as folder:
        annotations = Path(folder) / "data.jsonl"
        annotations.write_bytes(json.dumps(good(0)).encode() + b"\n" + line + b"\n" + json.dumps(good(1)).encode() + b"\n")
        out = Path(folder) / "out"
        status, err = prep("llava", "--annotations", annotations, "--image-root", images, "--out", out,
                           "--workers", "1", "--no-progress")  # fmt: skip
        assert status == 0 and not err, err
        written = manifest(out)
        assert written["num_records_written"] + written["num_rejected"] == written["num_input_records"]
        assert written["num_records_written"] >= 2 and not list(out.glob("*.tmp"))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)  # fmt: skip


@FUZZ
@given(record=JSON_VALUES | st.fixed_dictionaries({"id": JSON_VALUES, "image": JSON_VALUES, "conversations": JSON_VALUES,
                                                    "chosen": JSON_VALUES, "rejected": JSON_VALUES}))
@pytest.mark.parametrize("command", ["llava", "pref"])
def test_any_json_value_as_a_record_is_written_or_a_counted_skip(images, command, record):
    with tempfile.TemporaryDirectory() as folder:
        annotations = write_records(Path(folder) / "data.json", [good_pair(0), record])
        out = Path(folder) / "out"
        status, err = prep(command, "--annotations", annotations, "--image-root", images, "--out", out,
                           "--workers", "1", "--no-progress")  # fmt: skip
        assert status == 0 and not err, err
        written = manifest(out)
        assert written["num_input_records"] == 2
        assert written["num_records_written"] + written["num_rejected"] == 2


# ------------------------------------------------------------------------- options and input files


@pytest.mark.parametrize("command", ["llava", "pref", "synth"])
@pytest.mark.parametrize("option, value, mention", [
    ("--samples-per-shard", "0", "is not a whole number >= 1"),
    ("--samples-per-shard", "-1", "is not a whole number >= 1"),
    ("--samples-per-shard", "abc", "not a whole number"),
    ("--workers", "0", "is not a whole number >= 1"),
    ("--max-shard-bytes", "0", "is not a whole number >= 1"),
    ("--max-image-side", "0", "is not a whole number >= 1"),
    ("--seed", "x", "invalid int value"),
    ("--check", "slow", "invalid choice"),
])  # fmt: skip
def test_invalid_shard_option_values_are_one_line(tmp_path, images, command, option, value, mention):
    inputs = [] if command == "synth" else ["--annotations", write_records(tmp_path / "d.jsonl", [good(0)]), "--image-root", images]
    refused([command, *inputs, "--out", tmp_path / "o", option, value], f"mm-prep {command}: error:", option, mention)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("options, mention", [
    (["--num-train", "-1"], "num_train"),
    (["--image-size", "0"], "image_size"),
    (["--image-size", "100000"], "--image-size must be at most 4096"),
    (["--grid", "0"], "min_objects"),
    (["--shapes", "hexagon"], "hexagon"),
    (["--colors", "mauve"], "mauve"),
    (["--noise", "nan"], "noise"),
    (["--noise", "2"], "noise"),
    (["--min-turns", "6", "--max-turns", "2"], "min_turns"),
    (["--detail", "--detail-object-px", "nan", "1"], "object_px"),
    (["--num-detail-train", "3"], "need --detail"),
])  # fmt: skip
def test_invalid_synth_options_are_one_line(tmp_path, options, mention):
    refused(["synth", "--out", tmp_path / "o", "--num-train", "2", "--num-eval", "1", "--no-progress", *options], mention)
    assert not list((tmp_path / "o").rglob("shard-*.tar"))


def _input_file_cases(tmp_path: Path) -> dict[str, Path]:
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)
    return {"missing": tmp_path / "absent.jsonl", "a folder": tmp_path, "a symlink loop": loop}


@pytest.mark.parametrize("case, mention", [("missing", "No such file"), ("a folder", "Is a directory"),
                                           ("a symlink loop", "symbolic links")])  # fmt: skip
@pytest.mark.parametrize("command, option", [("llava", "--annotations"), ("pref", "--annotations"), ("vqa", "--questions"),
                                             ("vqa", "--annotations"), ("vqa", "--prompt-pool")])  # fmt: skip
def test_unreadable_input_files_name_the_option(tmp_path, images, case, mention, command, option):
    bad = _input_file_cases(tmp_path)[case]
    files = {"--annotations": tmp_path / "ok.json", "--questions": tmp_path / "ok.json"}
    files["--prompt-pool"] = tmp_path / "ok.json" if option == "--prompt-pool" else None
    (tmp_path / "ok.json").write_text("[]")
    files[option] = bad
    argv = [command, "--image-root", images, "--out", tmp_path / "o"]
    for name, path in files.items():
        if path is not None and (command == "vqa" or name == "--annotations"):
            argv += [name, path]
    refused(argv, option, mention)
    assert not (tmp_path / "o").exists()


def test_image_root_and_out_that_are_files_are_one_line(tmp_path, images):
    annotations = write_records(tmp_path / "d.jsonl", [good(0)])
    refused(["llava", "--annotations", annotations, "--image-root", annotations, "--out", tmp_path / "o"],
            "--image-root", "not a directory")  # fmt: skip
    refused(["llava", "--annotations", annotations, "--image-root", images, "--out", annotations, "--no-progress"],
            "--out", "not a directory")  # fmt: skip
    status, _ = prep("llava", "--annotations", annotations, "--image-root", tmp_path / "none", "--out", tmp_path / "o",
                     "--no-progress", "--workers", "1")  # fmt: skip
    assert status == 0 and manifest(tmp_path / "o")["rejected_by_reason"] == {"missing_image": 1}


def test_a_read_only_out_is_one_line_and_nothing_written(tmp_path, images):
    annotations = write_records(tmp_path / "d.jsonl", [good(0)])
    (tmp_path / "ro").mkdir(mode=0o555)
    done = as_a_user([BIN / "mm-prep", "llava", "--annotations", annotations, "--image-root", images,
                      "--out", tmp_path / "ro", "--no-progress"])
    assert_refused(done.returncode, done.stderr, "not writable")
    assert not list((tmp_path / "ro").iterdir())


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels (a decompression bomb) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("check", ["fast", "full"])
def test_bad_image_files_are_counted_skips(tmp_path, images, check):
    bad = {"truncated.jpg": image_bytes("JPEG", (64, 64))[:-60], "empty.png": b"", "text.png": b"not an image",
           "bomb.png": _png_claiming(100_000, 100_000), "nul.png": b"\x00" * 1000}  # fmt: skip
    for name, data in bad.items():
        (images / name).write_bytes(data)
    (images / "loop.png").symlink_to(images / "loop.png")
    names = [*bad, "loop.png", "folder"]
    (images / "folder").mkdir()
    records = [good(0), *({"id": name, "image": name, "conversations": [human("<image>\nQ"), gpt("A")]} for name in names)]
    annotations = write_records(tmp_path / "d.jsonl", records)
    result = run_installed("mm-prep", "llava", "--annotations", annotations, "--image-root", images,
                           "--out", tmp_path / "o", "--check", check, "--workers", "1", "--no-progress")  # fmt: skip
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    written = manifest(tmp_path / "o")
    assert written["num_records_written"] == 1 and written["num_rejected"] == len(names)
    assert set(written["rejected_by_reason"]) <= {"undecodable_image", "missing_image"}


# ------------------------------------------------------------------------- --overwrite never removes what is not ours


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> dict[str, Path]:
    """A synth shard set with its scores, and a llava conversion (another command's output)."""
    base = tmp_path_factory.mktemp("sets")
    assert main(["synth", "--out", str(base / "synth"), "--num-train", "8", "--num-eval", "1", "--max-objects", "1",
                 "--no-ifeval", "--no-pref", "--no-progress", "--workers", "1", "--samples-per-shard", "3"]) == 0  # fmt: skip
    scores = base / "scores.jsonl"
    write_scores(scores, base / "synth" / "instruct", {"loss": list(range(8))})
    return {"synth": base / "synth" / "instruct", "scores": scores, "align": base / "synth" / "align"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_select_overwrite_refuses_a_foreign_shard_set(shard_sets, tmp_path):
    foreign = _copy(shard_sets["align"], tmp_path / "align")  # mm-prep synth's output, rejected.jsonl and all
    before = _snapshot(foreign)
    result = run_installed("mm-prep", "select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", foreign,
                           "--random", "0.5", "--overwrite")  # fmt: skip
    assert_refused(result.returncode, result.stderr, "--out", "did not write")
    assert _snapshot(foreign) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused(["select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", tmp_path / "other",
             "--random", "0.5", "--overwrite"], "did not write")  # fmt: skip
    assert _snapshot(tmp_path / "other") == {"notes.txt": b"mine"}


def test_select_overwrite_replaces_its_own_selection_only(shard_sets, tmp_path):
    out = tmp_path / "sel"
    select = ["select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", out, "--samples-per-shard", "2"]
    assert prep(*select, "--random", "1")[0] == 0
    assert len(list(out.glob("shard-*.tar"))) == 4
    (out / "contact_sheet.html").write_text("mine")  # e.g. `mm-prep inspect --dump` beside it
    assert prep(*select, "--random", "0.25", "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar"]
    assert (out / "contact_sheet.html").read_text() == "mine"
    (out / "mm-select.json").unlink()  # a selection written before the marker: its manifest says what it wrote
    assert prep(*select, "--random", "0.5", "--overwrite")[0] == 0
    assert len(list(out.glob("shard-*.tar"))) == 2
    shutil.copy(next(shard_sets["align"].glob("shard-*.tar")), out / "shard-000099.tar")  # not select's
    refused([*select, "--random", "0.5", "--overwrite"], "shard-000099.tar", "not written by mm-prep select")
    assert (out / "shard-000099.tar").exists() and (out / "manifest.json").exists()


def test_an_interrupted_selection_does_not_block_its_rerun(shard_sets, tmp_path):
    out = tmp_path / "sel"
    select = ["select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", out, "--random", "0.5"]
    assert prep(*select)[0] == 0
    (out / "manifest.json").unlink()  # killed while writing its shard: a partial shard and the marker
    (out / "shard-000000.tar").rename(out / "shard-000000.tar.tmp")
    assert prep(*select, "--overwrite")[0] == 0
    assert not list(out.glob("*.tmp")) and (out / "manifest.json").exists()


def test_convert_overwrite_removes_only_its_own_files(shard_sets, tmp_path, images):
    annotations = write_records(tmp_path / "d.jsonl", [good(0), good(1), good(2)])
    llava = ["llava", "--annotations", annotations, "--image-root", images, "--workers", "1", "--no-progress"]
    selection = tmp_path / "sel"
    assert prep("select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", selection, "--random", "0.5")[0] == 0
    before = _snapshot(selection)
    result = run_installed("mm-prep", *llava, "--out", selection, "--overwrite")
    assert_refused(result.returncode, result.stderr, "did not convert there")
    assert _snapshot(selection) == before
    out = tmp_path / "conv"
    assert prep(*llava, "--out", out, "--samples-per-shard", "1")[0] == 0
    (out / "notes.txt").write_text("mine")
    assert prep(*llava, "--out", out, "--samples-per-shard", "2", "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert (out / "notes.txt").read_text() == "mine"
    shutil.copy(next(shard_sets["align"].glob("shard-*.tar")), out / "shard-000007.tar")  # another conversion's
    refused([*llava, "--out", out, "--samples-per-shard", "3", "--overwrite"], "shard-000007.tar", "not written by it")
    assert (out / "shard-000007.tar").exists() and len(list(out.glob("*.tar"))) == 3


# ------------------------------------------------------------------------- item 5: --where limits


@pytest.mark.parametrize("expression, mention", [
    ("not " * 2000 + "loss > 1", f"the limit is {MAX_WHERE_CHARS}"),
    ("-" * 5000 + "loss > 1", f"the limit is {MAX_WHERE_CHARS}"),
    ("loss > " + "9" * 400, "is not a finite float"),
])  # fmt: skip
def test_where_expressions_of_the_issue_through_the_cli(shard_sets, tmp_path, expression, mention):
    result = run_installed("mm-prep", "select", shard_sets["synth"], "--scores", shard_sets["scores"],
                           "--out", tmp_path / "o", f"--where={expression}")  # fmt: skip
    line = assert_refused(result.returncode, result.stderr, "--where", mention)
    assert len(line) < 400  # the expression is shown cut short
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("expression, mention", [
    ("not " * 200 + "loss > 1", f"nested deeper than {MAX_WHERE_DEPTH} levels"),
    ("-" * 900 + "loss > 1", f"nested deeper than {MAX_WHERE_DEPTH} levels"),
    ("(" * 300 + "loss > 1" + ")" * 300, "too many nested parentheses"),
    ("loss > " + "(1 + " * 100 + "1" + ")" * 100, f"nested deeper than {MAX_WHERE_DEPTH} levels"),
    ("loss > 1e999", "the number '1e999' is not a finite float"),
    ("loss > -1e400", "is not a finite float"),
    ("loss > 1" + " and loss > 1" * 100, f"the limit is {MAX_WHERE_CHARS}"),
    ("loss > 1\x00", "not an expression"),
    ("loss > 1j", "allowed: metric names"),
    ("loss > True", "allowed: metric names"),
    ("loss > 10 ** 1000", "allowed: metric names"),
    ("", "not an expression"),
])  # fmt: skip
def test_where_limits(shard_sets, tmp_path, expression, mention):
    refused(["select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", tmp_path / "o", f"--where={expression}"],
            "--where", mention)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_where_within_the_limits_still_works(shard_sets, tmp_path):
    chain = " < ".join(["-1"] + ["loss"] * 50 + ["100"])  # a long chain of comparisons is flat, not deep
    assert prep("select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", tmp_path / "o",
                "--where", f"{chain} and not not loss > " + "9" * 300)[0] == 0  # fmt: skip
    assert manifest(tmp_path / "o")["selection"]["num_kept"] == 0


@FUZZ
@given(expression=st.text(max_size=120))
def test_any_where_text_is_a_selection_or_one_line(shard_sets, expression):
    with tempfile.TemporaryDirectory() as folder:
        status, err = prep("select", shard_sets["synth"], "--scores", shard_sets["scores"], "--out", Path(folder) / "o",
                           f"--where={expression}")  # fmt: skip
        if status != 0:
            assert_refused(status, err, "--where")
