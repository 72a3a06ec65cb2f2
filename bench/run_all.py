"""Run every benchmark script (as a subprocess), collect their JSON lines, optionally rewrite BENCHMARKS.md.

    .venv/bin/python bench/run_all.py --quick [--device cuda] [--write-md] [--json-out results.jsonl]

A script that is not there yet is reported as missing; one that fails or prints no result line is
reported as failed (and makes the exit status 1). ``--write-md`` replaces only the part of BENCHMARKS.md
between the figure markers, atomically.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mm.atomic import write_text_atomic  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
SCRIPTS = ("bench_dataload.py", "bench_train_step.py", "bench_eval.py", "bench_prep.py", "bench_anyres.py")
CPU_ONLY = ("bench_prep.py",)  # mm-prep is a CPU job: it runs on the CPU whatever --device says
MD_PATH = common.REPO_ROOT / "BENCHMARKS.md"
MD_START = "<!-- figures:start (written by bench/run_all.py --write-md) -->"
MD_END = "<!-- figures:end -->"
SUMMARY_KEYS = ("bench", "ratio", "target", "met", "device", "command")


@dataclass
class Outcome:
    """What running one script gave."""

    script: str
    """File name under bench/."""
    status: str
    """ok, missing, failed or no-result."""
    results: list[dict]
    """The JSON result lines it printed."""
    seconds: float = 0.0
    """Wall-clock time of the script."""
    detail: str = ""
    """Why it failed (the tail of its output)."""


def run_script(script: str, extra_args: list[str], timeout: float) -> Outcome:
    """Run one script, echoing its output as it comes, and pick out its result lines."""
    path = BENCH_DIR / script
    if not path.is_file():
        return Outcome(script, "missing", [], detail=f"{path} does not exist yet")
    command = [sys.executable, str(path), *extra_args]
    print(f"\n=== {' '.join(command)}", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    timed_out = False
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=common.REPO_ROOT) as process:
        reader = threading.Thread(target=_echo, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            process.kill()
            process.wait()
        reader.join()
    seconds = time.perf_counter() - start
    results = [r for r in map(common.parse_result_line, lines) if r is not None]
    tail = "".join(lines[-15:])
    if timed_out:
        return Outcome(script, "failed", results, seconds, f"killed after {timeout:.0f} s (--timeout):\n{tail}")
    if process.returncode != 0:
        return Outcome(script, "failed", results, seconds, f"exit status {process.returncode}:\n{tail}")
    if not results:
        return Outcome(script, "no-result", [], seconds, f"printed no JSON result line:\n{tail}")
    return Outcome(script, "ok", results, seconds)


def _echo(stream, lines: list[str]) -> None:
    for line in stream:
        print(line, end="", flush=True)
        lines.append(line)


def _script_args(args: argparse.Namespace, script: str) -> list[str]:
    extra = ["--quick"] if args.quick else []
    if args.device != "cpu" and script not in CPU_ONLY:
        extra += ["--device", args.device]
    return extra


def summary_table(outcomes: list[Outcome]) -> str:
    """Markdown table: one row per result, then one per script without a result."""
    header = "| bench | ratio | target | met | device | command |\n|---|---|---|---|---|---|"
    rows = []
    for outcome in outcomes:
        for r in outcome.results:
            met = "-" if r["met"] is None else "yes" if r["met"] else "**no**"  # None: a figure without a target
            rows.append(f"| {r['bench']} | {r['ratio']} | {r['target']} | {met} | "
                        f"{r['device']} | `{r['command']}` |")
        if outcome.status != "ok":
            rows.append(f"| {outcome.script} | - | - | {outcome.status} | - | - |")
    return "\n".join([header, *rows])


def details(outcomes: list[Outcome]) -> str:
    """Every figure of every result, as it was printed (the table above has the headline only)."""
    blocks = []
    for outcome in outcomes:
        for r in outcome.results:
            rest = {k: v for k, v in r.items() if k not in SUMMARY_KEYS}
            blocks.append(f"**{r['bench']}** ({outcome.seconds:.0f} s): `{json.dumps(rest)}`")
        if outcome.status != "ok":
            first_line = outcome.detail.splitlines()[0] if outcome.detail else ""
            blocks.append(f"**{outcome.script}**: {outcome.status}. {first_line}")
    return "\n\n".join(blocks)


def figures_section(outcomes: list[Outcome], command: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = common.device_name("cpu")
    versions = ", ".join(f"{k} {v}" for k, v in common.versions().items())
    return "\n\n".join([
        MD_START,
        f"Run {when} with `{command}` on {machine}; {versions}.",
        summary_table(outcomes),
        details(outcomes),
        MD_END,
    ])


def replace_figures(markdown: str, section: str) -> str:
    """The document with the text between the markers (inclusive) replaced; appended if there are none."""
    start, end = markdown.find(MD_START), markdown.find(MD_END)
    if start == -1 and end == -1:
        return markdown.rstrip("\n") + "\n\n" + section + "\n"
    if start == -1 or end < start:
        raise ValueError(f"{MD_PATH.name}: figure markers are broken (need {MD_START!r} before {MD_END!r})")
    return markdown[:start] + section + markdown[end + len(MD_END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="run each script's --quick mode")
    parser.add_argument("--device", default="cpu", help="passed to every script but the CPU-only bench_prep.py")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=None, help="run only these scripts")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per script before it is killed (default: 600 with --quick, else 3600)")
    parser.add_argument("--write-md", action="store_true", help=f"rewrite the figures section of {MD_PATH.name}")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every result line here (JSONL)")
    args = parser.parse_args(argv)
    args.timeout = args.timeout or (600.0 if args.quick else 3600.0)

    outcomes = [run_script(s, _script_args(args, s), args.timeout) for s in (args.only or SCRIPTS)]
    print("\n" + summary_table(outcomes))
    for outcome in outcomes:
        if outcome.status != "ok":
            print(f"\n{outcome.script}: {outcome.status}\n{outcome.detail}")
    if args.json_out:
        write_text_atomic(args.json_out, "".join(json.dumps(r) + "\n" for o in outcomes for r in o.results))
    if args.write_md:
        markdown = MD_PATH.read_text() if MD_PATH.is_file() else "# Benchmarks\n"
        write_text_atomic(MD_PATH, replace_figures(markdown, figures_section(outcomes, common.command_line())))
        print(f"\nwrote the figures section of {MD_PATH}")
    return 1 if any(o.status in ("failed", "no-result") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
