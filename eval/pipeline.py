"""The mm-eval commands as functions: run a task, score predictions, compare runs, run a suite."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.distributed import Ranks, barrier
from eval.judge.engine import check_judge_options
from eval.judge.options import JudgeOptions
from eval.predictions import id_key, read_predictions
from eval.report import compare_markdown, json_text, metrics_markdown
from mm.atomic import write_text_atomic
from eval.scoring.evaluate import score_predictions
from eval.tasks import get_task
from eval.tasks.base import TaskDataError, file_options, json_object, parse_json

if TYPE_CHECKING:  # the runner imports torch: seconds that `score` and `compare` do not need
    from eval.runner import GenerationSettings

log = logging.getLogger(__name__)
# Settings that must match when a run directory is resumed (answers of mixed settings are not one run).
RESUME_KEYS = ("task", "data", "checkpoint", "prompt_template", "max_new_tokens", "dtype", "sampling")


def build_options(task_name: str, values: dict[str, Any], where: str | None = None):
    """The task's options dataclass from a mapping (CLI flags or a suite entry, named by `where`); unknown
    or missing keys and values that are not strings are clear errors."""
    where = where or f"task {task_name}"
    task = get_task(task_name)
    known = {f.name for f in fields(task.options_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TaskDataError(f"{where}: unknown options {unknown}; valid: {sorted(known)}")
    missing = [f.name for f in fields(task.options_type) if f.default is MISSING and f.name not in values]
    if missing:
        raise TaskDataError(f"{where}: missing options {missing}")
    # Every option is a path, pattern or list in one string; YAML may give a number or, for an unquoted
    # `{data_id}`, a mapping, which would fail deep in a reader after the model is loaded.
    not_text = {k: v for k, v in values.items() if not isinstance(v, str)}
    if not_text:
        raise TaskDataError(f"{where}: options must be strings (quote them in YAML), got {not_text}")
    options = task.options_type(**values)
    if isinstance(options, JudgeOptions):  # now, not after `run` has loaded the model
        check_judge_options(options, "judge_parse_attempts")
    return options


def read_questions(task_name: str, options) -> list:
    """The task's questions; ids must be unique, since answers are matched to questions by id."""
    questions = get_task(task_name).read(options)
    seen: set[str] = set()
    for question in questions:
        key = id_key(question.question_id)
        if key in seen:
            raise TaskDataError(f"task {task_name}: question id {question.question_id!r} occurs twice in its data")
        seen.add(key)
    return questions


