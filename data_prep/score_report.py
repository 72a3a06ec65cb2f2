"""`mm-prep inspect ... --scores SCORES.jsonl`: what the scores of `mm-prep score` look like, so a researcher
can see what a `mm-prep select` filter would remove.

    mm-prep inspect SHARDS --scores SCORES.jsonl [--out DIR] [--metrics a,b] [--n 8]
    mm-prep inspect SCORES.jsonl [--shards SHARDS] [--out DIR] [--metrics a,b] [--n 8]

Writes into --out (default: `<scores stem>_inspect/` beside the scores file):

- `hist_<metric>.png`: a histogram per scalar metric (drawn with Pillow; nulls counted in the title);
- `extremes.html` (needs the shards): per metric the N lowest- and N highest-scored samples (ties by key,
  nulls left out) with their images, conversation and score, built from `inspect_shards`' contact sheet;
- and prints a line of statistics per metric and the paths written.
"""

from __future__ import annotations

import argparse
import html
import io
import re
from pathlib import Path

import numpy as np

from data_prep.inspect_shards import (
    ShardSample,
    contact_sheet_page,
    contact_sheet_rows,
    iter_samples,
)
from data_prep.select import Scores, SelectError, load_scores
from mm.atomic import write_bytes_atomic, write_text_atomic

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 24, 44, 56


def add_score_options(inspect: argparse.ArgumentParser) -> None:
    """Options of the score report on the `inspect` subcommand."""
    group = inspect.add_argument_group("scores (mm-prep score output)")
    group.add_argument("--scores", default=None, help="SCORES.jsonl: histograms and lowest/highest samples per metric")
    group.add_argument("--shards", default=None, help="shard directory of the scores (when the positional is SCORES.jsonl)")
    group.add_argument("--out", default=None, help="report folder (default: <scores stem>_inspect/ beside the scores)")
    group.add_argument("--metrics", default=None, help="comma-separated metrics (default: every scalar column)")
    group.add_argument("--n", type=int, default=8, help="lowest and highest samples per metric in the contact sheet")


def wants_score_report(args: argparse.Namespace) -> bool:
    return bool(args.scores) or Path(args.directory).is_file()


def _format(value: float) -> str:
    return f"{value:.4g}"


def metric_stats(values: list[float], nulls: int) -> dict:
    if not values:
        return {"n": 0, "null": nulls}
    ordered = np.sort(np.asarray(values, dtype=float))
    q = np.quantile(ordered, [0.05, 0.5, 0.95])
    return {"n": len(values), "null": nulls, "min": float(ordered[0]), "p5": float(q[0]), "median": float(q[1]),
            "p95": float(q[2]), "max": float(ordered[-1]), "mean": float(ordered.mean())}  # fmt: skip


def histogram_png(metric: str, values: list[float], nulls: int, bins: int = 30) -> bytes:
    """A histogram as PNG bytes: bars, axes, 5 x ticks, the highest count, n / null / median in the title."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    stats = metric_stats(values, nulls)
    title = f"{metric}: n={stats['n']}, null={nulls}"
    if values:
        title += f", median={_format(stats['median'])}, mean={_format(stats['mean'])}"
    draw.text((LEFT, 12), title, fill="black", font=font)
    draw.line([(x0, y1), (x1, y1)], fill="black")
    draw.line([(x0, y0), (x0, y1)], fill="black")
    if not values:
        draw.text(((x0 + x1) // 2 - 40, (y0 + y1) // 2), "no values", fill="gray", font=font)
    else:
        low, high = stats["min"], stats["max"]
        if low == high:
            low, high = low - 0.5, high + 0.5
        counts, edges = np.histogram(values, bins=bins, range=(low, high))
        peak = max(int(counts.max()), 1)
        scale_x = (x1 - x0) / (high - low)
        for count, left, right in zip(counts, edges, edges[1:]):
            if count:
                top = y1 - (y1 - y0) * count / peak
                draw.rectangle([x0 + (left - low) * scale_x, top, max(x0 + (right - low) * scale_x - 1, x0 + (left - low) * scale_x), y1 - 1],
                               fill=(70, 120, 190), outline=(40, 70, 120))  # fmt: skip
        for tick in np.linspace(low, high, 5):
            x = x0 + (tick - low) * scale_x
            draw.line([(x, y1), (x, y1 + 5)], fill="black")
            label = _format(float(tick))
            width = draw.textlength(label, font=font)
            draw.text((min(max(x - width / 2, 0), WIDTH - width), y1 + 8), label, fill="black", font=font)
        draw.text((4, y0 - 7), str(peak), fill="black", font=font)
        draw.text((4, y1 - 7), "0", fill="black", font=font)
        draw.text(((x0 + x1) // 2 - 30, HEIGHT - 22), metric, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric)


def extremes(scores: Scores, metric: str, n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The n lowest (lowest first) and n highest (highest first) (key, value), ties by key, nulls left out."""
    scored = [(row["key"], scores.value(row, metric)) for row in scores.rows]
    scored = [(key, value) for key, value in scored if value is not None]
    lowest = sorted(scored, key=lambda item: (item[1], item[0]))[:n]
    highest = sorted(scored, key=lambda item: (-item[1], item[0]))[:n]
    return lowest, highest


