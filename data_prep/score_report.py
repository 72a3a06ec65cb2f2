"""`mm-prep inspect ... --scores SCORES.jsonl`: what the scores of `mm-prep score` look like, so a researcher
can see what a `mm-prep select` filter would remove.

    mm-prep inspect SHARDS --scores SCORES.jsonl [--out DIR] [--metrics a,b] [--n 8]
    mm-prep inspect SCORES.jsonl [--shards SHARDS] [--out DIR] [--metrics a,b] [--n 8]

Writes into --out (default: `<scores stem>_inspect/` beside the scores file):

- `hist_<metric>.png`: a histogram per scalar metric (drawn with Pillow; nulls counted in the title, and
  values no float can draw, infinities or integers beyond float range, counted as `non_finite`);
- `extremes.html` (needs the shards): per metric the N lowest- and N highest-scored samples (ties by key,
  nulls and non-finite values left out) with their images, conversation and score, built from
  `inspect_shards`' contact sheet;
- and prints a line of statistics per metric and the paths written.

With the shards given, scores whose metadata (`SCORES.meta.json`) records another shard set are refused: the
same keys would show other samples.
"""

from __future__ import annotations

import argparse
import html
import io
import math
import re
from pathlib import Path

import numpy as np

from data_prep.inspect_shards import (
    ShardSample,
    contact_sheet_page,
    contact_sheet_rows,
    iter_samples,
)
from data_prep.score.shard_set import SHARD_SET, describe, read_provenance, same_shard_set, shard_set_identity
from data_prep.select import Scores, SelectError, load_scores
from mm.atomic import write_bytes_atomic

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


def finite(value) -> float | None:
    """The value as a float a histogram can place, or None (null, NaN, an infinity, an int beyond float)."""
    try:
        number = float(value)
    except (TypeError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def metric_values(scores: Scores, metric: str) -> tuple[list[float], int, int]:
    """(the finite values, how many nulls, how many non-finite values) of a metric."""
    values = [scores.value(row, metric) for row in scores.rows]
    present = [v for v in values if v is not None]
    drawable = [number for number in map(finite, present) if number is not None]
    return drawable, len(values) - len(present), len(present) - len(drawable)


def metric_stats(values: list[float], nulls: int, non_finite: int = 0) -> dict:
    if not values:
        return {"n": 0, "null": nulls, **({"non_finite": non_finite} if non_finite else {})}
    ordered = np.sort(np.asarray(values, dtype=float))
    q = np.quantile(ordered / 2, [0.05, 0.5, 0.95]) * 2  # halves: exact, and no overflow between -1e308 and 1e308
    try:
        mean = math.fsum(ordered) / len(ordered)  # exact sum: -1e308 and 1e308 cancel, they do not swallow the rest
    except OverflowError:  # the sum itself is beyond float range; the mean is not
        mean = math.fsum(ordered / len(ordered))
    return {"n": len(values), "null": nulls, **({"non_finite": non_finite} if non_finite else {}),
            "min": float(ordered[0]), "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]),
            "max": float(ordered[-1]), "mean": mean}  # fmt: skip


def _fractions(values: list[float], low: float, high: float) -> np.ndarray:
    """Each value's place between low and high as a fraction in [0, 1]. Computed on halves, which scale
    exactly, so that a span beyond float range (-1e308 .. 1e308) stays finite; equal ends: the middle."""
    span = high / 2 - low / 2
    if not span:
        return np.full(len(values), 0.5)
    return np.clip((np.asarray(values, dtype=float) / 2 - low / 2) / span, 0.0, 1.0)


def histogram_png(metric: str, values: list[float], nulls: int, bins: int = 30, non_finite: int = 0) -> bytes:
    """A histogram as PNG bytes: bars, axes, 5 x ticks, the highest count, n / null / median in the title."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    stats = metric_stats(values, nulls, non_finite)
    title = f"{metric}: n={stats['n']}, null={nulls}" + (f", non-finite={non_finite}" if non_finite else "")
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
        counts, edges = np.histogram(_fractions(values, low, high), bins=bins, range=(0.0, 1.0))
        peak = max(int(counts.max()), 1)
        scale_x = x1 - x0
        for count, left, right in zip(counts, edges, edges[1:]):
            if count:
                top = y1 - (y1 - y0) * count / peak
                draw.rectangle([x0 + left * scale_x, top, max(x0 + right * scale_x - 1, x0 + left * scale_x), y1 - 1],
                               fill=(70, 120, 190), outline=(40, 70, 120))  # fmt: skip
        for fraction in np.linspace(0.0, 1.0, 5):
            x = x0 + fraction * scale_x
            draw.line([(x, y1), (x, y1 + 5)], fill="black")
            label = _format(float(low * (1 - fraction) + high * fraction))
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
    """The n lowest (lowest first) and n highest (highest first) (key, value), ties by key, nulls and
    non-finite values left out."""
    scored = [(row["key"], finite(scores.value(row, metric))) for row in scores.rows]
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
    if out.exists() and not out.is_dir():
        raise SelectError(f"--out {out} is a file; it names the report folder")
    paths, report = [], {}
    if shards is not None:
        check_same_shard_set(scores.path, Path(shards))
    for metric in metrics:
        present, nulls, non_finite = metric_values(scores, metric)
        report[metric] = metric_stats(present, nulls, non_finite)
        path = out / f"hist_{_file_name(metric)}.png"
        write_report_file(path, histogram_png(metric, present, nulls, non_finite=non_finite))
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
        page = contact_sheet_page("".join(sections), title=f"mm-prep scores: {scores.path.name}")
        write_report_file(path, page.encode("utf-8"))
        paths.append(str(path))
    report["paths"] = paths
    return report


def check_same_shard_set(scores: Path, shards: Path) -> None:
    """Scores that record their shard set are shown only over that set (keys alone cannot tell two apart)."""
    recorded = read_provenance(scores).get(SHARD_SET)
    if recorded is None:
        return  # written before sets were recorded: the keys are all there is to check
    here = shard_set_identity(shards)
    if not same_shard_set(recorded, here):
        raise SelectError(f"{scores} scores another shard set, {describe(recorded)}, not {describe(here)}; "
                          "its keys would show other samples")  # fmt: skip


def write_report_file(path: Path, data: bytes) -> None:
    try:
        write_bytes_atomic(path, data)
    except OSError as error:  # a file where the folder goes, a read-only folder
        raise SelectError(f"--out {path.parent}: cannot write {path.name} ({error.strerror or error})") from None


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
