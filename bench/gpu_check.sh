#!/usr/bin/env bash
# The GPU check: on a GPU machine, fresh or not, install mm, run the GPU-only tests, then the benchmarks on
# the GPU, within 8 minutes, every log and the new BENCHMARKS.md figures section written to one folder.
#
#   bash bench/gpu_check.sh [OUT] [--dry-run]    # OUT: the output folder, default gpu_check_out/
#   make gpu-check [GPU_CHECK_OUT=dir]
#   bash bench/gpu_check.sh --fetch-wheels       # here, before a GPU machine that reaches no package registry
#
# Budget: each step is killed at its limit; the limits add up to 480 s (8 minutes).
#    10 s  preflight  nvidia-smi, python, disk: what reading the logs later needs
#   150 s  install    .venv (made on top of $PYTHON's packages, so an image's CUDA torch is used, not
#                     downloaded again), pip install -e '.[dev]', then torch must see a CUDA device
#    40 s  deepspeed  pip install -e '.[deepspeed]'; optional: if it fails, the DeepSpeed test skips
#   120 s  gpu_tests  pytest -m gpu: bf16 parity with transformers' Llava, packing == padding (SDPA; flash-
#                     attention 2 if flash_attn is installed), FSDP and DeepSpeed recipes -> export -> reload
#   160 s  bench      bench/run_all.py --device cuda --quick --write-md for the four device benchmarks (40 s
#                     each, anyres vs single view among them; bench_prep.py is CPU-only); full sizes would not
#                     fit beside the install
#
# OUT gets 8 files (the most the device tool brings back): one log per step, summary.txt (each step's
# limit, seconds and outcome), bench.jsonl (run_all's result lines) and figures.md (the figures section that
# run_all wrote into BENCHMARKS.md). Exit status 0 when install, tests and benchmarks all passed.
#
# Offline machines: when a folder .whl/ exists (--fetch-wheels fills it with the wheels that a CUDA image
# holding torch, transformers, lightning, peft and pytest lacks), pip installs from it and nothing else.
set -u

PYTHON=${PYTHON:-python3}
PY=.venv/bin/python
BUDGET=480
OUT=gpu_check_out
DRY_RUN=0
FETCH=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        --fetch-wheels) FETCH=1 ;;
        -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done
OUT=$(realpath -m "$OUT")  # before the cd: a relative OUT is relative to where the script was started
cd "$(dirname "$0")/.." || exit 1

if [ "$FETCH" = 1 ]; then
    # Pure-Python wheels at the versions this checkout's .venv runs (else the newest), pydantic_core for
    # CPython 3.12 on x86-64 Linux, setuptools (to build mm's editable install offline), and deepspeed,
    # built here (PyPI has no wheel of it).
    names="open_clip_torch webdataset jsonargparse docstring_parser typeshed_client braceexpand ftfy wcwidth
           hjson pydantic pydantic_core annotated_types typing_inspection typing_extensions setuptools"
    pins=$("$PY" -c 'import sys, importlib.metadata as m
for name in sys.argv[1:]:
    try: print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError: print(name)' $names) || exit 1
    mkdir -p .whl
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $pins || exit 1
    "$PY" -m pip wheel --no-deps -w .whl 'deepspeed>=0.15,<0.17' || exit 1
    echo "wheels in .whl/ ($(du -sh .whl | cut -f1)); carry .whl with the tree to the GPU machine"
    exit 0
fi

PIP="$PY -m pip install --progress-bar off"
[ -d .whl ] && PIP="$PIP --no-index --find-links .whl"
# .venv sees $PYTHON's own packages (also when $PYTHON is itself a venv's, as on images with torch in one)
BASE_PTH='import site, sys; v = sys.version_info; print(*site.getsitepackages(), sep="\n", file=open(f".venv/lib/python{v[0]}.{v[1]}/site-packages/gpu_check_base.pth", "w"))'
# (without ensurepip, e.g. a distribution's python, the venv gets no pip of its own and runs $PYTHON's)
MAKE_VENV="{ $PYTHON -m venv --system-site-packages .venv || $PYTHON -m venv --clear --without-pip --system-site-packages .venv; } && $PYTHON -c '$BASE_PTH'"
CUDA_CHECK="import torch; assert torch.cuda.is_available(), 'torch ' + torch.__version__ + ' sees no CUDA device'; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"

# name | limit in seconds | command (run with bash -c, in the repository root, output to OUT/<name>.log)
STEPS=(
    "preflight|10|nvidia-smi; $PYTHON --version; df -h ."
    "install|150|{ test -x $PY || { $MAKE_VENV; }; } && $PIP -e '.[dev]' && $PY -c \"$CUDA_CHECK\""
    "deepspeed|40|$PIP -e '.[deepspeed]' && $PY -c 'import deepspeed; print(\"deepspeed\", deepspeed.__version__)'"
    "gpu_tests|120|$PY -m pytest -m gpu -v -p no:cacheprovider --durations=10"
    "bench|160|$PY bench/run_all.py --device cuda --quick --only bench_train_step.py bench_eval.py bench_dataload.py bench_anyres.py --timeout 40 --write-md --json-out '$OUT/bench.jsonl'; status=\$?; sed -n '/<!-- figures:start/,/<!-- figures:end -->/p' BENCHMARKS.md > '$OUT/figures.md'; exit \$status"
)
OUTPUTS="preflight.log install.log deepspeed.log gpu_tests.log bench.log summary.txt bench.jsonl figures.md"

total=0
for step in "${STEPS[@]}"; do total=$((total + $(cut -d'|' -f2 <<<"$step"))); done

if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check plan: $((${#STEPS[@]})) steps, ${total} s of limits (budget ${BUDGET} s); nothing is run"
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit command <<<"$step"
        printf '%-9s timeout %3s s: %s\n' "$name" "$limit" "$command"
    done
    echo "outputs in $OUT/: $OUTPUTS"
    exit 0
fi

mkdir -p "$OUT" || exit 1
summary="$OUT/summary.txt"
printf '%-9s %5s %7s  %s\n' step limit seconds outcome > "$summary"
failed=0
installed=1
for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit command <<<"$step"
    if [ "$installed" = 0 ] && [ "$name" != preflight ]; then
        outcome="skipped: the install failed"
        seconds=0
    else
        echo "=== $name (timeout ${limit} s): $command"
        start=$SECONDS
        timeout --kill-after=10 "$limit" bash -c "$command" > "$OUT/$name.log" 2>&1
        status=$?
        seconds=$((SECONDS - start))
        tail -n 15 "$OUT/$name.log"
        case $status in
            0) outcome=ok ;;
            124 | 137) outcome="killed at the ${limit} s limit" ;;
            *) outcome="failed (exit status $status)" ;;
        esac
        if [ "$status" != 0 ]; then
            case $name in
                preflight) ;;
                deepspeed) outcome="$outcome: not installed; the DeepSpeed recipe test skips" ;;
                install) installed=0; failed=1 ;;
                *) failed=1 ;;
            esac
        fi
    fi
    printf '%-9s %5s %7s  %s\n' "$name" "$limit" "$seconds" "$outcome" >> "$summary"
done
echo "=== summary ($OUT/summary.txt)"
cat "$summary"
exit "$failed"
