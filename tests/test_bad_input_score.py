"""Bad input to `mm-prep score` and `mm-prep inspect` (issue 20, items 3, 6 and 10 and the matrix beyond them):
one line naming the file or option and status 2, never a traceback; nothing left behind that blocks the
corrected command; scores of one shard set never merged into another's by coinciding keys."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_checks import BIN, as_a_user, assert_refused, run_installed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.cli import main
from data_prep.curation_report import main as curation_main

FAST = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
DEEP = b"[" * 100_000 + b"]" * 100_000


def _synth(root: Path, seed: int) -> Path:
    assert main(["synth", "--out", str(root), "--seed", str(seed), "--num-train", "6", "--num-eval", "2",
                 "--no-ifeval", "--no-pref", "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    return root / "align"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two shard sets whose sample keys coincide (two synth seeds): what keys alone cannot tell apart."""
    root = tmp_path_factory.mktemp("sets")
    return _synth(root / "one", 1), _synth(root / "two", 2)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(out.name + "*"))


def _refused_in_process(capsys, argv: list[str], *mentions: str) -> str:
    status = main(argv)
    return assert_refused(status, capsys.readouterr().err, *mentions)


# ------------------------------------------------------------------------------- item 3: shard set identity
def test_scores_of_another_shard_set_are_not_merged(sets, tmp_path):
    one, two = sets
    out = tmp_path / "s.jsonl"
    assert main(["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"]) == 0
    before = out.read_bytes(), (tmp_path / "s.jsonl.meta.json").read_bytes()
    result = run_installed("mm-prep", "score", two, "--out", out, "--metrics", "phash", "--no-progress")
    assert_refused(result.returncode, result.stderr, f"--out {out}", "another shard set", str(one.resolve()),
                   str(two.resolve()), "--merge-other-shards")  # fmt: skip
    assert (out.read_bytes(), (tmp_path / "s.jsonl.meta.json").read_bytes()) == before
    assert _leftovers(out) == ["s.jsonl", "s.jsonl.meta.json"]
    # asked for, the merge happens and the metadata says which sets were merged
    assert main(["score", str(two), "--out", str(out), "--metrics", "phash", "--no-progress", "--merge-other-shards"]) == 0
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    assert meta["shard_set"]["directory"] == str(two.resolve())
    assert [s["directory"] for s in meta["merged_shard_sets"]] == [str(one.resolve())]


def test_a_moved_copy_is_the_same_set_with_or_without_its_manifest(sets, tmp_path, capsys):
    one, _ = sets
    out = tmp_path / "s.jsonl"
    assert main(["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"]) == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for tar in one.glob("*.tar"):  # no manifest: fingerprinted from the files, as the manifest records them
        shutil.copy(tar, copy / tar.name)
    assert main(["score", str(copy), "--out", str(out), "--metrics", "length", "--no-progress"]) == 0
    assert all("num_words" in json.loads(line) for line in out.read_text().splitlines())


def test_scores_written_before_identities_need_the_option(sets, tmp_path, capsys):
    one, _ = sets
    out = tmp_path / "s.jsonl"
    assert main(["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"]) == 0
    meta_path = tmp_path / "s.jsonl.meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["shard_set"]  # as mm-prep wrote it before this change
    meta_path.write_text(json.dumps(meta))
    argv = ["score", str(one), "--out", str(out), "--metrics", "length", "--no-progress"]
    _refused_in_process(capsys, argv, f"--out {out}", "before mm-prep recorded", "--merge-other-shards")
    assert main([*argv, "--merge-other-shards"]) == 0
    assert json.loads(meta_path.read_text())["merged_shard_sets"] == [None]  # an unrecorded set was merged in
    assert main(argv) == 0  # recorded now: the same set merges as before


