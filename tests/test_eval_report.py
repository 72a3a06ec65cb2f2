"""Markdown rendering, comparison tables and atomic writes."""

import json

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
