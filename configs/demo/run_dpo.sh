#!/usr/bin/env bash
# `make demo-dpo`: does preference tuning reduce hallucination on the demo? The demo's SFT model (run_demo.sh,
# skipped where done) -> DPO (configs/demo/dpo.yaml) on the synthetic hallucination pairs (synth/pref/: chosen
# faithful, rejected with an object, attribute, count or relation the scene does not have) -> synth_pope
# (F1 and yes-ratio per split) and synth_vqa of the SFT and the DPO model.
#
# Knobs (environment): the demo's (DEMO_SEED, ...), DPO_MAX_STEPS (cut DPO short; default: the recipe's
# epochs), DPO_ARGS (more mm-train options for the DPO stage, e.g. "--model.policy.dpo_beta 0.5"), DPO_RUN (the
# DPO run's folder under DIR, default dpo: one per setting compared).
set -euo pipefail

DIR="${1:-demo_out}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/run_demo.sh" "$DIR"
cd "$HERE/../.."
SEED="${DEMO_SEED:-0}"
MAX_STEPS="${DPO_MAX_STEPS:--1}"
read -r -a TRAIN_ARGS <<< "${DPO_ARGS:-}"
RUN="${DPO_RUN:-dpo}"
STAMP_NAME=demo-dpo
# shellcheck source=configs/demo/common.sh
source configs/demo/common.sh

if [ ! -d "$DIR/synth/pref" ]; then
  echo "demo-dpo: $DIR/synth has no pref/ (made by an older mm-prep synth): remove $DIR/synth and rerun" >&2
  exit 1
fi
train_stage "$DIR/$RUN" configs/demo/dpo.yaml "[{\"urls\": \"$DIR/synth/pref\"}]" \
  --model.policy.init_from "$DIR/stage2/export"

for model in stage2 "$RUN"; do
  for task in synth_pope synth_vqa; do
    if [ ! -f "$DIR/eval_dpo/$model/$task/metrics.json" ]; then
      stamp "mm-eval run --task $task ($model)"
      mm-eval run --task "$task" --checkpoint "$DIR/$model/export" --out "$DIR/eval_dpo/$model/$task" \
        --data "$DIR/synth" --device cpu --batch-size 32 --max-new-tokens 8
    fi
  done
done

python - "$DIR" "$RUN" <<'PY'
import json, sys
from pathlib import Path

root, models = Path(sys.argv[1]) / "eval_dpo", ("stage2", sys.argv[2])
metrics = {model: {task: json.loads((root / model / task / "metrics.json").read_text())
                   for task in ("synth_pope", "synth_vqa")} for model in models}
print(f"\n{'synth_pope / synth_vqa':<26}{'SFT (stage 2)':>15}{models[1]:>18}")
for split in ("random", "popular", "adversarial"):
    for name, key in (("F1 %", "f1"), ("yes-ratio %", "yes_ratio"), ("accuracy %", "accuracy")):
        values = [100 * metrics[m]["synth_pope"]["splits"][split][key] for m in models]
        print(f"{split + ' ' + name:<26}{values[0]:>15.1f}{values[1]:>18.1f}")
values = [metrics[m]["synth_vqa"]["overall"] for m in models]
print(f"{'synth_vqa overall %':<26}{values[0]:>15.1f}{values[1]:>18.1f}")
PY
stamp "done"
