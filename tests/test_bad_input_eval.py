"""mm-eval's bad-input matrix (issue 20, "Beyond the list"): every data file of every task corrupted every way
we could think of, predictions files of arbitrary bytes (hypothesis), suite YAMLs, `compare` inputs and each
numeric option's invalid values. The rule each case checks: exit status 2 and one line naming the file or the
option, or (for a predictions line) a clear error or a counted skip; never a traceback or an "internal error";
a refused command leaves no output behind."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_checks import assert_refused, run_installed
from eval.cli import main

FIX = Path(__file__).parent / "fixtures" / "eval"

# task -> its data options (fixture files, relative to FIX) and a predictions file for it
TASK_FILES = {
    "vqav2": ({"questions": "vqav2/questions.json", "annotations": "vqav2/annotations.json"}, "vqav2/predictions.jsonl"),
    "vizwiz": ({"annotations": "vizwiz/val.json"}, "vizwiz/predictions.jsonl"),
    "textvqa": ({"annotations": "textvqa/TextVQA_0.5.1_val.json",
                 "ocr-tokens": "textvqa/TextVQA_Rosetta_OCR_v0.2_val.json"}, "textvqa/predictions.jsonl"),
    "gqa": ({"questions": "gqa/testdev_balanced_questions.json"}, "gqa/predictions.jsonl"),
    "scienceqa_img": ({"problems": "scienceqa/problems.json", "pid-splits": "scienceqa/pid_splits.json"},
                      "scienceqa/predictions.jsonl"),
    "mmbench": ({"tsv": "mmbench/mmbench_dev.tsv"}, "mmbench/predictions.jsonl"),
    "seed": ({"questions": "seed/SEED-Bench.json"}, "seed/predictions.jsonl"),
    "ifeval_mm": ({"questions": "synth/eval/ifeval/questions.jsonl"}, None),
}
DEEP = b"[" * 100_000  # past Python's recursion limit: json.loads raised RecursionError
DEEP_YAML = b"[" * 1_000  # PyYAML recurses several frames a level (and slowly): past the limit too


def corrupt(kind: str, source: Path, target: Path) -> None:
    """Write `target` as a `kind` corruption of the fixture `source`."""
    data = source.read_bytes()
    writers = {
        "empty": lambda: target.write_bytes(b""),
        "truncated": lambda: target.write_bytes(data[: len(data) // 2]),
        "latin-1": lambda: target.write_bytes(data.decode("utf-8").replace("e", "\xe9").encode("latin-1", "replace")),
        "nul-bytes": lambda: target.write_bytes(data[:40] + b"\x00" * 8 + data[40:]),
        "deeply-nested": lambda: target.write_bytes(DEEP),
        "deeply-nested-last-line": lambda: target.write_bytes(data + b"\n" + DEEP + b"\n"),
        "nested-objects": lambda: target.write_bytes(b'{"a":' * 50_000),
        "a-number": lambda: target.write_bytes(b"42"),
        "a-list": lambda: target.write_bytes(b"[1, 2, 3]"),
        "null": lambda: target.write_bytes(b"null"),
        "nan": lambda: target.write_bytes(b"NaN"),
        "huge-number": lambda: target.write_bytes(re.sub(rb"(?<=[:\[,] )\d+", b"1e999", data, count=1)),
        "a-folder": lambda: target.mkdir(),
        "symlink-loop": lambda: os.symlink(target, target),
        "dangling-symlink": lambda: os.symlink(target.parent / "gone", target),
    }
    writers[kind]()


CORRUPTIONS = ["empty", "truncated", "latin-1", "nul-bytes", "deeply-nested", "deeply-nested-last-line",
               "nested-objects", "a-number", "a-list", "null", "nan", "huge-number", "a-folder", "symlink-loop",
               "dangling-symlink"]


def score_argv(task: str, folder: Path, replaced: dict[str, Path] | None = None,
               predictions: Path | None = None) -> list[str]:
    files, fixture_predictions = TASK_FILES[task]
    if predictions is None:
        predictions = FIX / fixture_predictions if fixture_predictions else folder / "p.jsonl"
        if not fixture_predictions:
            predictions.write_text('{"question_id": "1", "text": "x"}\n')
    argv = ["score", "--task", task, "--predictions", str(predictions), "--out", str(folder / "out")]
    for option, relative in files.items():
        argv += [f"--{option}", str((replaced or {}).get(option, FIX / relative))]
    return argv


def assert_refused_or_scored(status: int, err: str, out: Path, *mentions: str) -> None:
    """Either refused (status 2, one line naming `mentions`, no --out folder made) or scored (strict JSON)."""
    if status == 2:
        assert_refused(status, err, *mentions)
        assert not out.exists(), list(out.iterdir())
    else:
        assert status == 0, err
        json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("task, option", [(task, option) for task, (files, _) in TASK_FILES.items() for option in files])
def test_every_data_file_corrupted_is_one_line_naming_it(tmp_path, capsys, task, option, kind):
    source = FIX / TASK_FILES[task][0][option]
    bad = tmp_path / source.name
    corrupt(kind, source, bad)
    status = main(score_argv(task, tmp_path, {option: bad}))
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    # a corruption that still reads (e.g. a latin-1 'é' where no text is compared) may score; nothing else
    assert_refused_or_scored(status, err, tmp_path / "out", str(bad))


def test_deeply_nested_data_file_through_the_installed_cli(tmp_path):
    """The probe's RecursionError, in a benchmark file rather than a shard line."""
    bad = tmp_path / "questions.json"
    bad.write_bytes(DEEP)
    done = run_installed("mm-eval", *score_argv("gqa", tmp_path, {"questions": bad}), timeout=120)
    assert_refused(done.returncode, done.stderr, str(bad), "--questions", "nested too deeply")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- predictions files: any bytes per line

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
RECORDS = st.fixed_dictionaries({"question_id": JSON_VALUES | st.sampled_from(["20968379", "20968380", 20968379]),
                                 "text": JSON_VALUES | st.text(max_size=20)})
