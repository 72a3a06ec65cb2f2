"""Resume through the command line a user types: `mm-train fit --config <shipped recipe>` killed with
SIGKILL mid-epoch, then `--ckpt_path last`, continues the uninterrupted run's loss curve on the same
batches, on one process and on two (DDP over gloo)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from train_helpers import caption_record, write_shards, write_tar

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "demo" / "stage1_captions.yaml"  # sets max_epochs, as every recipe does
MM_TRAIN = Path(sys.executable).parent / "mm-train"

CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: {every}, save_top_k: -1}}
    - class_path: mm.train.sample_log.SampleLog
{kill}"""
KILL = """    - class_path: train_helpers.SigkillAtStep
      init_args: {{step: {step}}}
"""


def write_data(directory: Path, good: int) -> list[str]:
    """`good` caption samples in three shards, plus one whose image is broken (a counted skip)."""
    sizes = [good // 3, good // 3, good - 2 * (good // 3)]
    keys = write_shards(directory, sizes)
    write_tar(directory / "shard-000003.tar", {"broken": {**caption_record("broken"), "img0.png": b"xx"}})
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"].append({"name": "shard-000003.tar", "num_samples": 1})
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return keys


def mm_train(root: Path, data: Path, *, steps: int, every: int, kill_at: int | None = None, devices: int = 1,
             resume: bool = False) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    callbacks = root / ("callbacks-kill.yaml" if kill_at is not None else "callbacks.yaml")
    kill = KILL.format(step=kill_at) if kill_at is not None else ""
    callbacks.write_text(CALLBACKS.format(every=every, kill=kill))
    command = [
        str(MM_TRAIN), "fit", "--config", str(RECIPE), "--config", str(callbacks),
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
        "--model.export_dir", str(root / "export"), "--data.train_shards", json.dumps([{"urls": str(data)}]),
        "--data.batch_size", "2", "--data.shuffle_buffer", "4", "--data.max_length", "64",
        "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.devices", str(devices),
    ]
    if devices > 1:
        # the demo tower's features are its embeddings (select_layer 0): the blocks above get no gradient
        command += ["--trainer.strategy", "ddp_find_unused_parameters_true"]
    if resume:
        command += ["--ckpt_path", "last"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def logged_rows(root: Path) -> list[list[dict]]:
    """The metrics rows of each run under `root` (one logger version folder per run), oldest run first."""
    runs = sorted((root / "logs").glob("version_*/metrics.csv"), key=lambda path: int(path.parent.name[8:]))
    runs_rows = []
    for path in runs:
        with open(path) as file:
            runs_rows.append(list(csv.DictReader(file)))
    return runs_rows


def step_losses(rows: list[dict]) -> dict[int, float]:
    return {int(row["step"]): float(row["train/loss"]) for row in rows if row.get("train/loss")}


def last_counters(rows: list[dict]) -> dict[str, float]:
    counters = [row for row in rows if row.get("skipped/bad_image")]
    return {name: float(value) for name, value in counters[-1].items() if name.startswith("skipped/")}


def trained_batches(root: Path, rank: int) -> dict[int, dict]:
    """Step -> the batch trained at that step; a step trained twice (before the kill, after the resume)
    keeps the later line, as the weights do."""
    lines = (root / "samples" / f"rank{rank}.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


def run_killed_and_resumed(tmp_path: Path, *, steps: int, every: int, kill_at: int, devices: int):
    data = tmp_path / "data"
    keys = write_data(data, good=12)
    straight = mm_train(tmp_path / "straight", data, steps=steps, every=every, devices=devices)
    assert straight.returncode == 0, straight.stderr[-4000:]
    killed = mm_train(tmp_path / "resumed", data, steps=steps, every=every, kill_at=kill_at, devices=devices)
    assert killed.returncode != 0  # SIGKILL
    assert not (tmp_path / "resumed" / "export").exists()
    resumed = mm_train(tmp_path / "resumed", data, steps=steps, every=every, devices=devices, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return keys


def assert_same_run(tmp_path: Path, keys: list[str], *, resumed_from: int, devices: int) -> None:
    (straight_rows,), (killed_rows, resumed_rows) = logged_rows(tmp_path / "straight"), logged_rows(tmp_path / "resumed")
    expected, before, after = step_losses(straight_rows), step_losses(killed_rows), step_losses(resumed_rows)
    assert min(after) == resumed_from  # the resumed run logged from the checkpoint on, not from step 0
    assert max(after) == max(expected)
    for step, loss in [*before.items(), *after.items()]:
        assert loss == pytest.approx(expected[step], abs=1e-6), f"step {step}"
    assert last_counters(resumed_rows) == last_counters(straight_rows)
    assert last_counters(straight_rows)["skipped/bad_image"] == 1.0

    for rank in range(devices):
        want, have = trained_batches(tmp_path / "straight", rank), trained_batches(tmp_path / "resumed", rank)
        assert have.keys() == want.keys()
        for step in want:
            assert (have[step]["epoch"], have[step]["batch"], have[step]["keys"]) == \
                   (want[step]["epoch"], want[step]["batch"], want[step]["keys"]), f"rank {rank} step {step}"
    first_epoch = Counter(key.split("#")[1] for rank in range(devices)
                          for row in trained_batches(tmp_path / "resumed", rank).values()
                          if row["epoch"] == 0 and not row["padding"] for key in row["keys"])
    assert first_epoch == Counter(keys)  # every good sample exactly once


def test_sigkill_mid_epoch_then_ckpt_path_last_continues_the_same_curve(tmp_path):
    # 12 good samples, batch 2, 1 worker: 6 steps an epoch; checkpoints at 3 and 6; killed before step 5;
    # the resumed run starts mid-epoch 0 and crosses into epoch 1.
    keys = run_killed_and_resumed(tmp_path, steps=9, every=3, kill_at=5, devices=1)
    assert_same_run(tmp_path, keys, resumed_from=3, devices=1)
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 9


def test_two_process_sigkill_mid_epoch_then_ckpt_path_last(tmp_path):
    # 13 samples over 2 ranks (6 and 7 with the broken one): 4 steps an epoch, checkpoint at 2, killed at 3.
    keys = run_killed_and_resumed(tmp_path, steps=6, every=2, kill_at=3, devices=2)
    assert_same_run(tmp_path, keys, resumed_from=2, devices=2)


def test_ckpt_path_last_without_a_checkpoint_fails_loudly(tmp_path):
    data = tmp_path / "data"
    write_data(data, good=6)
    (tmp_path / "run" / "logs" / "version_0").mkdir(parents=True)  # an earlier run that saved nothing
    done = mm_train(tmp_path / "run", data, steps=2, every=5, resume=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]  # after Lightning's start-up lines (seed, devices)
    assert error.startswith("mm-train: error: --ckpt_path last: no checkpoint to resume")
    assert "no checkpoint to resume" in done.stderr and str(tmp_path / "run") in done.stderr
    assert not (tmp_path / "run" / "export").exists()


def test_resume_with_another_number_of_ranks_is_one_error_line(tmp_path, capsys):
    from mm.train.cli import main
    from train_helpers import tiny_cli_config

    write_shards(tmp_path / "data", [4])
    config = tmp_path / "run.yaml"
    config.write_text(tiny_cli_config(tmp_path / "run", tmp_path / "data", steps=1, trainer="""  logger: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true}}"""))
    main(["fit", "--config", str(config)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["mm"]["world_size"] == 1 and len(state["mm"]["rng"]) == 1
    state["mm"]["world_size"] = 2  # as if written by a 2-rank run
    torch.save(state, last)
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--ckpt_path", "last"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "written by 2 ranks" in err[-1] and "Traceback" not in "\n".join(err)
