"""DPO training runs on CPU: frozen vs precomputed reference, the demo recipe through `mm-train`, export,
and a two-process run killed mid-epoch and resumed."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import mm
from mm.tiny import tiny_vlm_config
from mm.train.dpo import pair_key
from mm.train.dpo_module import DPOTrainingModule, for_stage
from mm.train.module import VLMTrainingModule
from mm.train.policy import TrainingPolicy
from train_helpers import COLORS, cpu_trainer, png_bytes, recorded_batches_callback, tiny_data, write_shards

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "demo" / "dpo.yaml"
MM_TRAIN = Path(sys.executable).parent / "mm-train"


def pref_record(key: str, color: str) -> dict:
    other = next(name for name in COLORS if name != color)
    meta = {"id": key, "source": "test", "conversations": [{"from": "human", "value": "<image>\nWhat color is it?"}],
            "images": ["img0.png"], "image_sizes": [[12, 8]], "meta": {"color": color},
            "chosen": f"It is {color}.", "rejected": f"It is {other}, and it is a large round shape."}
    return {"json": json.dumps(meta).encode(), "img0.png": png_bytes(COLORS[color])}


def write_pref_shards(directory: Path, sizes: list[int]) -> list[str]:
    return write_shards(directory, sizes, prefix="pref", record=pref_record)


def dpo_module(**policy) -> DPOTrainingModule:
    settings = dict(stage="dpo", lr=1e-3, warmup_ratio=0.0)
    return DPOTrainingModule(tiny_vlm_config(), TrainingPolicy(**{**settings, **policy}))


def run(root: Path, data: Path, steps: int, **policy):
    recorder = recorded_batches_callback()
    module = dpo_module(**policy)
    trainer = cpu_trainer(root, max_steps=steps, callbacks=[recorder])
    trainer.fit(module, datamodule=tiny_data(data, shuffle_buffer=4))
    return recorder, trainer, module


def test_frozen_and_precomputed_reference_give_equal_losses(tmp_path):
    write_pref_shards(tmp_path / "data", [3, 3])  # 6 pairs, batch 2: 3 steps an epoch; 4 steps cross into epoch 1
    frozen, trainer, module = run(tmp_path / "frozen", tmp_path / "data", 4, dpo_reference="model")
    assert module.reference is not None and not any(p.requires_grad for p in module.reference.parameters())
    precomputed, _, module = run(tmp_path / "precomputed", tmp_path / "data", 4, dpo_reference="precomputed")
    assert module.reference is None
    (reference_file,) = (tmp_path / "data").glob("reference_logps-*.json")  # beside the shards
    assert len(json.loads(reference_file.read_text())["logps"]) == 6

    assert frozen.losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference before any step
    assert frozen.losses == pytest.approx(precomputed.losses, abs=1e-5)
    assert len(set(round(loss, 4) for loss in frozen.losses)) > 1  # it trains
    assert [b["keys"] for b in frozen.batches] == [b["keys"] for b in precomputed.batches]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
                 "logps/rejected", "train/loss"):
        assert name in trainer.callback_metrics, name
    batch = frozen.batches[0]
    assert batch["input_ids"].shape[0] == 2 * batch["num_samples"]  # chosen rows, then rejected rows

    # a second precomputed run reads the file: a lower reference log-prob of a rejected answer makes the
    # policy's rejected answer look preferred, and the first loss rises above log 2
    saved = json.loads(reference_file.read_text())
    first = frozen.batches[0]["keys"][0]
    saved["logps"][pair_key(first)][1] -= 5.0
    reference_file.write_text(json.dumps(saved))
    again, _, _ = run(tmp_path / "again", tmp_path / "data", 1, dpo_reference="precomputed")
    assert again.losses[0] > math.log(2) + 1e-3


def test_rpo_term_and_ipo_train(tmp_path):
    write_pref_shards(tmp_path / "data", [4])
    rpo, _, _ = run(tmp_path / "rpo", tmp_path / "data", 1, dpo_sft_weight=1.0)
    assert rpo.losses[0] > math.log(2) + 0.5  # log 2 plus the chosen answers' mean NLL (random model: large)
    ipo, _, _ = run(tmp_path / "ipo", tmp_path / "data", 1, dpo_loss="ipo", dpo_beta=0.5)
    assert ipo.losses[0] == pytest.approx(1.0, abs=1e-6)  # (0 - 1 / (2 * 0.5))^2


def test_dpo_lora_trains_adapters_and_exports_a_plain_model(tmp_path):
    write_pref_shards(tmp_path / "data", [4])
    _, _, module = run(tmp_path / "lora", tmp_path / "data", 2, stage="dpo_lora", lora_r=4, lora_alpha=8)
    trainable = {name for name, param in module.vlm.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("projector.") for name in trainable)
    exported = mm.load_pretrained(tmp_path / "lora" / "export")
    assert not any("lora" in name for name, _ in exported.named_parameters())


def test_the_cli_builds_the_dpo_module_for_preference_stages():
    policy = TrainingPolicy(stage="dpo", dpo_beta=0.3)
    base = VLMTrainingModule(tiny_vlm_config(), policy, export_dir="x", overwrite_export=True)
    module = for_stage(base)
    assert isinstance(module, DPOTrainingModule)
    assert (module.policy, module.export_dir, module.overwrite_export) == (policy, "x", True)
    plain = VLMTrainingModule(tiny_vlm_config(), TrainingPolicy(stage="finetune"))
    assert for_stage(plain) is plain
    with pytest.raises(ValueError, match="dpo_label_smoothing"):
        TrainingPolicy(stage="dpo", dpo_loss="ipo", dpo_label_smoothing=0.1)


def test_fsdp_is_refused_for_dpo():
    from mm.train.strategies import UnsupportedStrategy, check_strategy

    with pytest.raises(UnsupportedStrategy, match="DPO under FSDP"):
        check_strategy("fsdp", TrainingPolicy(stage="dpo"))


# --------------------------------------------------------------------------- the demo recipe through mm-train
def stage2_export(directory: Path, projector: str | None = None) -> Path:
    """An export of the demo recipe's model (with another projector kind if given), standing in for the
    demo's stage-2 export."""
    from mm.config import VLMConfig
    from mm.train.init import build_for_stage

    model = yaml.safe_load(RECIPE.read_text())["model"]["model"]
    if projector:
        model["projector"]["kind"] = projector
    cwd = os.getcwd()
    os.chdir(REPO)  # the recipe names the tiny model's assets relative to the repository root
    try:
        build_for_stage(VLMConfig.from_dict(model), TrainingPolicy(stage="full", init_seed=3)).save_pretrained(directory)
    finally:
        os.chdir(cwd)
    return directory


