"""`mm-eval`: run, score, compare and suite commands."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from eval.distributed import Ranks, init_process_group
from eval.predictions import PredictionFileError
from eval.tasks import TASKS, UnknownTaskError, get_task
from eval.tasks.base import TaskDataError, flag
from mm.cli_errors import OneLineParser, run_cli
from mm.hub import CheckpointNotFound

log = logging.getLogger("mm-eval")


def add_task_options(parser: argparse.ArgumentParser, task_name: str) -> None:
    """One --kebab-case flag per field of the task's options dataclass."""
    group = parser.add_argument_group(f"{task_name} data options")
    for f in fields(get_task(task_name).options_type):
        required = f.default is MISSING
        group.add_argument(flag(f.name), dest=f"opt_{f.name}", required=required,
                           default=None if required else f.default, help=f.metadata.get("help", ""))


def task_options_from(args: argparse.Namespace, task_name: str):
    from eval.pipeline import build_options

    values = {f.name: getattr(args, f"opt_{f.name}") for f in fields(get_task(task_name).options_type)}
    return build_options(task_name, values)


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model directory (ours or llava-hf) or hub id")
    parser.add_argument("--out", required=True, help="output folder (re-running resumes it)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per generate call")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--template", default=None, help="chat template (default: the checkpoint's config.chat_template)")
    parser.add_argument("--image-workers", type=int, default=4, help="threads decoding images ahead of generation")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default): greedy, as the benchmarks define; > 0: sampling (e.g. PIF-N-K's N runs)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with a hub checkpoint")


def check_generation_options(args) -> None:
    """Each generation option in its range, before the (slow) model load; argparse took "nan" and "inf" as floats."""
    checks = [("--batch-size", args.batch_size >= 1, "an integer >= 1"),
              ("--max-new-tokens", args.max_new_tokens >= 1, "an integer >= 1"),
              ("--limit", args.limit is None or args.limit >= 0, "an integer >= 0"),
              ("--image-workers", args.image_workers >= 0, "an integer >= 0"),
              ("--temperature", math.isfinite(args.temperature) and args.temperature >= 0,
               "a finite number >= 0 (0: greedy)"),
              ("--top-p", 0 < args.top_p <= 1, "a number in (0, 1]")]
    for option, ok, expected in checks:
        if not ok:
            raise TaskDataError(f"{option} {getattr(args, option[2:].replace('-', '_'))}: expected {expected}")


def _prepare_model(args):
    check_generation_options(args)  # before importing torch: seconds, for a typo
    from eval.pipeline import output_folder, pick_device
    from mm.loading import load_for_inference
    from eval.runner import GenerationSettings

    output_folder(args.out)  # before the (slow) model load
    ranks = Ranks.from_env()
    device = pick_device(args.device, ranks)
    init_process_group(ranks, device)
    model, dtype = load_for_inference(args.checkpoint, device, args.dtype, trust_remote_code=args.trust_remote_code)
    settings = GenerationSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                  template=args.template or model.config.chat_template, image_workers=args.image_workers,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    return model, dtype, settings, device, ranks


def cmd_run(args) -> None:
    from eval.pipeline import run_task

    options = task_options_from(args, args.task)
    model, dtype, settings, device, ranks = _prepare_model(args)
    metrics = run_task(model, dtype, args.checkpoint, args.task, options, args.out, settings,
                       limit=args.limit, device=device, ranks=ranks)
    if metrics is not None:
        print(f"{args.task}: overall {metrics['overall']} (missing {metrics['missing']}) -> {Path(args.out) / 'metrics.md'}")


def cmd_score(args) -> None:
    from eval.pipeline import score_task

    metrics = score_task(args.task, task_options_from(args, args.task), args.predictions, args.out)
    print(f"{args.task}: overall {metrics['overall']} (missing {metrics['missing']}, "
          f"unknown ids {metrics['unknown_ids']}) -> {Path(args.out) / 'metrics.md'}")


def cmd_compare(args) -> None:
    from eval.pipeline import compare_runs, write_output_file

    chart = Path(args.out).with_suffix(".png") if args.out else None
    if chart == Path(args.out or ""):
        raise TaskDataError(f"--out {args.out}: name the table (e.g. .md); the chart goes beside it as .png")
    table = compare_runs(args.run_dirs)
    if args.out:
        write_output_file(args.out, table)
        write_compare_chart(args.run_dirs, chart)
    print(table, end="")


def write_compare_chart(run_dirs: list[str], chart: Path) -> None:
    """The bar chart of every run's overall and per-category scores, per task."""
    from eval.chart import compare_chart
    from eval.pipeline import find_metrics
    from mm.plot import PlotError, save_png

    try:
        save_png(compare_chart([(str(d), find_metrics(Path(d))) for d in run_dirs]), chart)
    except PlotError as error:
        raise TaskDataError(str(error)) from None


def cmd_suite(args) -> None:
    from eval.pipeline import build_options, compare_runs, run_task, write_output_file
    from eval.suite import load_suite

    entries = [(name, task, build_options(task, values, f"{args.config} entry {name!r}"))
               for name, task, values in load_suite(args.config, args.data)]
    model, dtype, settings, device, ranks = _prepare_model(args)
    out = Path(args.out)
    for name, task, options in entries:
        log.info("suite: %s (%s)", name, task)
        run_task(model, dtype, args.checkpoint, task, options, out / name, settings, limit=args.limit,
                 device=device, ranks=ranks)
    if ranks.rank == 0:
        table = compare_runs([str(out)])
        write_output_file(out / "summary.md", table)
        print(table, end="")


def cmd_tasks(args) -> None:
    for name, task in TASKS.items():
        print(f"{name:15s} {task.summary}")


def _task_name(argv: list[str]) -> str | None:
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--task")
    return probe.parse_known_args(argv)[0].task


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mm-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    task_name = _task_name(argv)
    if task_name is not None:
        get_task(task_name)  # unknown names fail here, listing the valid ones
    for command, helptext in (("run", "generate answers for a task and score them"),
                              ("score", "score an existing predictions file")):
        sub = commands.add_parser(command, help=helptext)
        sub.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
        if command == "run":
            add_generation_options(sub)
        else:
            sub.add_argument("--predictions", required=True, help="JSONL in LLaVA's answer format")
            sub.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
        if task_name is not None:
            add_task_options(sub, task_name)
        sub.set_defaults(func=cmd_run if command == "run" else cmd_score)
    compare = commands.add_parser("compare", help="one Markdown table across run folders")
    compare.add_argument("run_dirs", nargs="+")
    compare.add_argument("--out", default=None,
                         help="also write the table to this file, and beside it (same name, .png) a bar chart "
                              "of each task's overall and per-category scores, a bar per run; without --out, "
                              "only the table is printed")
    compare.set_defaults(func=cmd_compare)
    suite = commands.add_parser("suite", help="run the tasks listed in a suite YAML")
    suite.add_argument("--config", required=True, help="suite YAML (see eval/suites/)")
    suite.add_argument("--data", default=None, help="replaces {data} in the suite (mm-prep synth output)")
    add_generation_options(suite)
    suite.set_defaults(func=cmd_suite)
    commands.add_parser("tasks", help="list the tasks").set_defaults(func=cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def run() -> int:
        args = build_parser(argv).parse_args(argv)
        args.func(args)
        return 0

    return run_cli("mm-eval", run, bad_input=(TaskDataError, PredictionFileError, UnknownTaskError, CheckpointNotFound))


if __name__ == "__main__":
    sys.exit(main())
