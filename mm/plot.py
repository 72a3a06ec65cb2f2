"""`mm-plot`: training curves (loss, learning rate, tokens/s against the optimizer step) of `mm-train` runs.

    mm-plot demo_out/stage1 demo_out/stage2 --out curves.png

A run is a logger folder, `<default_root_dir>/<name>/` with one `version_N/` per start: a resumed run's
versions make one curve, and where they overlap (the steps after the checkpoint were trained twice) the
later version wins. Each version is read from its `metrics.csv`, or from its TensorBoard event files when it
has no CSV. A folder given may hold several runs (e.g. a demo output): each becomes its own line.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mm.atomic import write_bytes_atomic
from mm.cli_errors import run_cli

LOSS, THROUGHPUT = "train/loss", "throughput/tokens_per_s"
PANELS = (("loss", "train loss"), ("lr", "learning rate (largest group)"), ("throughput", "tokens / s"))


class PlotError(ValueError):
    """A run folder without usable logs, or an output that cannot be written: one line, exit 2."""


@dataclass
class Run:
    label: str
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # panel -> {step: value}


def version_key(folder: Path) -> tuple[int, str]:
    match = re.fullmatch(r"version_(\d+)", folder.name)
    return (int(match.group(1)) if match else -1, folder.name)


def find_runs(folder: Path) -> dict[Path, list[Path]]:
    """{logger folder: its version folders, oldest first} under `folder` (which may be one of them)."""
    if not folder.is_dir():
        raise PlotError(f"{folder}: no such folder")
    logs = {path.parent for path in folder.rglob("metrics.csv")}
    logs |= {path.parent for path in folder.rglob("events.out.tfevents.*")}
    runs: dict[Path, list[Path]] = {}
    for version in logs:
        runs.setdefault(version.parent, []).append(version)
    if not runs:
        raise PlotError(f"{folder}: no training logs under it (no metrics.csv or TensorBoard event files)")
    return {root: sorted(versions, key=version_key) for root, versions in sorted(runs.items())}


def read_version(folder: Path) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of one logger version: its CSV, else its TensorBoard events."""
    if (folder / "metrics.csv").is_file():
        return read_csv(folder / "metrics.csv")
    return read_events(folder)


def read_csv(path: Path) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = {}
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            for name, value in row.items():
                if name not in ("step", "epoch") and value not in ("", None):
                    found.setdefault(name, {})[step] = float(value)
    return found


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def panels(metrics: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """The three curves of one version: loss, the largest learning rate of the step, tokens/s."""
    rates: dict[int, float] = {}
    for name, values in metrics.items():
        if name.startswith("lr/") or name == "lr":
            for step, value in values.items():
                rates[step] = max(value, rates.get(step, value))
    return {"loss": metrics.get(LOSS, {}), "lr": rates, "throughput": metrics.get(THROUGHPUT, {})}


def load_run(root: Path, versions: list[Path], label: str) -> Run:
    run = Run(label, {name: {} for name, _ in PANELS})
    for version in versions:  # oldest first: a later start overwrites the steps it trained again
        for name, values in panels(read_version(version)).items():
            run.series[name].update(values)
    if not any(run.series.values()):
        raise PlotError(f"{root}: its logs hold no {LOSS}, lr/* or {THROUGHPUT} values")
    return run


def run_label(root: Path) -> str:
    """The run's folder as the user typed it: the logger folder's parent (the run's default_root_dir)."""
    top = root.parent
    return str(top) if str(top) != "." else top.resolve().name


def load_runs(folders: list[Path]) -> list[Run]:
    runs = []
    for given in folders:
        for root, versions in find_runs(given).items():
            runs.append(load_run(root, versions, run_label(root)))
    return runs


def draw(runs: list[Run]):
    from matplotlib.figure import Figure  # a bare Figure renders PNG with Agg: no GUI backend, no pyplot state

    figure = Figure(figsize=(9, 8.5), layout="constrained")
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for ax, (name, title) in zip(axes, PANELS):
        for run in runs:
            steps = sorted(run.series[name])
            if steps:
                ax.plot(steps, [run.series[name][s] for s in steps], label=run.label, linewidth=1.2)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    axes[-1].set_xlabel("optimizer step")
    axes[0].legend(fontsize="small")
    return figure


def save_png(figure, path: str | Path, option: str = "--out") -> None:
    """Render to memory, then write atomically: a reader never sees half an image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    try:
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as error:
        raise PlotError(f"{option} {path}: cannot write the file ({error.strerror})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (default_root_dir) or folders of runs")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def plot() -> int:
        save_png(draw(load_runs(args.run_dirs)), args.out)
        print(f"wrote {args.out}")
        return 0

    return run_cli("mm-plot", plot, bad_input=(PlotError,))


if __name__ == "__main__":
    sys.exit(main())