def mm_train(root: Path, data: Path, init: Path, *, steps: int, devices: int = 1, extra: list[str] = (),
             resume: bool = False) -> subprocess.CompletedProcess:
    command = [
        str(MM_TRAIN), "fit", "--config", str(RECIPE),
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
        "--model.export_dir", str(root / "export"), "--model.policy.init_from", str(init),
        "--data.train_shards", json.dumps([{"urls": str(data)}]), "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.max_length", "256", "--trainer.max_steps", str(steps),
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.devices", str(devices), *extra,
    ]
    if resume:
        command += ["--ckpt_path", "last"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def metrics(root: Path) -> list[list[dict]]:
    runs = sorted((root / "logs").glob("version_*/metrics.csv"), key=lambda path: int(path.parent.name[8:]))
    return [list(csv.DictReader(open(path))) for path in runs]


def step_values(rows: list[dict], name: str) -> dict[int, float]:
    return {int(row["step"]): float(row[name]) for row in rows if row.get(name)}


def test_demo_recipe_through_mm_train_exports_a_loadable_model(tmp_path):
    write_pref_shards(tmp_path / "data", [4, 4])
    init = stage2_export(tmp_path / "stage2" / "export")
    result = mm_train(tmp_path / "run", tmp_path / "data", init, steps=4)
    assert result.returncode == 0, result.stderr[-4000:]
    (rows,) = metrics(tmp_path / "run")
    losses = step_values(rows, "train/loss")
    assert len(losses) == 4 and losses[min(losses)] == pytest.approx(math.log(2), abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
                 "logps/rejected"):
        assert len(step_values(rows, name)) == 4, name
    resolved = yaml.safe_load((tmp_path / "run" / "logs" / "version_0" / "config.yaml").read_text())
    assert resolved["model"]["policy"]["stage"] == "dpo"

    exported, start = mm.load_pretrained(tmp_path / "run" / "export"), mm.load_pretrained(init)
    after, before = dict(exported.named_parameters()), dict(start.named_parameters())
    assert after.keys() == before.keys()
    changed = {name.split(".")[0] for name in after if not torch.equal(after[name], before[name])}
    assert changed == {"projector", "llm"}  # stage dpo: projector + LLM; the tower stays


def test_a_dpo_export_is_evaluated_and_exported_like_any_checkpoint(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from eval.cli import main as eval_main
    from eval.tiny_bench import write_tiny_vqa_benchmark
    from mm.export import main as export_main
    from test_llava_chat_flow import mm_inputs, photo

    write_pref_shards(tmp_path / "data", [4])
    init = stage2_export(tmp_path / "stage2" / "export", projector="mlp2x_gelu")  # the projector hf-llava has
    result = mm_train(tmp_path / "run", tmp_path / "data", init, steps=2,
                      extra=["--model.model.projector.kind", "mlp2x_gelu"])
    assert result.returncode == 0, result.stderr[-4000:]
    export = tmp_path / "run" / "export"

    bench = write_tiny_vqa_benchmark(tmp_path / "bench", num_images=2, questions_per_image=2)
    assert eval_main(["run", "--checkpoint", str(export), "--task", "vqav2", "--out", str(tmp_path / "eval"),
                      "--device", "cpu", "--max-new-tokens", "4", "--image-workers", "1", "--questions",
                      bench["questions"], "--annotations", bench["annotations"], "--image-root", bench["image_root"]]) == 0
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 4
    assert "overall" in json.loads((tmp_path / "eval" / "metrics.json").read_text())

    assert export_main(["hf-llava", str(export), str(tmp_path / "hf")]) == 0
    ours, theirs = mm.load_pretrained(export).eval(), LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ids, pixels = mm_inputs(ours, [{"from": "human", "value": "<image>\nWhat color is it?"}], [photo()])
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids, pixel_values=pixels).logits, ours(ids, pixels).logits,
                                   atol=1e-4, rtol=0)