LINES = st.one_of(
    st.binary(max_size=60),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    RECORDS.map(lambda record: json.dumps(record).encode()),
    st.sampled_from([DEEP, b"\x00", b"\xff\xfe", b'{"question_id": 1, "text": "a"', b"NaN", b"\r"]),
)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(LINES, max_size=5), final_newline=st.booleans())
def test_any_bytes_as_predictions_lines_never_crash_or_leave_output(tmp_path, capsys, lines, final_newline):
    folder = tmp_path / "case"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    predictions = folder / "predictions.jsonl"
    predictions.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    status = main(score_argv("gqa", folder, predictions=predictions))
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    assert_refused_or_scored(status, err, folder / "out", str(predictions))


def test_deeply_nested_predictions_line_names_file_and_line(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_bytes(b'{"question_id": "20968379", "text": "yes"}\n' + DEEP + b"\n")
    assert main(score_argv("gqa", tmp_path, predictions=predictions)) == 2
    assert_refused(2, capsys.readouterr().err, f"{predictions}:2", "nested too deeply")


def test_ifeval_answer_nested_past_the_recursion_limit_is_not_json(tmp_path, capsys):
    """A model's answer is data too: the json_format check said RecursionError instead of "not JSON"."""
    from eval.ifeval.checks import format_json_format

    assert format_json_format("[" * 100_000) is False and format_json_format('{"a": [1]}') is True


# ---------------------------------------------------------------- options

def test_unknown_task_is_one_line_listing_the_valid_ones(tmp_path):
    done = run_installed("mm-eval", "score", "--task", "vqa2", "--predictions", "p", "--out", tmp_path / "o",
                         timeout=120)
    assert_refused(done.returncode, done.stderr, "unknown task 'vqa2'", "vqav2")


@pytest.mark.parametrize("option, value, message", [
    ("--temperature", "nan", "--temperature nan: expected a finite number"),
    ("--temperature", "inf", "--temperature inf: expected a finite number"),
    ("--temperature", "-1", "--temperature -1.0"),
    ("--top-p", "nan", "--top-p nan"), ("--top-p", "0", "--top-p 0.0"), ("--top-p", "inf", "--top-p inf"),
    ("--batch-size", "0", "--batch-size 0"), ("--batch-size", "-4", "--batch-size -4"),
    ("--max-new-tokens", "0", "--max-new-tokens 0"), ("--limit", "-1", "--limit -1"),
    ("--image-workers", "-3", "--image-workers -3"),
])
def test_generation_options_checked_before_the_model_loads(tmp_path, capsys, option, value, message):
    """A missing checkpoint is never reached: the options are checked first, and no --out folder is made."""
    status = main(["run", "--task", "gqa", "--questions", str(FIX / "gqa/testdev_balanced_questions.json"),
                   "--checkpoint", str(tmp_path / "no-model"), "--out", str(tmp_path / "out"), option, value])
    assert_refused(status, capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, message", [("tpu", "not a device"), ("cuda:x", "not a device")])
def test_a_device_that_is_not_one_is_one_line(device, message):
    from eval.distributed import Ranks
    from eval.pipeline import pick_device
    from eval.tasks.base import TaskDataError

    with pytest.raises(TaskDataError, match=f"--device '{device}': {message}"):
        pick_device(device, Ranks())


def test_cuda_without_a_gpu_is_one_line():
    import torch

    from eval.distributed import Ranks
    from eval.pipeline import pick_device
    from eval.tasks.base import TaskDataError

    if torch.cuda.device_count() >= 8:
        pytest.skip("eight GPUs here: cuda:7 is a device")
    with pytest.raises(TaskDataError, match="--device cuda:7: there are"):
        pick_device("cuda:7", Ranks())


# ---------------------------------------------------------------- suite YAML

@pytest.mark.parametrize("content, message", [
    (DEEP_YAML, "not a suite: nested too deeply"),
    (b"tasks: " + b"{a: " * 1_000, "not a suite: nested too deeply"),
    (b"tasks:\n  - task: gqa\n    name: ../../escape\n    questions: q\n", "name '../../escape' must be a plain folder"),
    (b"tasks:\n  - task: gqa\n    name: /tmp/elsewhere\n    questions: q\n", "name '/tmp/elsewhere'"),
    (b"tasks:\n  - task: gqa\n    name: ''\n    questions: q\n", "name ''"),
    (b"tasks:\n  - task: gqa\n    name: ..\n    questions: q\n", "name '..'"),
    (b"tasks:\n  - task: gqa\n    name: [a]\n    questions: q\n", "name ['a']"),
    (b"tasks:\x00\n", "not valid YAML"),
    (b"tasks: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    (b"", "expected a mapping with a non-empty 'tasks:' list"),
])  # fmt: skip
def test_bad_suite_is_one_line_before_the_model_loads(tmp_path, capsys, content, message):
    path = tmp_path / "suite.yaml"
    path.write_bytes(content)
    status = main(["suite", "--config", str(path), "--checkpoint", str(tmp_path / "no-model"), "--out",
                   str(tmp_path / "out")])
    assert_refused(status, capsys.readouterr().err, str(path), message)
    assert not (tmp_path / "out").exists()


def test_deep_suite_through_the_installed_cli(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_bytes(DEEP_YAML)
    done = run_installed("mm-eval", "suite", "--config", path, "--checkpoint", tmp_path / "m", "--out", tmp_path / "o",
                         timeout=120)
    assert_refused(done.returncode, done.stderr, str(path), "nested too deeply")


# ---------------------------------------------------------------- compare

@pytest.mark.parametrize("content, message", [
    (DEEP, "nested too deeply"),
    (b"\xff\xfe", "not a readable metrics"),
    (b'{"task": "x", "overall": NaN}', "NaN is not a JSON number"),
    (b'{"task": "x", "overall": 1e400}', "the number 1e400 is out of range"),
    (b'{"task": ["x"], "overall": 1}', "not a metrics file of mm-eval"),
    (b'[1, 2]', "expected a JSON object"),
    (b"", "not a readable metrics"),
    (b'{"task": "x", "overall"', "not a readable metrics"),
])
def test_compare_on_garbage_metrics_is_one_line_naming_the_file(tmp_path, capsys, content, message):
    (tmp_path / "run").mkdir()
    metrics = tmp_path / "run" / "metrics.json"
    metrics.write_bytes(content)
    status = main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "table.md")])
    assert_refused(status, capsys.readouterr().err, str(metrics), message)
    assert not (tmp_path / "table.md").exists() and not (tmp_path / "table.png").exists()


@pytest.mark.parametrize("layout", ["missing", "empty-folder", "folder-as-metrics", "symlink-loop"])
def test_compare_without_metrics_is_one_line(tmp_path, capsys, layout):
    run = tmp_path / "run"
    if layout != "missing":
        run.mkdir()
    if layout == "folder-as-metrics":
        (run / "metrics.json").mkdir()
    if layout == "symlink-loop":
        os.symlink(run / "metrics.json", run / "metrics.json")
    assert_refused(main(["compare", str(run)]), capsys.readouterr().err, str(run))


# ---------------------------------------------------------------- outputs

def test_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("mine")
    argv = score_argv("gqa", tmp_path)
    argv[argv.index("--out") + 1] = str(out)
    assert_refused(main(argv), capsys.readouterr().err, f"--out {out} is a file")
    assert out.read_text() == "mine"


def test_metrics_never_hold_nan(tmp_path):
    from eval.report import json_text

    with pytest.raises(ValueError, match="NaN or Infinity"):
        json_text({"overall": float("nan")})
    with pytest.raises(ValueError, match="NaN or Infinity"):
        json_text({"per": {"a": float("inf")}})
