"""Markdown rendering, comparison tables and atomic writes."""

import json

import pytest

from eval.cli import main
from eval.pipeline import compare_runs
from eval.report import metrics_markdown
from mm.atomic import write_json_atomic


def test_metrics_markdown_tables():
    md = metrics_markdown("pope", {"overall": 55.5556, "missing": 1,
                                   "splits": {"random": {"f1": 0.5, "tp": 1}, "popular": {"f1": 1.0, "tp": 2}},
                                   "per_type": {"a": 50.0}})
    assert md.splitlines() == [
        "# pope", "", "| metric | value |", "|---|---|", "| overall | 55.56 |", "| missing | 1 |", "",
        "## splits", "", "| splits | f1 | tp |", "|---|---|---|", "| random | 0.5000 | 1 |", "| popular | 1.0000 | 2 |", "",
        "## per_type", "", "| per_type | value |", "|---|---|", "| a | 50.00 |"]


def test_compare_runs_single_and_suite_folders(tmp_path):
    write_json_atomic(tmp_path / "a" / "metrics.json", {"task": "vqav2", "overall": 61.2, "missing": 0})
    write_json_atomic(tmp_path / "s" / "gqa" / "metrics.json", {"task": "gqa", "overall": 50.0, "missing": 2})
    write_json_atomic(tmp_path / "s" / "vqav2" / "metrics.json", {"task": "vqav2", "overall": 70.0, "missing": 0})
    table = compare_runs([str(tmp_path / "a"), str(tmp_path / "s")]).splitlines()
    assert table[0] == "| run | vqav2 | gqa |"
    assert table[2].endswith("| 61.20 | – |")
    assert table[3].endswith("| 70.00 | 50.00 (2 missing) |")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"x": 1})
    write_json_atomic(tmp_path / "m.json", {"x": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize("content, error", [
    (b'{"task": "vqav2", "overall": 6', ": not a readable metrics (Expecting ',' delimiter: line 1 column 31 (char 30))"),
    (b'{"task": "caf\xe9"}', ": not a readable metrics ('utf-8' codec can't decode byte 0xe9 in position 13: "
                             "invalid continuation byte)"),
    (b"[61.2]", " (metrics): expected a JSON object, got [61.2]"),
])  # fmt: skip
def test_compare_names_a_damaged_metrics_file(tmp_path, capsys, content, error):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_bytes(content)
    assert main(["compare", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"mm-eval: error: {tmp_path / 'run' / 'metrics.json'}{error}\n"


def test_compare_out_that_cannot_be_written(tmp_path, capsys):
    write_json_atomic(tmp_path / "run" / "metrics.json", {"task": "vqav2", "overall": 61.2, "missing": 0})
    assert main(["compare", str(tmp_path / "run"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"mm-eval: error: --out {tmp_path}: cannot write the file (Is a directory)\n"
