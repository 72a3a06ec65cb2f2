"""The bar chart beside `mm-eval compare`'s table: per task, the overall score and one per-category
breakdown (e.g. synth_vqa's accuracy per question type), a bar per run."""

from __future__ import annotations

from numbers import Real

# Which breakdown a task's chart shows when its metrics hold several.
PREFERRED_BREAKDOWNS = ("per_question_type", "per_category", "per_subject", "per_capability")


def _is_score(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def breakdown_name(metrics: dict) -> str | None:
    """The metrics' per-category breakdown to draw: a `per_*` mapping of category -> number."""
    names = [key for key, value in metrics.items() if key.startswith("per_") and isinstance(value, dict)
             and value and all(_is_score(v) for v in value.values())]
    preferred = [name for name in PREFERRED_BREAKDOWNS if name in names]
    return (preferred or names or [None])[0]


def task_bars(task: str, runs: list[tuple[str, dict[str, dict]]]) -> tuple[str, list[str], list[list[float | None]]]:
    """(title, categories, one row of scores per run) of one task; None where a run has no value."""
    names = [breakdown_name(by_task[task]) for _, by_task in runs if task in by_task]
    name = next((n for n in names if n), None)  # the first run's that has one: every run's bars line up
    categories = ["overall"] + list(dict.fromkeys(
        category for _, by_task in runs for category in (by_task.get(task, {}).get(name) or {})))
    rows = []
    for _, by_task in runs:
        metrics = by_task.get(task, {})
        values = {"overall": metrics.get("overall"), **(metrics.get(name) or {})}
        rows.append([values[c] if _is_score(values.get(c)) else None for c in categories])
    title = task if name is None else f"{task}: overall and {name.removeprefix('per_').replace('_', ' ')}"
    return title, categories, rows


def compare_chart(runs: list[tuple[str, dict[str, dict]]]):
    """A matplotlib Figure: one panel per task, grouped bars (a colour per run) over its categories."""
    from matplotlib.figure import Figure  # a bare Figure renders PNG with Agg: no GUI backend, no pyplot state
    from matplotlib.patches import Patch

    tasks = list(dict.fromkeys(task for _, by_task in runs for task in by_task))
    panels = [task_bars(task, runs) for task in tasks]
    widest = max(len(categories) for _, categories, _ in panels)
    figure = Figure(figsize=(max(6.0, 1.0 + widest * (0.35 + 0.25 * len(runs))), 1.0 + 3.2 * len(panels)),
                    layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(runs)
    for ax, (title, categories, rows) in zip(axes, panels):
        for index, row in enumerate(rows):  # colour Cn is run n in every panel, bars or not
            xs = [c + (index - (len(runs) - 1) / 2) * width for c, v in enumerate(row) if v is not None]
            ax.bar(xs, [v for v in row if v is not None], width=width, color=f"C{index % 10}")
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize="small")
        ax.set_xlim(-0.6, widest - 0.4)  # one bar width in every panel
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel("score")
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=f"C{index % 10}", label=label) for index, (label, _) in enumerate(runs)]
    figure.legend(handles=handles, loc="outside upper center", ncols=min(len(runs), 3), fontsize="small")
    return figure
