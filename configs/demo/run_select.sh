#!/usr/bin/env bash
# `make demo-select`: does scoring and selecting training data help? On the demo's synthetic world with planted
# noise: mm-prep synth --noise -> stage 1 (captions) -> a short "pre-experience" stage 2 on the noisy instructions
# (the scorer, as the IFD paper trains one) -> mm-prep score (loss, ifd, image_reliance) -> AUROC of each score
# against noise.jsonl -> stage 2 on the top fraction by the best score, on an equal-size random fraction, and on
# all of it -> synth_vqa of each. Re-running skips finished steps.
#
# Knobs (environment): SELECT_SEED (training seed, default 0), SELECT_NOISE (planted noise fraction, 0.3),
# SELECT_FRACTION (kept fraction, 0.7), SELECT_NUM_TRAIN (scenes, 6000), SELECT_PRE_STEPS (pre-experience
# steps, 150), SELECT_STAGE1 (a stage-1 export to reuse, e.g. demo_out/stage1/export: the demo's align data is
# the same), SELECT_MAX_STEPS (cut each stage-2 run short; default: the recipe's epochs).
set -euo pipefail

DIR="${1:-select_out}"
SEED="${SELECT_SEED:-0}"
NOISE="${SELECT_NOISE:-0.3}"
FRACTION="${SELECT_FRACTION:-0.7}"
NUM_TRAIN="${SELECT_NUM_TRAIN:-6000}"
PRE_STEPS="${SELECT_PRE_STEPS:-150}"
MAX_STEPS="${SELECT_MAX_STEPS:--1}"
TRAIN_ARGS=()
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../.."
mkdir -p "$DIR"
STAMP_NAME=demo-select
# shellcheck source=configs/demo/common.sh
source configs/demo/common.sh

if [ ! -f "$DIR/synth/synth.json" ]; then
  stamp "mm-prep synth --noise $NOISE -> $DIR/synth"
  mm-prep synth --out "$DIR/synth" --num-train "$NUM_TRAIN" --num-eval 300 --max-objects 2 --noise "$NOISE" \
    --no-ifeval --no-progress
fi
STAGE1="${SELECT_STAGE1:-$DIR/stage1/export}"
if [ -z "${SELECT_STAGE1:-}" ]; then
  train_stage "$DIR/stage1" configs/demo/stage1_captions.yaml "[{\"urls\": \"$DIR/synth/align\"}]"
fi

stage2() {  # name shard_dir [max_steps]
  local saved="$MAX_STEPS"
  MAX_STEPS="${3:-$MAX_STEPS}"
  train_stage "$DIR/$1" configs/demo/stage2_finetune.yaml "[{\"urls\": \"$2\"}]" --model.policy.init_from "$STAGE1"
  MAX_STEPS="$saved"
}

stage2 scorer "$DIR/synth/instruct" "$PRE_STEPS"
if [ ! -f "$DIR/scores.jsonl" ]; then
  stamp "mm-prep score -> $DIR/scores.jsonl"
  mm-prep score "$DIR/synth/instruct" --checkpoint "$DIR/scorer/export" --metrics loss,ifd,image_reliance \
    --out "$DIR/scores.jsonl" --device cpu --batch-size 32 --no-progress
fi
python -m data_prep.curation_report "$DIR/scores.jsonl" "$DIR/synth/noise.jsonl" --json "$DIR/auroc.json"

# The best detector by AUROC decides the selection: keep the samples that look least noisy by it.
read -r BEST ORDER < <(python - "$DIR/auroc.json" <<'PY'
import json, sys
from data_prep.curation_report import NOISIER_WHEN_HIGHER
report = json.load(open(sys.argv[1]))
best = max((m for m in report if report[m]["auroc"] is not None), key=lambda m: report[m]["auroc"])
print(best, "--ascending" if NOISIER_WHEN_HIGHER[best] else "--descending")
PY
)
stamp "best detector: $BEST"
select_arm() {  # name selection options...
  if [ ! -f "$DIR/$1/manifest.json" ]; then
    mm-prep select "$DIR/synth/instruct" --scores "$DIR/scores.jsonl" --out "$DIR/$1" "${@:2}"
  fi
}
if [ "$ORDER" = "--ascending" ]; then
  select_arm top --top "$FRACTION" --by "$BEST" --ascending
else
  select_arm top --top "$FRACTION" --by "$BEST"
fi
select_arm random --random "$FRACTION" --seed "$SEED"

for arm in top random all; do
  shards="$DIR/$arm"
  [ "$arm" = "all" ] && shards="$DIR/synth/instruct"
  stage2 "stage2_$arm" "$shards"
  if [ ! -f "$DIR/eval/$arm/metrics.json" ]; then
    stamp "mm-eval run --task synth_vqa ($arm)"
    mm-eval run --task synth_vqa --checkpoint "$DIR/stage2_$arm/export" --out "$DIR/eval/$arm" --data "$DIR/synth" \
      --device cpu --batch-size 32 --max-new-tokens 8
  fi
done

python - "$DIR" "$BEST" <<'PY'
import json, sys
from pathlib import Path
from data_prep.curation_report import read_jsonl

root, best = Path(sys.argv[1]), sys.argv[2]
noisy = {r["id"] for r in read_jsonl(root / "synth" / "noise.jsonl")}
print(f"\ndetecting the planted noise (AUROC, 0.5 = chance):")
for metric, entry in json.loads((root / "auroc.json").read_text()).items():
    print(f"  {metric:<15} {entry['auroc']}")
print(f"\n{'stage-2 data':<28} {'samples':>8} {'noisy %':>8} {'synth_vqa %':>12}")
for arm, label in (("top", f"top by {best}"), ("random", "random, same size"), ("all", "all (noisy) data")):
    if arm == "all":
        ids = [r["id"] for r in read_jsonl(root / "scores.jsonl")]
    else:
        manifest = json.loads((root / arm / "manifest.json").read_text())
        dropped = {r["id"] for r in read_jsonl(root / arm / "dropped.jsonl")}
        ids = [r["id"] for r in read_jsonl(root / "scores.jsonl") if r["id"] not in dropped]
        assert len(ids) == manifest["num_samples"], (arm, len(ids), manifest["num_samples"])
    accuracy = json.loads((root / "eval" / arm / "metrics.json").read_text())["overall"]
    print(f"{label:<28} {len(ids):>8} {100 * sum(i in noisy for i in ids) / len(ids):>8.1f} {accuracy:>12.1f}")
PY
stamp "done"
