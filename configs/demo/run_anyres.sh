#!/usr/bin/env bash
# `make demo-anyres`: does LLaVA-NeXT's anyres help where one 64-px view cannot resolve the answer? The demo's
# synthetic world with the small-detail split (mm-prep synth --detail: 192-384 px images of several aspect ratios
# holding objects under a pixel of the 64-px view) -> the demo's stage 1 (single view, shared) -> its stage 2 twice,
# at the same model size: single view (LLaVA-1.5's pad-and-resize to the tower's 64 px) and anyres (a 64-px view of
# the whole image plus 64-px tiles of the best grid up to 3 x 3, i.e. 192 px) -> synth_detail and synth_vqa of
# both, next to chance and majority. Stage 1 trains on the 64-px captions, stage 2 on the instructions plus the
# detail dialogues. Re-running skips finished steps.
#
# Knobs (environment): ANYRES_SEED (training seed, default 0), ANYRES_NUM_TRAIN (64-px scenes, 6000),
# ANYRES_NUM_DETAIL (detail scenes, default ANYRES_NUM_TRAIN), ANYRES_NUM_EVAL (held-out scenes of each kind,
# 300), ANYRES_MAX_STEPS (cut every stage short; default: the recipes' epochs), ANYRES_PINPOINTS (the anyres
# grids, [height, width] multiples of the tower's 64 px), ANYRES_TRAIN_ARGS (more mm-train options for all
# stages), ANYRES_SINGLE_STAGE1 (a single-view stage-1 export to reuse, e.g. demo_out/stage1/export: the demo's
# captions are the same data, so with the same seed and steps it is the same model), ANYRES_DETAIL_ARGS (more
# mm-prep synth options for the detail split, e.g. "--detail-object-px 1.5 2.0": larger objects).
set -euo pipefail

DIR="${1:-anyres_out}"
SEED="${ANYRES_SEED:-0}"
NUM_TRAIN="${ANYRES_NUM_TRAIN:-6000}"
NUM_DETAIL="${ANYRES_NUM_DETAIL:-$NUM_TRAIN}"
NUM_EVAL="${ANYRES_NUM_EVAL:-300}"
MAX_STEPS="${ANYRES_MAX_STEPS:--1}"
# Every grid of 1-3 x 1-3 tiles but the single tile, as LLaVA-NeXT's list of 2-4-tile grids of its 336-px tower:
# the detail images' long side (192-384 px) lands on 192 px, three times the single view, whatever their shape.
PINPOINTS="${ANYRES_PINPOINTS:-[[64,128],[128,64],[128,128],[64,192],[192,64],[128,192],[192,128],[192,192]]}"
read -r -a TRAIN_ARGS <<< "${ANYRES_TRAIN_ARGS:-}"
read -r -a DETAIL_ARGS <<< "${ANYRES_DETAIL_ARGS:-}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../.."  # the configs name the tiny model's assets relative to the repository root
mkdir -p "$DIR"
STAMP_NAME=demo-anyres
# shellcheck source=configs/demo/common.sh
source configs/demo/common.sh

if [ ! -f "$DIR/synth/synth.json" ]; then
  stamp "mm-prep synth --detail -> $DIR/synth"
  mm-prep synth --out "$DIR/synth" --num-train "$NUM_TRAIN" --num-eval "$NUM_EVAL" --max-objects 2 --detail \
    --num-detail-train "$NUM_DETAIL" --num-detail-eval "$NUM_EVAL" --no-ifeval --no-pref --no-progress "${DETAIL_ARGS[@]}"
elif [ ! -f "$DIR/synth/eval/detail/questions.json" ]; then
  echo "demo-anyres: $DIR/synth has no detail split (made without --detail): remove $DIR/synth and rerun" >&2
  exit 1
fi

ANYRES=(--model.model.image_transform anyres --model.model.image_grid_pinpoints "$PINPOINTS")
STAGE2_SHARDS="[{\"urls\": \"$DIR/synth/instruct\"}, {\"urls\": \"$DIR/synth/detail\"}]"

# Stage 1 (the projector on captions) is single-view for both arms, as LLaVA-NeXT pretrains at one 336-px view;
# the anyres arm's stage 2 starts from it with a freshly initialised image_newline.
STAGE1="${ANYRES_SINGLE_STAGE1:-$DIR/stage1/export}"
if [ -z "${ANYRES_SINGLE_STAGE1:-}" ]; then
  train_stage "$DIR/stage1" configs/demo/stage1_captions.yaml "[{\"urls\": \"$DIR/synth/align\"}]"
fi
for name in single anyres; do
  options=()
  if [ "$name" = anyres ]; then options=("${ANYRES[@]}"); fi
  train_stage "$DIR/stage2_$name" configs/demo/stage2_finetune.yaml "$STAGE2_SHARDS" \
    --model.policy.init_from "$STAGE1" "${options[@]}"
done

for name in single anyres; do
  for task in synth_detail synth_vqa; do
    if [ ! -f "$DIR/eval/$name/$task/metrics.json" ]; then
      stamp "mm-eval run --task $task ($name)"
      mm-eval run --task "$task" --checkpoint "$DIR/stage2_$name/export" --out "$DIR/eval/$name/$task" \
        --data "$DIR/synth" --device cpu --batch-size 32 --max-new-tokens 8
    fi
  done
done

python - "$DIR" <<'PY'
import json, sys
from collections import Counter, defaultdict
from pathlib import Path

root = Path(sys.argv[1])
arms = ("single", "anyres")


def majority(annotations_file: Path) -> dict[str, float]:
    """Accuracy of always giving each question type's most frequent held-out answer."""
    answers = defaultdict(Counter)
    for a in json.loads(annotations_file.read_text())["annotations"]:
        answers[a["question_type"]][a["multiple_choice_answer"]] += 1
    table = {q: 100 * max(c.values()) / sum(c.values()) for q, c in answers.items()}
    total = sum(sum(c.values()) for c in answers.values())
    table["overall"] = 100 * sum(max(c.values()) for c in answers.values()) / total
    return table


for task, annotations in (("synth_detail", "eval/detail/annotations.json"), ("synth_vqa", "eval/vqa/annotations.json")):
    metrics = {arm: json.loads((root / "eval" / arm / task / "metrics.json").read_text()) for arm in arms}
    base = majority(root / "synth" / annotations)
    print(f"\n{task}: accuracy % per question type, single 64-px view vs anyres (same model)")
    print(f"{'question type':<16} {'single':>8} {'anyres':>8} {'chance':>8} {'majority':>9}")
    for qtype, row in sorted(metrics["single"]["vs_chance"].items()):
        values = [metrics[arm]["vs_chance"].get(qtype, {}).get("accuracy", float("nan")) for arm in arms]
        chance = row["chance"] if row["chance"] is not None else float("nan")
        print(f"{qtype:<16} {values[0]:>8.1f} {values[1]:>8.1f} {chance:>8.1f} {base.get(qtype, float('nan')):>9.1f}")
    values = [metrics[arm]["overall"] for arm in arms]
    chance = metrics["single"].get("chance_overall", float("nan"))
    print(f"{'overall':<16} {values[0]:>8.1f} {values[1]:>8.1f} {chance:>8.1f} {base['overall']:>9.1f}")
PY
stamp "done"