def _read_samples(shards: Path, keys: set[str]) -> dict[str, ShardSample]:
    found = {}
    for sample in iter_samples(shards):
        if sample.key in keys:
            found[sample.key] = sample
    missing = sorted(keys - found.keys())
    if missing:
        raise SelectError(f"{len(missing)} scored samples are not in the shards in {shards} (e.g. {missing[0]!r}); "
                          "are these the scores of another shard set?")  # fmt: skip
    return found


def score_report(scores_path: str | Path, shards: str | Path | None, out: str | Path | None,
                 metrics: list[str] | None = None, n: int = 8) -> dict:  # fmt: skip
    """Write the histograms (and, with shards, the contact sheet); returns {metric: stats, "paths": [...]}."""
    if n < 1:
        raise SelectError(f"--n must be >= 1, got {n}")
    scores = load_scores(scores_path)
    metrics = metrics or scores.columns
    for metric in metrics:
        scores.require_column(metric, "--metrics")
    if not metrics:
        raise SelectError(f"{scores.path}: no scalar score columns to report")
    out = Path(out) if out else scores.path.with_name(f"{scores.path.stem}_inspect")
    paths, report = [], {}
    for metric in metrics:
        values = [scores.value(row, metric) for row in scores.rows]
        present = [float(v) for v in values if v is not None]
        nulls = len(values) - len(present)
        report[metric] = metric_stats(present, nulls)
        path = out / f"hist_{_file_name(metric)}.png"
        write_bytes_atomic(path, histogram_png(metric, present, nulls))
        paths.append(str(path))
    if shards is not None:
        chosen = {metric: extremes(scores, metric, n) for metric in metrics}
        keys = {key for low, high in chosen.values() for key, _ in (*low, *high)}
        samples = _read_samples(Path(shards), keys)
        sections = [f"<h1>{html.escape(str(scores.path))}: lowest and highest {n} per metric</h1>"]
        for metric, (low, high) in chosen.items():
            for label, items in ((f"{len(low)} lowest", low), (f"{len(high)} highest", high)):
                notes = [f"{metric} = {_format(value)}" for _, value in items]
                sections.append(f'<h2 id="{html.escape(_file_name(metric))}-{label.split()[1]}">{html.escape(metric)}: {label}</h2>'
                                f"<table>{contact_sheet_rows([samples[key] for key, _ in items], notes)}</table>")  # fmt: skip
        path = out / "extremes.html"
        write_text_atomic(path, contact_sheet_page("".join(sections), title=f"mm-prep scores: {scores.path.name}"))
        paths.append(str(path))
    report["paths"] = paths
    return report


def cmd_score_report(args: argparse.Namespace) -> None:
    target = Path(args.directory)
    if target.is_file():
        if args.scores and Path(args.scores).resolve() != target.resolve():
            raise SelectError(f"two score files: {target} and --scores {args.scores}")
        scores, shards = target, args.shards
    else:
        if not target.is_dir():
            raise FileNotFoundError(f"{target} is neither a shard directory nor a scores file")
        if args.shards and Path(args.shards).resolve() != target.resolve():
            raise SelectError(f"two shard directories: {target} and --shards {args.shards}")
        scores, shards = args.scores, target
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    report = score_report(scores, shards, args.out, metrics, args.n)
    for metric, stats in report.items():
        if metric != "paths":
            print(f"{metric}: " + ", ".join(f"{k} {_format(v) if isinstance(v, float) else v}" for k, v in stats.items()))
    if shards is None:
        print("(no shards given: contact sheet of the lowest/highest samples skipped; pass --shards DIR)")
    for path in report["paths"]:
        print(path)
