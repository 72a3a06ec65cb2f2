"""What of `bench/gpu_check.sh` can be checked without a GPU: the script parses, its dry run plans every step
within the 8-minute budget and runs nothing, and the `gpu` marker selects the GPU tests while `make test`'s
selection leaves them out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
GPU_FILES = ("tests/test_gpu_numerics.py", "tests/test_gpu_recipes.py")
GPU_TESTS = 6  # bf16 parity x2, packing (sdpa, flash) x2, recipes (fsdp, deepspeed) x2


def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_dry_run_plans_every_step_within_the_budget_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    steps = dict(re.findall(r"^(\w+)\s+timeout\s+(\d+) s: ", done.stdout, re.M))
    assert list(steps) == ["preflight", "install", "deepspeed", "gpu_tests", "bench"]
    assert sum(map(int, steps.values())) <= 480
    commands = done.stdout
    assert re.search(r"pip install .*-e '\.\[dev\]'", commands) and "-e '.[deepspeed]'" in commands
    assert "-m pytest -m gpu" in commands
    assert re.search(r"bench/run_all\.py --device cuda .*--write-md --json-out '" + re.escape(str(out)), commands)
    outputs = re.search(r"^outputs in .*?: (.*)$", done.stdout, re.M).group(1).split()
    assert len(outputs) <= 8  # the device tool brings back at most 8 files
    assert {"summary.txt", "figures.md", "gpu_tests.log", "bench.log"} <= set(outputs)
    assert not out.exists()  # nothing was run or written


def collected(marker: str, *paths: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", marker, *paths], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing selected
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_the_gpu_marker_selects_the_gpu_tests_and_make_test_leaves_them_out():
    make_test = re.search(r'^test:.*\n\t.*pytest .*-m "([^"]+)"', (REPO / "Makefile").read_text(), re.M).group(1)
    assert "gpu" in (REPO / "pyproject.toml").read_text().split("markers")[1].split("]")[0]  # registered
    gpu = collected("gpu", *GPU_FILES, "tests/test_gpu_check.py")
    assert len(gpu) == GPU_TESTS and all(test.startswith(GPU_FILES) for test in gpu)
    assert collected(make_test, *GPU_FILES) == []
    assert collected(make_test, "tests/test_gpu_check.py")  # the CPU tests of the check stay in