def test_partials_of_another_set_at_the_same_path_are_not_resumed(sets, tmp_path, capsys, monkeypatch):
    from data_prep.score import runner

    one, two = sets
    shards, out = tmp_path / "shards", tmp_path / "s.jsonl"
    shutil.copytree(one, shards)
    calls = {"n": 0}
    real = runner.score_batch

    def fail_second_batch(scorers, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a run stopped half-way: its partial lines stay for resuming
        return real(scorers, batch)

    monkeypatch.setattr(runner, "score_batch", fail_second_batch)
    argv = ["score", str(shards), "--out", str(out), "--metrics", "phash", "--batch-size", "2", "--no-progress"]
    assert main(argv) == 130
    capsys.readouterr()
    monkeypatch.setattr(runner, "score_batch", real)
    assert "s.jsonl.partial" in _leftovers(out)
    shutil.rmtree(shards)
    shutil.copytree(two, shards)  # regenerated in place: same path, same keys, other samples
    _refused_in_process(capsys, argv, "partial results of a run with other ['shard_set']")
    shutil.rmtree(shards)
    shutil.copytree(one, shards)
    assert main(argv) == 0
    assert "2 already done" in capsys.readouterr().out  # the same set again: the first batch is resumed
    assert _leftovers(out) == ["s.jsonl", "s.jsonl.meta.json"]


# ------------------------------------------------------------------ item 10: nothing left that blocks a rerun
def test_a_failed_run_on_an_empty_folder_leaves_nothing(sets, tmp_path):
    one, _ = sets
    empty, out = tmp_path / "EMPTY", tmp_path / "s.jsonl"
    empty.mkdir()
    result = run_installed("mm-prep", "score", empty, "--out", out, "--metrics", "phash")
    assert_refused(result.returncode, result.stderr, str(empty), "no shards")
    assert _leftovers(out) == []
    result = run_installed("mm-prep", "score", one, "--out", out, "--metrics", "length", "--no-progress")
    assert result.returncode == 0, result.stderr  # the corrected command, with other settings, runs


def _corrupt_shards(kind: str, one: Path, where: Path) -> Path:
    """A shard folder broken one way."""
    where.mkdir()
    tar = next(one.glob("*.tar"))
    if kind in ("truncated", "truncated_with_manifest"):
        (where / tar.name).write_bytes(tar.read_bytes()[:1500])  # inside the first sample's image
        if kind == "truncated_with_manifest":
            shutil.copy(one / "manifest.json", where / "manifest.json")
    elif kind == "empty_tar":
        (where / "a.tar").write_bytes(b"")
    elif kind == "not_a_tar":
        (where / "a.tar").write_bytes(b"hello, not a tar\n" * 40)
    elif kind == "symlink_loop":
        (where / "a.tar").symlink_to("b.tar")
        (where / "b.tar").symlink_to("a.tar")
    elif kind == "dangling_symlink":
        (where / "a.tar").symlink_to("nowhere.tar")
    elif kind == "manifest_not_utf8":
        shutil.copy(tar, where / tar.name)
        (where / "manifest.json").write_bytes(b"\xff\xfe{}")
    elif kind == "manifest_nested":
        shutil.copy(tar, where / tar.name)
        (where / "manifest.json").write_bytes(DEEP)
    elif kind == "manifest_escapes":
        shutil.copy(tar, where / tar.name)
        (where / "manifest.json").write_text(json.dumps({"shards": [{"name": "../x.tar", "num_samples": 1}]}))
    elif kind == "sample_json_nested":
        from data_prep.shards import TarStream

        with open(where / "a.tar", "wb") as handle:
            stream = TarStream(handle)
            stream.add("0000.json", DEEP)
            stream.close()
    return where


CORRUPTIONS = ["truncated", "truncated_with_manifest", "empty_tar", "not_a_tar", "symlink_loop", "dangling_symlink",
               "manifest_not_utf8", "manifest_nested", "manifest_escapes", "sample_json_nested"]  # fmt: skip


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_broken_shards_are_one_line_and_leave_nothing(sets, tmp_path, capsys, kind):
    one, _ = sets
    shards, out = _corrupt_shards(kind, one, tmp_path / "shards"), tmp_path / "s.jsonl"
    _refused_in_process(capsys, ["score", str(shards), "--out", str(out), "--metrics", "phash", "--no-progress"],
                        str(shards))  # fmt: skip
    assert _leftovers(out) == []
    _refused_in_process(capsys, ["inspect", str(shards)], str(shards))
    assert main(["score", str(one), "--out", str(out), "--metrics", "length", "--no-progress"]) == 0


def test_leftover_empty_partials_do_not_block_a_run(sets, tmp_path):
    one, _ = sets
    out = tmp_path / "s.jsonl"
    (tmp_path / "s.jsonl.partial").write_bytes(b"")  # e.g. killed before its first batch
    (tmp_path / "s.jsonl.partial.json").write_text(json.dumps({"metrics": ["minhash"], "shards": "elsewhere"}))
    assert main(["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"]) == 0
    assert _leftovers(out) == ["s.jsonl", "s.jsonl.meta.json"]


# ------------------------------------------------------------------------- item 6: a truncated checkpoint
def test_a_truncated_checkpoint_is_one_line_and_leaves_nothing(sets, tmp_path):
    import torch

    import mm
    from mm.tiny import tiny_vlm_config

    one, _ = sets
    torch.manual_seed(0)
    mm.build_vlm(tiny_vlm_config()).save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "s.jsonl"
    result = run_installed("mm-prep", "score", one, "--out", out, "--metrics", "loss", "--checkpoint",
                           tmp_path / "ckpt", "--device", "cpu", "--no-progress")  # fmt: skip
    assert_refused(result.returncode, result.stderr, "model.safetensors")
    assert _leftovers(out) == []


# ----------------------------------------------------------------------------------- the options' matrix
@pytest.mark.parametrize("argv, mentions", [
    (["--metrics", "phash", "--batch-size", "0"], ["--batch-size"]),
    (["--metrics", "phash", "--batch-size", "-3"], ["--batch-size"]),
    (["--metrics", "phash", "--limit", "0"], ["--limit"]),
    (["--metrics", "loss", "--checkpoint", "CKPT", "--max-length", "-1"], ["--max-length"]),
    (["--metrics", "minhash", "--minhash-perm", "0"], ["--minhash-perm"]),
    (["--metrics", ""], ["--metrics", "valid metrics"]),
    (["--metrics", "phash,bogus"], ["--metrics", "'bogus'"]),
    (["--metrics", "loss"], ["--checkpoint"]),
    (["--metrics", "clip"], ["--clip-model"]),
    (["--metrics", "loss", "--checkpoint", "/nonexistent/ckpt"], ["--checkpoint /nonexistent/ckpt"]),
    (["--metrics", "length", "--tokenizer", "/nonexistent/tok"], ["--tokenizer /nonexistent/tok"]),
    (["--metrics", "loss", "--checkpoint", "CKPT", "--device", "tpu"], ["--device 'tpu'"]),
    (["--metrics", "loss", "--checkpoint", "CKPT", "--dtype", "int8"], ["int8"]),
])  # fmt: skip
def test_invalid_option_values(sets, tmp_path, capsys, argv, mentions):
    one, _ = sets
    (tmp_path / "CKPT").mkdir()
    argv = [str(tmp_path / "CKPT") if a == "CKPT" else a for a in argv]
    out = tmp_path / "s.jsonl"
    _refused_in_process(capsys, ["score", str(one), "--out", str(out), "--no-progress", *argv], *mentions)
    assert _leftovers(out) == []


def test_a_tokenizer_folder_that_holds_none(sets, tmp_path, capsys):
    one, _ = sets
    out = tmp_path / "s.jsonl"
    _refused_in_process(capsys, ["score", str(one), "--out", str(out), "--metrics", "length", "--tokenizer", str(one),
                                 "--no-progress"], f"--tokenizer {one}")  # fmt: skip
    _refused_in_process(capsys, ["inspect", str(one), "--tokenizer", str(one)], f"--tokenizer {one}")
    assert _leftovers(out) == []


@pytest.mark.parametrize("where", ["folder", "under_a_file", "nul", "proc"])
def test_out_that_cannot_be_written(sets, tmp_path, capsys, where):
    one, _ = sets
    if where == "folder":
        out = tmp_path
    elif where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "s.jsonl"
    elif where == "nul":
        out = tmp_path / "s\0.jsonl"
    elif where == "proc":  # a place even root cannot create files in
        if not Path("/proc/self").exists():
            pytest.skip("no /proc")
        out = Path("/proc/s.jsonl")
    _refused_in_process(capsys, ["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"], "--out")
    if where not in ("nul", "proc"):
        assert [p for p in tmp_path.rglob("*") if ".partial" in p.name] == []


def test_out_in_a_read_only_folder(sets, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    done = as_a_user([BIN / "mm-prep", "score", sets[0], "--out", folder / "s.jsonl", "--metrics", "phash",
                      "--no-progress"])
    assert_refused(done.returncode, done.stderr, "--out")
    assert os.listdir(folder) == []


def test_out_with_non_utf8_name_works(sets, tmp_path):
    one, _ = sets
    out = os.fsencode(tmp_path) + b"/s\xff.jsonl"
    assert main(["score", str(one), "--out", os.fsdecode(out), "--metrics", "length", "--no-progress"]) == 0
    assert os.path.exists(out) and os.path.exists(out + b".meta.json")


def test_a_corrupt_metadata_or_settings_file_is_named(sets, tmp_path, capsys):
    one, _ = sets
    out = tmp_path / "s.jsonl"
    assert main(["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"]) == 0
    (tmp_path / "s.jsonl.meta.json").write_bytes(b"{\xff")
    _refused_in_process(capsys, ["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"],
                        "s.jsonl.meta.json")  # fmt: skip
    (tmp_path / "s.jsonl.meta.json").unlink()
    out.unlink()
    (tmp_path / "s.jsonl.partial").write_text('{"key": "x"}\n')
    (tmp_path / "s.jsonl.partial.json").write_text("[1")
    _refused_in_process(capsys, ["score", str(one), "--out", str(out), "--metrics", "phash", "--no-progress"],
                        "s.jsonl.partial.json")  # fmt: skip


# --------------------------------------------------------------------------------- any bytes as a score line
@pytest.fixture(scope="module")
def scored(sets, tmp_path_factory):
    one, _ = sets
    out = tmp_path_factory.mktemp("scored") / "s.jsonl"
    assert main(["score", str(one), "--out", str(out), "--metrics", "phash,length", "--no-progress"]) == 0
    return out


LINES = st.one_of(st.binary(max_size=60), st.sampled_from([
    DEEP, b"5", b"[]", b"null", b'{"key": 1}', b'{"key": "k", "num_words": Infinity}', b'{"key": "k", "num_words": NaN}',
    b'{"key": "k", "num_words": ' + b"9" * 400 + b"}", b'{"key": "k\\u0000", "num_words": -1e308}', b"\xff\xfe",
    b'{"key": "k", "num_words": 1e308}', b'{"key": "k", "num_words": true}',
]))  # fmt: skip


def _status_and_lines(capsys, status: int) -> tuple[int, list[str]]:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return status, [line for line in err.splitlines() if line.strip()]


@FAST
@given(line=LINES)
def test_any_line_in_an_existing_out_is_merged_or_refused(scored, sets, tmp_path_factory, capsys, line):
    one, _ = sets
    out = tmp_path_factory.mktemp("any") / "s.jsonl"
    shutil.copy(scored, out)
    shutil.copy(scored.with_name("s.jsonl.meta.json"), out.with_name("s.jsonl.meta.json"))
    with open(out, "ab") as handle:
        handle.write(line + b"\n")
    before = out.read_bytes()
    status, err = _status_and_lines(capsys, main(["score", str(one), "--out", str(out), "--metrics", "length",
                                                  "--no-progress"]))  # fmt: skip
    assert status in (0, 2)
    if status == 2:
        assert len(err) == 1 and str(out) in err[0], err
        assert out.read_bytes() == before and not [p for p in out.parent.iterdir() if ".partial" in p.name]


@FAST
@given(line=LINES)
def test_any_line_in_a_partial_file_is_resumed_or_refused(scored, sets, tmp_path_factory, capsys, line):
    from data_prep.score.runner import ScoreOptions, resume_record
    from data_prep.score.shard_set import shard_set_identity

    one, _ = sets
    out = tmp_path_factory.mktemp("part") / "s.jsonl"
    first = scored.read_bytes().splitlines(keepends=True)[0]
    out.with_name("s.jsonl.partial").write_bytes(first + line + b"\n" + first)
    options = ScoreOptions(shards=str(one), out=str(out), metrics=["length"])
    out.with_name("s.jsonl.partial.json").write_text(json.dumps(resume_record(options, None, shard_set_identity(one))))
    status, err = _status_and_lines(capsys, main(["score", str(one), "--out", str(out), "--metrics", "length",
                                                  "--no-progress"]))  # fmt: skip
    assert status in (0, 2)
    if status == 2:
        assert len(err) == 1 and "s.jsonl.partial" in err[0], err


@FAST
@given(line=LINES)
def test_any_line_of_scores_for_inspect(scored, tmp_path_factory, capsys, line):
    folder = tmp_path_factory.mktemp("inspect")
    scores = folder / "s.jsonl"
    scores.write_bytes(scored.read_bytes() + line + b"\n")
    status, err = _status_and_lines(capsys, main(["inspect", str(scores), "--metrics", "num_words"]))
    assert status in (0, 2)
    if status == 2:
        assert len(err) == 1 and str(scores) in err[0], err


@FAST
@given(line=LINES)
def test_any_line_for_the_curation_report(scored, tmp_path_factory, capsys, line):
    folder = tmp_path_factory.mktemp("curation")
    (folder / "s.jsonl").write_bytes(scored.read_bytes() + line + b"\n")
    (folder / "n.jsonl").write_bytes(b'{"id": "synth-align-0000001", "kind": "wrong_answer"}\n' + line + b"\n")
    status, err = _status_and_lines(capsys, curation_main([str(folder / "s.jsonl"), str(folder / "n.jsonl")]))
    assert status in (0, 2)
    if status == 2:
        assert len(err) == 1 and str(folder) in err[0], err


def test_inspect_refuses_scores_of_another_set(sets, scored, capsys):
    _, two = sets
    _refused_in_process(capsys, ["inspect", str(scored), "--shards", str(two)], "another shard set", str(two.resolve()))


@pytest.mark.parametrize("argv, mentions", [
    (["--dump", "-1"], ["--dump -1"]),
    (["--dump", "1", "--dump-out", "DIR"], ["--dump-out"]),
    (["--tokenizer", "/nonexistent/tok"], ["--tokenizer /nonexistent/tok"]),
])  # fmt: skip
def test_inspect_option_values(sets, tmp_path, capsys, argv, mentions):
    one, _ = sets
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    _refused_in_process(capsys, ["inspect", str(one), *argv], *mentions)
    assert capsys.readouterr().out == ""  # refused before any statistics were printed
