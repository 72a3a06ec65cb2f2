"""How well data scores find planted noise: AUROC of each `mm-prep score` metric against `noise.jsonl`.

    python -m data_prep.curation_report SCORES.jsonl NOISE.jsonl [--json OUT.json]

A metric's AUROC is the probability that a random noisy sample scores "worse" than a random clean one (ties
count one half; Mann-Whitney U / (n_noisy * n_clean)). "Worse" is the direction each metric is meant to
be read in: higher `loss` and `ifd` (the answer is hard to predict from the image and instruction), lower
`image_reliance` and `clip` (the answer does not need or match the image). 0.5 is chance; samples whose
value is null are left out of that metric and counted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

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


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def noise_report(scores: list[dict], noise: list[dict]) -> dict:
    """{metric: {"auroc", "auroc_<kind>" per noise kind, "n_noisy", "n_clean", "null"}} for every metric the
    scores have, oriented as NOISIER_WHEN_HIGHER says."""
    kinds = {record["id"]: record["kind"] for record in noise}
    unknown = set(kinds) - {str(row["id"]) for row in scores}
    if unknown:
        raise ValueError(f"{len(unknown)} noisy ids have no score line (e.g. {sorted(unknown)[0]}): other shards?")
    report = {}
    for metric, higher in NOISIER_WHEN_HIGHER.items():
        rows = [row for row in scores if metric in row]
        if not rows:
            continue
        usable = [row for row in rows if isinstance(row[metric], (int, float)) and math.isfinite(row[metric])]
        sign = 1.0 if higher else -1.0
        clean = [sign * row[metric] for row in usable if str(row["id"]) not in kinds]
        entry = {"auroc": None, "n_noisy": len(usable) - len(clean), "n_clean": len(clean), "null": len(rows) - len(usable)}
        noisy = [sign * row[metric] for row in usable if str(row["id"]) in kinds]
        if noisy and clean:
            entry["auroc"] = round(auroc(noisy, clean), 4)
            for kind in sorted(set(kinds.values())):
                subset = [sign * row[metric] for row in usable if kinds.get(str(row["id"])) == kind]
                entry[f"auroc_{kind}"] = round(auroc(subset, clean), 4) if subset else None
        report[metric] = entry
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.curation_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", help="mm-prep score output (JSON lines)")
    parser.add_argument("noise", help="noise.jsonl of mm-prep synth --noise")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        report = noise_report(read_jsonl(args.scores), read_jsonl(args.noise))
    except (OSError, ValueError, KeyError) as error:
        print(f"curation_report: error: {error}", file=sys.stderr)
        return 2
    for metric, entry in report.items():
        kinds = "  ".join(f"{k.removeprefix('auroc_')} {v}" for k, v in entry.items() if k.startswith("auroc_"))
        print(f"{metric:<15} AUROC {entry['auroc']}  ({kinds}; {entry['n_noisy']} noisy, {entry['n_clean']} clean, "
              f"{entry['null']} null)")
    if args.json:
        from mm.atomic import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
