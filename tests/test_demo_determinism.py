"""`make demo`, shortened, twice: the same losses, the same weights, the same scores (run_demo.sh fixes the
thread count and the CPU code paths; the recipes set `deterministic: true`)."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def start_demo(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "DEMO_NUM_TRAIN": "48", "DEMO_NUM_EVAL": "12", "DEMO_MAX_STEPS": "4",
           "DEMO_TRAIN_ARGS": "--trainer.log_every_n_steps 1"}
    return subprocess.Popen(["bash", str(REPO / "configs" / "demo" / "run_demo.sh"), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(out: Path, stage: str) -> list[tuple[int, str]]:
    with open(out / stage / "logs" / "version_0" / "metrics.csv") as file:
        return [(int(row["step"]), row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(900)  # ~2.5 minutes on an idle 2-core machine; far more when the machine is shared
def test_shortened_demo_twice_gives_identical_losses_weights_and_scores(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    demos = [start_demo(out) for out in runs]  # side by side: the thread count is fixed, not the load
    for demo in demos:
        output, _ = demo.communicate(timeout=840)
        assert demo.returncode == 0, output[-4000:]
    assert "synth_vqa (held-out scenes)" in output and "[demo" in output
    assert re.search(r"^step 4/4  loss ", output, re.MULTILINE)  # the progress line without a progress bar
    times = output[output.index("where the time went (seconds):"):]  # one line per phase, in order
    assert re.findall(r"^  (\w+)\s+\d+$", times, re.MULTILINE) == ["data", "stage1", "stage2", "evaluation", "pictures",
                                                                "total"]
    for picture in ("training_curves.png", "eval_scores.png"):  # drawn at the end, their paths printed
        assert (runs[1] / picture).stat().st_size > 0 and str(runs[1] / picture) in output
    a, b = runs
    for stage in ("stage1", "stage2"):
        assert len(losses(a, stage)) == 4
        assert losses(a, stage) == losses(b, stage)  # as logged: every digit
        assert digest(a / stage / "export" / "model.safetensors") == digest(b / stage / "export" / "model.safetensors")
    for task in ("synth_vqa", "synth_mc", "ifeval_mm"):
        assert (a / "eval" / task / "metrics.json").read_text() == (b / "eval" / task / "metrics.json").read_text()
