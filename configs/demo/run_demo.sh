#!/usr/bin/env bash
# `make demo`: synthetic data -> stage 1 (captions) -> stage 2 (instructions, from stage 1) -> mm-eval on
# the held-out synthetic splits -> accuracy per question type next to chance. CPU only, tiny model.
# Re-running skips finished steps (each step's output is written atomically when it completes) and resumes
# an interrupted training stage from its last checkpoint.
#
# Knobs (environment): DEMO_SEED (training seed: init, shuffling; default 0), DEMO_NUM_TRAIN / DEMO_NUM_EVAL
# (synthetic scenes, default 6000 / 300), DEMO_MAX_STEPS (cut each stage short; default: the recipes' epochs),
# DEMO_TRAIN_ARGS (more mm-train options for both stages, e.g. "--trainer.log_every_n_steps 1"), DEMO_IFEVAL_TRAIN
# (1, default: stage 2 also trains on the ifeval/ shards, questions under IFEval instructions, at weight 0.5;
# 0: instructions only, the baseline of the ifeval_mm figures in the README), DEMO_STAGES (the recipes to chain,
# default configs/demo/stage*.yaml; e.g. "configs/demo/tower_contrastive.yaml configs/demo/stage1_captions.yaml
# configs/demo/stage2_finetune.yaml" starts from a contrastively trained tower).
set -euo pipefail

DIR="${1:-demo_out}"
SEED="${DEMO_SEED:-0}"
NUM_TRAIN="${DEMO_NUM_TRAIN:-6000}"
NUM_EVAL="${DEMO_NUM_EVAL:-300}"
MAX_STEPS="${DEMO_MAX_STEPS:--1}"
IFEVAL_TRAIN="${DEMO_IFEVAL_TRAIN:-1}"
read -r -a TRAIN_ARGS <<< "${DEMO_TRAIN_ARGS:-}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../.."  # the configs name the tiny model's assets relative to the repository root
mkdir -p "$DIR"
STAMP_NAME=demo
# shellcheck source=configs/demo/common.sh
source configs/demo/common.sh

phase data
if [ -f "$DIR/synth/synth.json" ]; then
  stamp "synthetic data already in $DIR/synth"
else
  stamp "mm-prep synth -> $DIR/synth"
  mm-prep synth --out "$DIR/synth" --num-train "$NUM_TRAIN" --num-eval "$NUM_EVAL" --max-objects 2
fi

# The chain: every configs/demo/stage*.yaml in name order (or the recipes DEMO_STAGES lists), each from the one
# before (init_from its export); stage2* reads the instructions, every other stage the captions. A stage trains
# into DIR/<file name up to the first underscore> (stage2_finetune.yaml -> DIR/stage2).
INSTRUCT_SHARDS="[{\"urls\": \"$DIR/synth/instruct\"}"
if [ "$IFEVAL_TRAIN" = "1" ]; then
  INSTRUCT_SHARDS+=", {\"urls\": \"$DIR/synth/ifeval\", \"weight\": 0.5}"
fi
INSTRUCT_SHARDS+="]"
PREVIOUS=()
STAGE_DIRS=()
read -r -a STAGE_CONFIGS <<< "${DEMO_STAGES:-$(echo configs/demo/stage*.yaml)}"
for config in "${STAGE_CONFIGS[@]}"; do
  stage="$(basename "$config" .yaml)"
  stage="${stage%%_*}"
  case "$stage" in
    stage2*) shards="$INSTRUCT_SHARDS" ;;
    *) shards="[{\"urls\": \"$DIR/synth/align\"}]" ;;
  esac
  phase "$stage"
  train_stage "$DIR/$stage" "$config" "$shards" "${PREVIOUS[@]}"
  PREVIOUS=(--model.policy.init_from "$DIR/$stage/export")
  STAGE_DIRS+=("$DIR/$stage")
done

phase evaluation
for task in synth_vqa synth_mc; do
  stamp "mm-eval run --task $task"
  mm-eval run --task "$task" --checkpoint "$DIR/stage2/export" --out "$DIR/eval/$task" --data "$DIR/synth" \
    --device cpu --batch-size 32 --max-new-tokens 8
done
stamp "mm-eval run --task ifeval_mm"
mm-eval run --task ifeval_mm --checkpoint "$DIR/stage2/export" --out "$DIR/eval/ifeval_mm" \
  --questions "$DIR/synth/eval/ifeval/questions.jsonl" --device cpu --batch-size 32 --max-new-tokens 96

python - "$DIR" <<'PY'
import json, sys
from collections import Counter, defaultdict
from pathlib import Path

root = Path(sys.argv[1])
vqa = json.loads((root / "eval" / "synth_vqa" / "metrics.json").read_text())
# Two baselines: a uniform guess over each program's answers (chance), and always giving the program's most
# frequent held-out answer (majority): an accuracy at the majority figure has learned nothing from the image.
annotations = json.loads((root / "synth" / "eval" / "vqa" / "annotations.json").read_text())["annotations"]
answers = defaultdict(Counter)
for annotation in annotations:
    answers[annotation["question_type"]][annotation["multiple_choice_answer"]] += 1
majority = {qtype: 100 * max(c.values()) / sum(c.values()) for qtype, c in answers.items()}
print("\nsynth_vqa (held-out scenes): accuracy per question type vs two baselines")
print(f"{'question type':<16} {'accuracy %':>10} {'chance %':>9} {'majority %':>11}")
for qtype, row in sorted(vqa["vs_chance"].items()):
    chance = row["chance"] if row["chance"] is not None else float("nan")
    print(f"{qtype:<16} {row['accuracy']:>10.1f} {chance:>9.1f} {majority.get(qtype, float('nan')):>11.1f}")
overall_majority = sum(max(c.values()) for c in answers.values()) / len(annotations) * 100
print(f"{'overall':<16} {vqa['overall']:>10.1f} {vqa.get('chance_overall', float('nan')):>9.1f} {overall_majority:>11.1f}")
mc = json.loads((root / "eval" / "synth_mc" / "metrics.json").read_text())
print(f"\nsynth_mc (4 options, chance 25.0%): accuracy {mc['overall']:.1f}%")
ifeval = json.loads((root / "eval" / "ifeval_mm" / "metrics.json").read_text())
print("\nifeval_mm (held-out scenes under IFEval instructions; PIF over the two-turn records)")
print("  ".join(f"{name} {ifeval[name]:.1f}" for name in
                ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose", "pif")))
PY

phase pictures
# Pictures of the run: both stages' training curves, and the scores per task and category
mm-plot "${STAGE_DIRS[@]}" --out "$DIR/training_curves.png" > /dev/null
mm-eval compare "$DIR/eval" --out "$DIR/eval_scores.md" > /dev/null
stamp "training curves (loss, learning rate, tokens/s): $DIR/training_curves.png"
stamp "evaluation scores per category: $DIR/eval_scores.png (table: $DIR/eval_scores.md)"
stamp "done"
where_the_time_went
