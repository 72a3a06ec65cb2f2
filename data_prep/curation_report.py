"""How well data scores find planted noise: AUROC of each `mm-prep score` metric against `noise.jsonl`.

    python -m data_prep.curation_report SCORES.jsonl NOISE.jsonl [--json OUT.json]

A metric's AUROC is the probability that a random noisy sample scores "worse" than a random clean one (ties
count one half; Mann-Whitney U / (n_noisy * n_clean)). "Worse" is the direction each metric is meant to
be read in: higher `loss` and `ifd` (the answer is hard to predict from the image and instruction), lower
`image_reliance` and `clip` (the answer does not need or match the image). 0.5 is chance; samples whose
value is null (or not a finite number) are left out of that metric and counted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mm.cli_errors import BadInput, run_cli

PROG = "python -m data_prep.curation_report"

NOISIER_WHEN_HIGHER = {"loss": True, "ifd": True, "image_reliance": False, "clip": False}


def auroc(noisy: list[float], clean: list[float]) -> float:
    """P(noisy > clean) + P(noisy == clean) / 2 over all (noisy, clean) pairs, from ranks (ties averaged)."""
    if not noisy or not clean:
        raise ValueError("AUROC needs at least one noisy and one clean sample")
    values = sorted([(v, 1) for v in noisy] + [(v, 0) for v in clean])
    rank_sum, position = 0.0, 0
    while position < len(values):
        end = position
        while end < len(values) and values[end][0] == values[position][0]:
            end += 1
        average_rank = (position + 1 + end) / 2  # ranks position+1 .. end share their mean
        rank_sum += average_rank * sum(label for _, label in values[position:end])
        position = end
    u = rank_sum - len(noisy) * (len(noisy) + 1) / 2
    return u / (len(noisy) * len(clean))


def read_jsonl(path: str | Path, fields: tuple[str, ...] = ()) -> list[dict]:
    """The JSON objects of a JSON-lines file, each holding `fields`; a bad line is an error naming it."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as error:
        raise BadInput(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise BadInput(f"{path}: not UTF-8 text ({error})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            rows.append(_json_object(path, number, line, fields))
    return rows


def _json_object(path, number: int, line: str, fields: tuple[str, ...]) -> dict:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        raise BadInput(f"{path}:{number}: not JSON ({error})") from None
    if not isinstance(row, dict) or not all(f in row and isinstance(row[f], (str, int, type(None))) for f in fields):
        raise BadInput(f"{path}:{number}: not a JSON object with {' and '.join(fields) or 'fields'} "
                       "(strings, integers or null)")  # fmt: skip
    return row


def _finite(value) -> float | None:
    """A metric value usable in a ranking: a number (not a bool) within float range, else None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def noise_report(scores: list[dict], noise: list[dict]) -> dict:
    """{metric: {"auroc", "auroc_<kind>" per noise kind, "n_noisy", "n_clean", "null"}} for every metric the
    scores have, oriented as NOISIER_WHEN_HIGHER says."""
    kinds = {str(record["id"]): record["kind"] for record in noise}
    unknown = set(kinds) - {str(row["id"]) for row in scores}
    if unknown:
        raise BadInput(f"{len(unknown)} noisy ids have no score line (e.g. {sorted(unknown)[0]}): other shards?")
    report = {}
    for metric, higher in NOISIER_WHEN_HIGHER.items():
        rows = [row for row in scores if metric in row]
        if not rows:
            continue
        sign = 1.0 if higher else -1.0
        usable = [(str(row["id"]), sign * value) for row in rows if (value := _finite(row[metric])) is not None]
        clean = [value for key, value in usable if key not in kinds]
        entry = {"auroc": None, "n_noisy": len(usable) - len(clean), "n_clean": len(clean), "null": len(rows) - len(usable)}
        noisy = [value for key, value in usable if key in kinds]
        if noisy and clean:
            entry["auroc"] = round(auroc(noisy, clean), 4)
            for kind in sorted(set(kinds.values()), key=str):
                subset = [value for key, value in usable if kinds.get(key) == kind]
                entry[f"auroc_{kind}"] = round(auroc(subset, clean), 4) if subset else None
        report[metric] = entry
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", help="mm-prep score output (JSON lines)")
    parser.add_argument("noise", help="noise.jsonl of mm-prep synth --noise")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    try:
        report = noise_report(read_jsonl(args.scores, ("id",)), read_jsonl(args.noise, ("id", "kind")))
    except BadInput as error:
        raise BadInput(str(error) if str(args.scores) in str(error) or str(args.noise) in str(error)
                       else f"{args.scores}, {args.noise}: {error}") from None
    for metric, entry in report.items():
        kinds = "  ".join(f"{k.removeprefix('auroc_')} {v}" for k, v in entry.items() if k.startswith("auroc_"))
        print(f"{metric:<15} AUROC {entry['auroc']}  ({kinds}; {entry['n_noisy']} noisy, {entry['n_clean']} clean, "
              f"{entry['null']} null)")
    if args.json:
        from mm.atomic import write_json_atomic

        try:
            write_json_atomic(args.json, report)
        except OSError as error:
            raise BadInput(f"--json {args.json}: cannot write ({error.strerror or error})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
