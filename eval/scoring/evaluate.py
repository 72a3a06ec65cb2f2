"""Score a list of prediction records against a task's questions, counting every mismatch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from eval.predictions import id_key
from eval.tasks.base import Question, Task

log = logging.getLogger(__name__)


def score_predictions(task: Task, options: Any, questions: Sequence[Question], records: Sequence[dict],
                      out_dir: Path | None = None) -> dict:
    """Metrics of `task` plus `num_questions`, `answered`, `missing` (questions without a prediction,
    scored as wrong or, for POPE, left out of the confusion counts), `unknown_ids` (predictions for
    no question) and `duplicates` (the first prediction of an id is used)."""
    answers: dict[str, str] = {}
    duplicates = unknown = 0
    wanted = {id_key(q.question_id) for q in questions}
    for record in records:
        key = id_key(task.prediction_id(record))
        if key not in wanted:
            unknown += 1
        elif key in answers:
            duplicates += 1
        else:
            answers[key] = record["text"]
    aligned = [answers.get(id_key(q.question_id)) for q in questions]
    missing = sum(a is None for a in aligned)
    if missing or unknown or duplicates:
        log.warning("%s: %d questions without a prediction, %d predictions for unknown ids, %d duplicates",
                    task.name, missing, unknown, duplicates)
    if task.score_writes_files:
        if out_dir is None:
            raise ValueError(f"task {task.name} keeps files beside its metrics: pass out_dir")
        metrics = task.score(options, questions, aligned, out_dir=Path(out_dir))
    else:
        metrics = task.score(options, questions, aligned)
    counts = {"num_questions": len(questions), "answered": len(questions) - missing, "missing": missing,
              "unknown_ids": unknown, "duplicates": duplicates}
    return {"overall": metrics.pop("overall"), **counts, **metrics}
