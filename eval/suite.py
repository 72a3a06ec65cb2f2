"""Suites: several tasks from one YAML, one model load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from eval.tasks import TASKS
from eval.tasks.base import TaskDataError, read_text

log = logging.getLogger(__name__)
DATA_PLACEHOLDER = "{data}"


def _substitute(value: Any, data: str | None, where: str) -> Any:
    if isinstance(value, str) and DATA_PLACEHOLDER in value:
        if data is None:
            raise TaskDataError(f"{where} uses {DATA_PLACEHOLDER}; pass --data DIR")
        return value.replace(DATA_PLACEHOLDER, data)
    return value


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message is several lines quoting "<unicode string>"; keep one: where and what."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _run_name(name: Any, where: str) -> str:
    """A task's sub-folder of --out: one plain folder name, so that nothing is written outside --out."""
    if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name) in ("", ".", "..") \
            or any(c in str(name) for c in "/\\\0"):
        raise TaskDataError(f"{where}: name {name!r} must be a plain folder name (no '/', not '..')")
    return str(name)


def load_suite(path: str | Path, data: str | None = None) -> list[tuple[str, str, dict]]:
    """[(run name, task name, task options)] of a suite YAML:

    tasks:
      - task: vqav2            # a registered task
        name: vqav2            # optional sub-folder name (default: the task name)
        questions: /path/...   # the task's data options; "{data}" is replaced by --data
    """
    path = Path(path)
    text = read_text(path, "config")  # a missing file or bytes that are not UTF-8: an error naming it
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TaskDataError(f"{path} (--config): not valid YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise TaskDataError(f"{path} (--config): not a suite: nested too deeply") from None
    entries = spec.get("tasks") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise TaskDataError(f"{path}: expected a mapping with a non-empty 'tasks:' list")
    runs, names = [], set()
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "task" not in entry:
            raise TaskDataError(f"{path}: tasks entry {number} needs a 'task:' key")
        if not isinstance(entry["task"], str) or entry["task"] not in TASKS:
            raise TaskDataError(f"{path}: tasks entry {number}: unknown task {entry['task']!r}; "
                                f"valid tasks: {', '.join(sorted(TASKS))}")
        options = {k: _substitute(v, data, f"{path} entry {number} option {k}") for k, v in entry.items()
                   if k not in ("task", "name")}
        name = _run_name(entry.get("name", entry["task"]), f"{path}: tasks entry {number}")
        if name in names:
            raise TaskDataError(f"{path}: two entries named {name!r}; give one a distinct 'name:'")
        names.add(name)
        runs.append((name, entry["task"], options))
    return runs
