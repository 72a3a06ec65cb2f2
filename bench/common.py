"""Shared helpers of the benchmark scripts: timing, alternation, tables, machine facts, the JSON line.

Every benchmark compares two paths doing the same work. They run alternately in one process
(A, B, A, B, ...) so that a load spike from whatever else runs on the machine hits both alike; the
first rounds are warmup and left out, and each path's figure is the median of the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Round:
    """One timed run of one path."""

    seconds: float
    """Wall-clock time of the run."""
    counts: dict[str, float]
    """Work done in the run, e.g. {"samples": 8, "tokens": 1234}."""


@dataclass
class PathResult:
    """All measured rounds of one path."""

    name: str
    """Label of the path in the table."""
    rounds: list[Round] = field(default_factory=list)
    """Rounds after warmup."""

    def rate(self, unit: str) -> float:
        """Median of per-round rates of ``unit`` per second."""
        return statistics.median(r.counts[unit] / r.seconds for r in self.rounds)

    def spread(self, unit: str) -> tuple[float, float]:
        """Lowest and highest per-round rate, to show how noisy the median is."""
        rates = [r.counts[unit] / r.seconds for r in self.rounds]
        return min(rates), max(rates)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock time covers it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def alternate(
    paths: dict[str, Callable[[int], dict[str, float]]],
    *,
    rounds: int,
    warmup: int,
    device: str = "cpu",
) -> dict[str, PathResult]:
    """Run each path once per round, in turn; return the rounds after ``warmup``.

    A path is called with the round index (so it can pick that round's batch) and returns the work it
    did; only its own call is timed.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds} warmup={warmup}")
    results = {name: PathResult(name) for name in paths}
    for index in range(warmup + rounds):
        for name, run in paths.items():
            synchronize(device)
            start = time.perf_counter()
            counts = run(index)
            synchronize(device)
            seconds = time.perf_counter() - start
            if index >= warmup:
                results[name].rounds.append(Round(seconds, counts))
    return results


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """Plain-text table with right-aligned numeric columns."""
    cells = [[_format_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


def _format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_name(device: str) -> str:
    """Human-readable name of the device the benchmark ran on."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU: {cpu_model()} ({usable_cores()} cores)"


def versions() -> dict[str, str]:
    """Versions of the libraries whose speed is measured."""
    import PIL
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
    }


def command_line() -> str:
    """The command that reproduces this run, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_text = str(script)
    return shlex.join([".venv/bin/python", script_text, *sys.argv[1:]])


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark script has."""
    parser.add_argument("--quick", action="store_true", help="small sizes; finishes in under 2 minutes on CPU")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per path (default: by mode)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per path (default: by mode)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="after timing, print each path's top cProfile entries")


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op thread count when asked (benchmarks share the machine with other work)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def profile_paths(paths: dict[str, Callable[[int], dict[str, float]]], top: int = 12) -> str:
    """One more untimed run of each path under cProfile; the ``top`` entries by own time, per path.

    Own time of C functions (``{method 'resize' ...}``, ``aten`` ops reached through Python) shows
    which kernel the time goes to; that is what BENCHMARKS.md quotes where a target is missed.
    """
    import cProfile
    import io
    import pstats

    reports = []
    for name, run in paths.items():
        profiler = cProfile.Profile()
        profiler.runcall(run, 0)
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
        body = "\n".join(line for line in stream.getvalue().splitlines() if line.strip())
        reports.append(f"--- profile: {name}\n{body}")
    return "\n".join(reports)


def torch_profile_paths(paths: dict[str, Callable[[int], dict[str, float]]], top: int = 12) -> str:
    """Like ``profile_paths`` with torch.profiler: operator self time, backward included (cProfile misses it)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    import torch

    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    sort_by = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    reports = []
    for name, run in paths.items():
        with profile(activities=activities) as profiler:
            run(0)
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=top, max_name_column_width=60)
        reports.append(f"--- torch.profiler: {name}\n{table}")
    return "\n".join(reports)


REQUIRED_KEYS = ("bench", "ratio", "target", "met", "device", "command")


def emit(result: dict, device: str) -> None:
    """Add the device, versions and command, and print the one JSON line that run_all collects."""
    result.update(device=device_name(device), versions=versions(), command=command_line())
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise KeyError(f"benchmark result lacks {missing}")
    print(json.dumps(result), flush=True)


def parse_result_line(line: str) -> dict | None:
    """The result object on one output line, or None when the line is not a benchmark result."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and "bench" in value else None
