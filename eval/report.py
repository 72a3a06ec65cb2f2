"""JSON and Markdown rendering of metrics and comparisons."""

from __future__ import annotations

import json
from typing import Any


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """`value` as one JSON document and a newline. NaN and Infinity, which json.dumps writes by default and
    strict JSON readers reject, are a ValueError here: a metric that is not a number is a bug to fix, not a
    file for other tools to choke on."""
    try:
        return json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as error:
        raise ValueError(f"refusing to write NaN or Infinity as JSON ({error})") from None


def jsonl_text(rows: list[Any]) -> str:
    """One JSON line per row, with the rule of `json_text`."""
    return "".join(json_text(row, indent=None) for row in rows)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        # Fractions (POPE's, as LLaVA prints them) keep 4 decimals; percentages and totals 2.
        return f"{value:.4f}" if abs(value) <= 1.0 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_markdown(task: str, metrics: dict) -> str:
    """Scalars in one table; each breakdown in its own table (a dict of dicts becomes columns)."""
    scalars = [[key, value] for key, value in metrics.items() if not isinstance(value, dict)]
    parts = [f"# {task}", "", _table(["metric", "value"], scalars)]
    for key, value in metrics.items():
        if not isinstance(value, dict) or not value:
            continue
        parts += ["", f"## {key}", ""]
        if all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(c for v in value.values() for c in v if not isinstance(v[c], dict)))
            rows = [[name] + [v.get(c) for c in columns] for name, v in value.items()]
            parts.append(_table([key] + columns, rows))
        else:
            parts.append(_table([key, "value"], [[k, v] for k, v in value.items()]))
    return "\n".join(parts) + "\n"


def compare_markdown(runs: list[tuple[str, dict[str, dict]]]) -> str:
    """One table: a row per run, a column per task headline (and counts of missing answers)."""
    tasks = list(dict.fromkeys(task for _, by_task in runs for task in by_task))
    header = ["run"] + [f"{task}" for task in tasks]
    rows = []
    for name, by_task in runs:
        row = [name]
        for task in tasks:
            metrics = by_task.get(task)
            if metrics is None:
                row.append(None)
                continue
            cell = _cell(metrics.get("overall"))
            if metrics.get("missing"):
                cell += f" ({metrics['missing']} missing)"
            row.append(cell)
        rows.append(row)
    return _table(header, rows) + "\n"