def output_folder(path: str | Path) -> Path:
    """The --out folder, created if need be; a file in its place is a clear error, not a traceback later."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TaskDataError(f"--out {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. a file where a parent folder should be
        raise TaskDataError(f"--out {path}: cannot create the folder ({error.strerror})") from None
    return path


def score_task(task_name: str, options, predictions_file: str | Path, out_dir: str | Path, questions=None) -> dict:
    """Score a predictions file (ours or LLaVA-format from elsewhere); write metrics.json and metrics.md."""
    task = get_task(task_name)
    questions = read_questions(task_name, options) if questions is None else questions
    records = read_predictions(predictions_file)
    wanted = {id_key(question.question_id) for question in questions}
    if records and questions and not any(id_key(task.prediction_id(r)) in wanted for r in records):
        # e.g. another task's file: refused, not a silent 0, before a judge is paid to review empty answers
        raise TaskDataError(f"{predictions_file}: none of its {len(records)} predictions has the id of a {task_name} "
                            f"question (e.g. {task.prediction_id(records[0])!r}); is it another task's file?")
    out_dir = output_folder(out_dir)  # after the inputs are known good: a refused command leaves no folder
    metrics = score_predictions(task, options, questions, records, out_dir)
    write_output_file(out_dir / "metrics.json", json_text({"task": task_name, **metrics}))
    write_output_file(out_dir / "metrics.md", metrics_markdown(task_name, metrics))
    return metrics


def pick_device(requested: str | None, ranks: Ranks) -> str:
    """The requested device (default: cuda when there is one); under torchrun each rank takes the GPU
    of its LOCAL_RANK."""
    import os

    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise TaskDataError(f"--device {device!r}: not a device (e.g. cpu, cuda, cuda:1)") from None
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise TaskDataError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices here")
    if device == "cuda" and ranks.world_size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', ranks.rank))}"
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    return device


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object mm-eval wrote (run.json, metrics.json); a damaged or foreign file is an error naming it."""
    try:
        value = parse_json(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, or not JSON
        raise TaskDataError(f"{path}: not a readable {what} ({error})") from None
    return json_object(value, f"{path} ({what})")


def write_output_file(path: str | Path, text: str, option: str = "--out") -> None:
    """Write a file the user named: a folder in its place or a parent that cannot be created is an error."""
    try:
        write_text_atomic(path, text)
    except OSError as error:
        raise TaskDataError(f"{option} {path}: cannot write the file ({error.strerror})") from None


def _check_resumable(out_dir: Path, record: dict) -> None:
    previous_file = out_dir / "run.json"
    if not previous_file.exists():
        return
    previous = read_json_object(previous_file, "run record")
    resume = json_object(previous.get("resume", {}), f"{previous_file} (run record) resume")
    changed = [k for k in RESUME_KEYS if resume.get(k) != record["resume"][k]]
    if changed:
        raise TaskDataError(f"{out_dir} holds a run with different {changed}; use a new --out to keep answers apart")


def run_record(model, dtype, checkpoint: str, task_name: str, options, settings: GenerationSettings, *,
               limit: int | None, device: str, ranks: Ranks, num_questions: int) -> dict:
    """What run.json records: model, task, data, prompt template, generation settings, versions."""
    import mm

    checkpoint_path = str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else checkpoint
    dtype_name = str(dtype).replace("torch.", "")
    return {
        "resume": {"task": task_name, "data": asdict(options), "checkpoint": checkpoint_path,
                   "prompt_template": settings.template, "max_new_tokens": settings.max_new_tokens, "dtype": dtype_name,
                   "sampling": settings.sampling},
        "status": "running", "mm_version": mm.__version__, "command": sys.argv,
        "model": {"checkpoint": checkpoint_path, "config": model.config.to_dict()},
        "task": task_name, "data_files": file_options(options), "data": asdict(options),
        "prompt_template": settings.template,
        "generation": {"greedy": settings.sampling is None, "sampling": settings.sampling, "max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size,
                       "dtype": dtype_name, "device": device, "world_size": ranks.world_size},
        "limit": limit, "num_questions": num_questions,
    }


def run_task(model, dtype, checkpoint: str, task_name: str, options, out_dir: str | Path, settings: GenerationSettings,
             *, limit: int | None = None, device: str = "cpu", ranks: Ranks = Ranks()) -> dict | None:
    """Generate (resuming) and score one task; rank 0 writes run.json and metrics. Returns metrics on rank 0."""
    from eval.runner import Generator, generate_predictions

    out_dir = output_folder(out_dir)
    started = time.time()
    questions = read_questions(task_name, options)
    if limit is not None:
        questions = questions[:limit]
    record = run_record(model, dtype, checkpoint, task_name, options, settings, limit=limit, device=device,
                        ranks=ranks, num_questions=len(questions))
    _check_resumable(out_dir, record)  # every rank, so all stop together
    barrier()
    if ranks.rank == 0:
        # Written before generating, so a crashed run can still be checked when it is resumed.
        write_output_file(out_dir / "run.json", json_text(record))
    timings = generate_predictions(Generator(model, settings, dtype), questions, out_dir, ranks,
                                   model_id=Path(checkpoint).name, task_name=task_name)
    if ranks.rank != 0:
        return None
    metrics = score_task(task_name, options, out_dir / "predictions.jsonl", out_dir, questions=questions)
    record.update({"status": "complete", "timings": {**timings, "wall_seconds": round(time.time() - started, 3)},
                   "metrics_overall": metrics["overall"]})
    write_output_file(out_dir / "run.json", json_text(record))
    return metrics


def find_metrics(run_dir: Path) -> dict[str, dict]:
    """{task: metrics} of a run directory: its own metrics.json or those of its task sub-folders."""
    files = [run_dir / "metrics.json"] if (run_dir / "metrics.json").exists() else sorted(run_dir.glob("*/metrics.json"))
    if not files:
        raise TaskDataError(f"no metrics.json in {run_dir} or its sub-folders")
    found = {}
    for path in files:
        metrics = read_json_object(path, "metrics")
        name = path.parent.name if path.parent != run_dir else metrics.get("task", run_dir.name)
        if not isinstance(name, str):
            raise TaskDataError(f"{path}: not a metrics file of mm-eval (task is {json_text(name, indent=None)[:60].strip()})")
        found[name] = metrics
    return found


def compare_runs(run_dirs: list[str]) -> str:
    """Markdown table: rows are runs, columns are each task's headline metric."""
    return compare_markdown([(str(d), find_metrics(Path(d))) for d in run_dirs])
