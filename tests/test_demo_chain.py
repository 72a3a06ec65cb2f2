"""`make demo`'s chain of recipes (run_demo.sh): DEMO_STAGES puts the contrastive tower stage first, and the
next stage starts from its tower through `--model.policy.init_from`, as any stage starts from the one before;
the run ends with where the time went."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

REPO = Path(__file__).resolve().parents[1]
CHAIN = "configs/demo/tower_contrastive.yaml configs/demo/stage1_captions.yaml configs/demo/stage2_finetune.yaml"


# slow (left out of `make test`): its parts have faster tests there, the tower export taken by `init_from` through
# mm-train (tests/test_train_contrastive.py) and the chain of stage*.yaml with its time accounting through
# run_demo.sh (tests/test_demo_determinism.py); this one runs them together, as `DEMO_STAGES` does
@pytest.mark.slow
@pytest.mark.timeout(600)  # about 80 s on an idle 2-core machine
def test_a_tower_stage_chains_into_the_demo_and_the_time_is_accounted(tmp_path):
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "DEMO_NUM_TRAIN": "48", "DEMO_NUM_EVAL": "12", "DEMO_MAX_STEPS": "2", "DEMO_STAGES": CHAIN,
           "DEMO_TRAIN_ARGS": "--trainer.log_every_n_steps 1 --data.batch_size 8"}
    out = tmp_path / "demo"
    run = subprocess.run(["bash", str(REPO / "configs" / "demo" / "run_demo.sh"), str(out)], env=env,
                         capture_output=True, text=True, timeout=580)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert {"config.json", "model.safetensors"} <= {p.name for p in (out / "tower" / "export").iterdir()}
    tower = safetensors.torch.load_file(out / "tower" / "export" / "model.safetensors")
    stage1 = safetensors.torch.load_file(out / "stage1" / "export" / "model.safetensors")
    # stage 1 trains the tower further (stage full): its first step starts from the contrastive tower, so the
    # exported weights differ from a fresh build's by two steps' worth, not by a new random draw
    key = "embeddings.patch_embedding.weight"
    moved = (stage1[f"vision_tower.model.{key}"] - tower[key]).abs().max()
    assert moved < 0.01  # two Adam steps at warm-up learning rates; two random draws differ by ~0.1
    times = output[output.index("where the time went (seconds):"):]
    for phase in ("data", "tower", "stage1", "stage2", "evaluation", "pictures", "total"):
        assert re.search(rf"^  {phase}\s+\d+$", times, re.MULTILINE), times
    assert (out / "training_curves.png").stat().st_size > 0


# slow: the QK-norm LLM's parts have fast tests (tests/test_checkpoint.py round trip, tests/test_model_forward.py
# loss parity and shape); this one runs it the way README finding 5 does, through run_demo.sh and DEMO_TRAIN_ARGS
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_qk_norm_llm_runs_the_whole_demo_through_demo_train_args(tmp_path):
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "DEMO_NUM_TRAIN": "48", "DEMO_NUM_EVAL": "12", "DEMO_MAX_STEPS": "2",
           "DEMO_TRAIN_ARGS": "--trainer.log_every_n_steps 1 --data.batch_size 8 --model.model.llm.name_or_path mm/assets/configs/qwen3.json"}
    out = tmp_path / "demo"
    run = subprocess.run(["bash", str(REPO / "configs" / "demo" / "run_demo.sh"), str(out)], env=env,
                         capture_output=True, text=True, timeout=580)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    for stage in ("stage1", "stage2"):
        config = json.loads((out / stage / "export" / "mm_config.json").read_text())
        assert config["llm"]["model_config"]["model_type"] == "qwen3", stage
    weights = safetensors.torch.load_file(out / "stage2" / "export" / "model.safetensors")
    assert any(name.endswith("self_attn.q_norm.weight") for name in weights)
    assert (out / "eval" / "synth_vqa" / "metrics.md").is_file()
