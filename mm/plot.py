"""`mm-plot`: training curves (loss, learning rate, tokens/s against the optimizer step) of `mm-train` runs.

    mm-plot demo_out/stage1 demo_out/stage2 --out curves.png

A run is a logger folder, `<default_root_dir>/<name>/` with one `version_N/` per start: a resumed run's
versions make one curve, and where they overlap (the steps after the checkpoint were trained twice) the
later version wins. Each version is read from its `metrics.csv`, or from its TensorBoard event files when it
has no CSV. A folder given may hold several runs (e.g. a demo output): each becomes its own line.

A row of a `metrics.csv` that cannot be drawn (not UTF-8, not CSV, a step or value that is no finite number
in range) is left out and counted: one line on stderr per file says how many and why. A file that cannot be
read at all, a folder without logs, or an --out that cannot be written is one error line, exit status 2.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mm.atomic import write_bytes_atomic
from mm.cli_errors import OneLineParser, run_cli

LOSS, THROUGHPUT = "train/loss", "throughput/tokens_per_s"
PANELS = (("loss", "train loss"), ("lr", "learning rate (largest group)"), ("throughput", "tokens / s"))
MAX_LINE_BYTES = 1 << 20  # a metrics.csv row is a few hundred bytes; a longer "line" is not one
MAX_STEP = 2**53  # steps beyond this are no longer exact as floats, which is what matplotlib draws with
MAX_MAGNITUDE = 1e100  # no loss, rate or throughput is near it, and matplotlib's axis arithmetic overflows past ~1e300


class PlotError(ValueError):
    """A run folder without usable logs, or an output that cannot be written: one line, exit 2."""


class BadRow(ValueError):
    """A metrics.csv row that cannot be drawn; the message is the reason it is counted under."""


@dataclass
class Run:
    label: str
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # panel -> {step: value}
    skipped: list[str] = field(default_factory=list)  # one note per file with rows left out


def version_key(folder: Path) -> tuple[int, str]:
    match = re.fullmatch(r"version_(\d+)", folder.name)
    return (int(match.group(1)) if match else -1, folder.name)


def find_runs(folder: Path) -> dict[Path, list[Path]]:
    """{logger folder: its version folders, oldest first} under `folder` (which may be one of them)."""
    if not folder.exists():
        raise PlotError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise PlotError(f"{folder}: not a folder (give the run's folder, which holds its logs)")
    logs = {path.parent for path in folder.rglob("metrics.csv") if path.is_file()}
    logs |= {path.parent for path in event_files(folder, recursive=True)}
    runs: dict[Path, list[Path]] = {}
    for version in logs:
        runs.setdefault(version.parent, []).append(version)
    if not runs:
        raise PlotError(f"{folder}: no training logs under it (no metrics.csv or TensorBoard event files)")
    return {root: sorted(versions, key=version_key) for root, versions in sorted(runs.items())}


def event_files(folder: Path, recursive: bool = False) -> list[Path]:
    """TensorBoard event files, oldest first (their names start with the time). Regular files only: a FIFO or
    device of that name would block the reader or never end."""
    found = folder.rglob("events.out.tfevents.*") if recursive else folder.glob("events.out.tfevents.*")
    return sorted(path for path in found if path.is_file())


def is_plotted(name: str) -> bool:
    return name in (LOSS, THROUGHPUT, "lr") or name.startswith("lr/")


def read_version(folder: Path) -> tuple[dict[str, dict[int, float]], str | None]:
    """{metric: {step: value}} of one logger version (its CSV, else its TensorBoard events), and a note
    saying which rows were left out and why (None when none were)."""
    if (folder / "metrics.csv").is_file():
        source = folder / "metrics.csv"
        metrics, skipped = read_csv(source)
    else:
        source = folder / "events.out.tfevents.*"
        metrics, skipped = read_events(folder)
    return metrics, skip_note(source, skipped) if skipped else None


def read_csv(path: Path) -> tuple[dict[str, dict[int, float]], Counter]:
    """The plotted metrics of a metrics.csv, and why the rows left out were left out ({reason: rows})."""
    found: dict[str, dict[int, float]] = {}
    skipped: Counter = Counter()
    try:
        with open(path, "rb") as stream:
            lines = csv_lines(stream)
            header = read_header(path, next(lines, b""))
            for line in lines:
                try:
                    step, values = parse_row(line, header)
                except BadRow as reason:
                    skipped[str(reason)] += 1
                    continue
                for name, value in values.items():
                    found.setdefault(name, {})[step] = value
    except OSError as error:
        raise PlotError(f"{path}: cannot read it ({error.strerror or error})") from None
    return found, skipped


def csv_lines(stream):
    """The file's lines without their line ends, blank ones left out; a line over MAX_LINE_BYTES as None
    (read in pieces, so a file without line breaks does not fill memory)."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # the rest of the long line
                line = stream.readline(MAX_LINE_BYTES)
            yield None
        elif line.strip():
            yield line.rstrip(b"\r\n")


def read_header(path: Path, line: bytes | None) -> list[str]:
    """The column names. A header that is not one CSV line with a `step` column makes the whole file
    unreadable; an empty file has no values, which is no error by itself."""
    if line == b"":
        return []
    try:
        header = split_csv(line if line is None else line.removeprefix(codecs.BOM_UTF8))  # a spreadsheet's UTF-8
    except BadRow as reason:
        raise PlotError(f"{path}: its header line is {reason}") from None
    if "step" not in header:
        raise PlotError(f"{path}: its header has no 'step' column (is it a metrics.csv of mm-train?)")
    return header