def test_two_process_dpo_killed_mid_epoch_resumes_the_same_curve(tmp_path):
    # 12 pairs over 2 ranks, batch 2: 3 steps an epoch; checkpoints every 2 steps; killed before step 3
    write_pref_shards(tmp_path / "data", [4, 4, 4])
    init = stage2_export(tmp_path / "stage2" / "export")
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text("trainer:\n  callbacks:\n"
                         "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                         "      init_args: {save_last: true, every_n_train_steps: 2, save_top_k: -1}\n")
    kill = tmp_path / "kill.yaml"
    kill.write_text(callbacks.read_text() + "    - class_path: train_helpers.SigkillAtStep\n"
                                            "      init_args: {step: 3}\n")
    ddp = ["--trainer.strategy", "ddp", "--model.policy.dpo_reference", "precomputed"]
    straight = mm_train(tmp_path / "straight", tmp_path / "data", init, steps=5, devices=2,
                        extra=["--config", str(callbacks), *ddp])
    assert straight.returncode == 0, straight.stderr[-4000:]
    killed = mm_train(tmp_path / "resumed", tmp_path / "data", init, steps=5, devices=2, extra=["--config", str(kill), *ddp])
    assert killed.returncode != 0
    resumed = mm_train(tmp_path / "resumed", tmp_path / "data", init, steps=5, devices=2,
                       extra=["--config", str(callbacks), *ddp], resume=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    (straight_rows,), (killed_rows, resumed_rows) = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    for name in ("train/loss", "rewards/margin", "logps/chosen"):
        expected = step_values(straight_rows, name)
        before, after = step_values(killed_rows, name), step_values(resumed_rows, name)
        assert min(after) == 2 and max(after) == max(expected) == 4
        for step, value in [*before.items(), *after.items()]:
            assert value == pytest.approx(expected[step], abs=1e-5), f"{name} step {step}"
    assert mm.load_pretrained(tmp_path / "resumed" / "export") is not None


# --------------------------------------------------------------------------- validation
def test_validation_reports_the_mean_over_the_validation_pairs(tmp_path):
    from mm.data.shards import ShardSource
    from mm.train.dpo import model_logps, preference_loss
    from mm.train.init import build_reference

    write_pref_shards(tmp_path / "train", [4])  # 2 steps an epoch; validation at its end
    write_pref_shards(tmp_path / "val", [3])  # same file and record names as train: told apart by the folder
    data = tiny_data(tmp_path / "train", val_shards=[ShardSource(str(tmp_path / "val"))])

    # before any step the policy is the reference: every pair's loss is log 2, no reward margin
    module = dpo_module(dpo_reference="precomputed")
    (start,) = cpu_trainer(tmp_path / "validate").validate(module, datamodule=data)
    assert start["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["val/rewards/margin"] == pytest.approx(0.0, abs=1e-6) and start["val/rewards/accuracy"] == 0.0
    (reference_file,) = (tmp_path / "train").glob("reference_logps-*.json")
    assert len(json.loads(reference_file.read_text())["logps"]) == 4 + 3

    # after two steps: the logged figures are the means over the three validation pairs, by hand
    module = dpo_module(dpo_reference="model")
    trainer = cpu_trainer(tmp_path / "fit", max_steps=2)
    trainer.fit(module, datamodule=data)
    reference, losses, margins = build_reference(module.model_config, module.policy), [], []
    module.vlm.eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            if batch["is_padding"]:
                continue
            pixels = module.image_transform.normalize(batch["pixel_values"])
            policy, reference_sums = model_logps(module.vlm, batch, pixels)[0], model_logps(reference, batch, pixels)[0]
            pairs = batch["num_samples"]
            terms = preference_loss(policy[:pairs], policy[pairs:], reference_sums[:pairs], reference_sums[pairs:], beta=0.1)
            losses += terms.losses.tolist()
            margins += (terms.chosen_rewards - terms.rejected_rewards).tolist()
    assert len(losses) == 3
    logged = trainer.callback_metrics
    assert float(logged["val/loss"]) == pytest.approx(sum(losses) / 3, abs=1e-5)
    assert float(logged["val/rewards/margin"]) == pytest.approx(sum(margins) / 3, abs=1e-5)
    assert float(logged["val/rewards/accuracy"]) == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert float(logged["val/loss"]) != pytest.approx(math.log(2), abs=1e-4)  # it trained


def test_precomputed_reference_refuses_two_pairs_under_one_key(tmp_path):
    from mm.data.shards import ShardSource

    write_pref_shards(tmp_path / "a" / "pref", [2])
    write_pref_shards(tmp_path / "b" / "pref", [2])  # the same folder/file#key names as a/pref's
    data = tiny_data(tmp_path / "a" / "pref", val_shards=[ShardSource(str(tmp_path / "b" / "pref"))])
    with pytest.raises(ValueError, match="belong to more than one preference pair"):
        cpu_trainer(tmp_path / "run", max_steps=1).fit(dpo_module(dpo_reference="precomputed"), datamodule=data)
