# Shared by the demo scripts (run_demo.sh, run_select.sh): sourced after DIR, SEED, MAX_STEPS, the TRAIN_ARGS
# array and STAMP_NAME are set, from the repository root (the configs name the tiny model's assets relative to it).

START=$(date +%s)
stamp() { echo "[$STAMP_NAME $(( $(date +%s) - START ))s] $*"; }

# phase NAME: the time from here to the next phase (or to where_the_time_went) is booked to NAME
PHASES=()
phase() {
  PHASES+=("$1 $(date +%s)")
}
where_the_time_went() {
  local now entry index name started next
  now=$(date +%s)
  echo "where the time went (seconds):"
  for index in "${!PHASES[@]}"; do
    entry="${PHASES[$index]}"
    name="${entry% *}" started="${entry##* }" next="${PHASES[$((index + 1))]:-end $now}"
    printf '  %-12s %6s\n' "$name" "$(( ${next##* } - started ))"
  done
  printf '  %-12s %6s\n' "total" "$(( now - START ))"
}

# The same bits on every run on one machine (not across CPU vendors: README, "The demo"): a fixed thread count, and the AVX2 code
# paths of ATen, MKL (its conditional numerical reproducibility mode) and oneDNN instead of whatever the CPU
# offers. Float results differ in the last bits between those paths, and over thousands of steps the demo
# turns last bits into different models (BENCHMARKS.md, "demo reproducibility"). Set any of them to override.
if [ "$(uname -m)" = "x86_64" ]; then
  export ATEN_CPU_CAPABILITY="${ATEN_CPU_CAPABILITY:-avx2}" MKL_CBWR="${MKL_CBWR:-AVX2}" \
         DNNL_MAX_CPU_ISA="${DNNL_MAX_CPU_ISA:-AVX2}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

# train_stage ROOT CONFIG TRAIN_SHARDS_JSON [mm-train options...]: trains into ROOT (export in ROOT/export),
# skipped when that export exists, resumed from ROOT's last checkpoint when one exists.
train_stage() {
  local root="$1" config="$2" shards="$3" name
  name="$(basename "$1")"
  if [ -f "$root/export/model.safetensors" ]; then
    stamp "$name already trained: $root/export"
    return
  fi
  local resume=()
  if [ -f "$root/checkpoints/last.ckpt" ]; then
    resume=(--ckpt_path last)  # mm-train finds the run's newest last*.ckpt
    stamp "$name: resuming from its last checkpoint"
  fi
  stamp "$name: mm-train fit --config $config"
  mm-train fit --config "$config" \
    --trainer.default_root_dir "$root" --trainer.logger.init_args.save_dir "$root" \
    --trainer.enable_progress_bar false \
    --model.export_dir "$root/export" --data.train_shards "$shards" \
    --seed_everything "$SEED" --model.policy.init_seed "$SEED" --data.seed "$SEED" \
    --trainer.max_steps "$MAX_STEPS" "${TRAIN_ARGS[@]}" "${@:4}" "${resume[@]}"
  stamp "$name: trained"
}