def split_csv(line: bytes | None) -> list[str]:
    """The fields of one line. Bytes that are not UTF-8 stay as surrogates, so they spoil only the fields
    they are in, and only a drawn field counts (`number`)."""
    if line is None:
        raise BadRow("too long")
    try:
        return next(csv.reader([line.decode("utf-8", "surrogateescape")], strict=True))  # strict: a stray quote
    except (csv.Error, StopIteration):
        raise BadRow("not CSV") from None


def parse_row(line: bytes | None, header: list[str]) -> tuple[int, dict[str, float]]:
    """(step, {plotted metric: value}) of one row; BadRow when any of them cannot be drawn."""
    fields = split_csv(line)
    if len(fields) != len(header):
        raise BadRow("wrong number of fields")
    row = dict(zip(header, fields))
    if row["step"] == "":
        raise BadRow("no step")
    values = {name: drawable_value(number(text, "value")) for name, text in row.items() if is_plotted(name) and text}
    return drawable_step(number(row["step"], "step")), values


def number(text: str, what: str) -> float:
    try:
        text.encode("utf-8")  # fails on the surrogates split_csv left for bytes that are not UTF-8
    except UnicodeEncodeError:
        raise BadRow("not UTF-8") from None
    try:
        return float(text)
    except ValueError:
        raise BadRow(f"non-numeric {what}") from None


def drawable_step(step: float) -> int:
    if not (math.isfinite(step) and step.is_integer() and 0 <= step <= MAX_STEP):
        raise BadRow("step not a whole number in 0..2**53")
    return int(step)


def drawable_value(value: float) -> float:
    if not math.isfinite(value):  # a diverged run logs nan: counted and named, never drawn as a number
        raise BadRow("nan or infinite value")
    if abs(value) > MAX_MAGNITUDE:
        raise BadRow(f"value beyond ±{MAX_MAGNITUDE:g}")
    return value


def read_events(folder: Path) -> tuple[dict[str, dict[int, float]], Counter]:
    """The plotted scalars of the version's event files, and why the scalars left out were left out.
    TensorBoard's reader stops quietly at a torn or garbled record (a killed run's last one), so such a file
    gives the values before it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    skipped: Counter = Counter()
    for path in event_files(folder):  # oldest first: a later file overwrites the steps it logged again
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every value
        events.Reload()
        for tag in filter(is_plotted, events.Tags()["scalars"]):
            for event in events.Scalars(tag):
                try:
                    found.setdefault(tag, {})[drawable_step(float(event.step))] = drawable_value(event.value)
                except BadRow as reason:
                    skipped[str(reason)] += 1
    return found, skipped


def panels(metrics: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """The three curves of one version: loss, the largest learning rate of the step, tokens/s."""
    rates: dict[int, float] = {}
    for name, values in metrics.items():
        if name.startswith("lr/") or name == "lr":
            for step, value in values.items():
                rates[step] = max(value, rates.get(step, value))
    return {"loss": metrics.get(LOSS, {}), "lr": rates, "throughput": metrics.get(THROUGHPUT, {})}


def skip_note(source: Path, reasons: Counter) -> str:
    """'skipped 3 rows of X: 2 non-numeric value, 1 not UTF-8'."""
    total = sum(reasons.values())
    detail = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    return f"skipped {total} row{'s' if total != 1 else ''} of {source}: {detail}"


def load_run(root: Path, versions: list[Path], label: str) -> Run:
    run = Run(label, {name: {} for name, _ in PANELS})
    for version in versions:  # oldest first: a later start overwrites the steps it trained again
        metrics, note = read_version(version)
        run.skipped += [note] if note else []
        for name, values in panels(metrics).items():
            run.series[name].update(values)
    if not any(run.series.values()):
        notes = f" ({'; '.join(run.skipped)})" if run.skipped else ""
        raise PlotError(f"{root}: its logs hold no {LOSS}, lr/* or {THROUGHPUT} values{notes}")
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
    next(ax for ax in axes if ax.lines).legend(fontsize="small")  # on the top panel with a curve: runs may log no loss
    return figure


def check_out(path: Path, option: str = "--out") -> None:
    """Refuse an --out that cannot become the PNG before reading any log: a folder, another suffix (PNG bytes
    under .jpg would be a lie), a path through a file."""
    if path.is_dir():
        raise PlotError(f"{option} {path}: is a folder; name the PNG file to write in it")
    if path.suffix.lower() != ".png":
        raise PlotError(f"{option} {path}: the file name must end in .png (mm-plot writes a PNG image)")
    folder = next(parent for parent in path.absolute().parents if parent.exists())
    if not folder.is_dir():
        raise PlotError(f"{option} {path}: {folder} is not a folder")


def save_png(figure, path: str | Path, option: str = "--out") -> None:
    """Render to memory, then write atomically: a reader never sees half an image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    try:
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as error:
        raise PlotError(f"{option} {path}: cannot write the file ({error.strerror or error})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mm-plot", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (default_root_dir) or folders of runs")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def plot() -> int:
        check_out(args.out)
        runs = load_runs(args.run_dirs)
        save_png(draw(runs), args.out)
        print(f"wrote {args.out}")
        for note in (note for run in runs for note in run.skipped):  # after the write: an error stays one line
            print(f"mm-plot: {note}", file=sys.stderr)
        return 0

    return run_cli("mm-plot", plot, bad_input=(PlotError,))


if __name__ == "__main__":
    sys.exit(main())
