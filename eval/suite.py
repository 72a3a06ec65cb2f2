"""Suites: several tasks from one YAML, one model load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from eval.tasks.base import TaskDataError

log = logging.getLogger(__name__)
DATA_PLACEHOLDER = "{data}"


def _substitute(value: Any, data: str | None, where: str) -> Any:
    if isinstance(value, str) and DATA_PLACEHOLDER in value:
        if data is None:
            raise TaskDataError(f"{where} uses {DATA_PLACEHOLDER}; pass --data DIR")
        return value.replace(DATA_PLACEHOLDER, data)
    return value


def load_suite(path: str | Path, data: str | None = None) -> list[tuple[str, str, dict]]:
    """[(run name, task name, task options)] of a suite YAML:

    tasks:
      - task: vqav2            # a registered task
        name: vqav2            # optional sub-folder name (default: the task name)
        questions: /path/...   # the task's data options; "{data}" is replaced by --data
    """
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"suite file not found: {path} (given by --config)")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = spec.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise TaskDataError(f"{path}: expected a non-empty 'tasks:' list")
    runs, names = [], set()
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "task" not in entry:
            raise TaskDataError(f"{path}: tasks entry {number} needs a 'task:' key")
        options = {k: _substitute(v, data, f"{path} entry {number} option {k}") for k, v in entry.items()
                   if k not in ("task", "name")}
        name = str(entry.get("name", entry["task"]))
        if name in names:
            raise TaskDataError(f"{path}: two entries named {name!r}; give one a distinct 'name:'")
        names.add(name)
        runs.append((name, entry["task"], options))
    return runs
