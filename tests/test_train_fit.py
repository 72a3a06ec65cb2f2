"""Training runs on CPU: loss normalisation under accumulation, exact resume, overfitting, export."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import mm
from mm.data.module import target_tokens
from mm.data.shards import ShardSource
from train_helpers import (
    CSV_LOGGER,
    cpu_trainer,
    recorded_batches_callback,
    reference_grads,
    tiny_data,
    tiny_module,
    write_caption_shards,
    tiny_cli_config,
    write_shards,
)

TEXTS = ["A red square.", "A big green square drawn on a white background, in the middle.", "Blue.",
         "A yellow square and, next to it, nothing else at all."]


def test_accumulated_uneven_batches_equal_one_big_batch(tmp_path):
    write_caption_shards(tmp_path / "data", TEXTS, per_shard=4)
    recorder = recorded_batches_callback()
    module = tiny_module()
    trainer = cpu_trainer(tmp_path, max_steps=1, accumulate_grad_batches=2, callbacks=[recorder])
    trainer.fit(module, datamodule=tiny_data(tmp_path / "data", shuffle_buffer=0))
    first, second = recorder.batches
    assert target_tokens(first) != target_tokens(second)  # uneven micro-batches
    reference = tiny_module()
    reference.configure_model()
    expected = reference_grads(reference, [first, second])
    assert expected.keys() == recorder.first_grads.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(recorder.first_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # a mean of per-batch means would give visibly different gradients
    reference.zero_grad()
    for batch in (first, second):
        (reference(batch).loss / 2).backward()
    mean_of_means = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    gaps = [float((mean_of_means[n] - g).abs().max()) for n, g in expected.items()]
    assert max(gaps) > 1e-3


class Killed(Exception):
    pass


def killer(at_batch: int):
    import lightning as L

    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == at_batch:
                raise Killed()

    return Kill()


@pytest.mark.parametrize("every, kill_at", [(3, 5), (4, 6)])  # a checkpoint mid-epoch, and one on its last batch
def test_resume_mid_epoch_continues_the_same_loss_curve(tmp_path, every, kill_at):
    from lightning.pytorch.callbacks import ModelCheckpoint

    write_shards(tmp_path / "data", [2, 2, 1])  # 5 samples: workers of 2 and 3, batch 2: 4 batches, 1 masked
    data = dict(num_workers=2, group_batches=2)
    steps = 9  # into the third epoch

    straight = recorded_batches_callback()
    cpu_trainer(tmp_path / "a", max_steps=steps, callbacks=[straight]).fit(
        tiny_module(), datamodule=tiny_data(tmp_path / "data", **data))

    checkpoints = tmp_path / "b" / "ckpt"

    def run(callbacks, ckpt_path=None):
        saver = ModelCheckpoint(dirpath=checkpoints, save_last=True, every_n_train_steps=every, save_top_k=-1)
        trainer = cpu_trainer(tmp_path / "b", max_steps=steps, callbacks=[*callbacks, saver],
                              enable_checkpointing=True)
        trainer.fit(tiny_module(), datamodule=tiny_data(tmp_path / "data", **data), ckpt_path=ckpt_path)

    first = recorded_batches_callback()
    with pytest.raises(Killed):
        run([first, killer(at_batch=kill_at)])  # killed before the checkpoint after `every`
    assert len(first.losses) == kill_at
    assert [b["is_padding"] for b in straight.batches[:4]] == [False, False, True, False]  # worker 0 pads
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": every}]
    assert saved["state_dict"] and all(k.startswith(("vlm.projector.", "vlm.llm.")) for k in saved["state_dict"])
    resumed = recorded_batches_callback()
    run([resumed], ckpt_path="last")
    assert [b["keys"] for b in resumed.batches] == [b["keys"] for b in straight.batches[every:]]
    assert len(resumed.losses) == steps - every
    torch.testing.assert_close(torch.tensor(first.losses), torch.tensor(straight.losses[:kill_at]))
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(straight.losses[every:]), rtol=1e-4,
                               atol=1e-5)


def test_cli_overfit_loss_falls_and_export_loads(tmp_path):
    from mm.train.cli import main

    write_shards(tmp_path / "data", [4])  # 4 samples, one batch: the model must memorise it
    config = tmp_path / "run.yaml"
    config.write_text(tiny_cli_config(tmp_path / "run", tmp_path / "data", steps=25, lr=3e-3, warmup=0.1,
                                      batch_size=4, trainer="  log_every_n_steps: 1\n" + CSV_LOGGER))
    main(["fit", "--config", str(config)])
    rows = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train/loss")]) for r in rows[1:]
              if r.split(",")[header.index("train/loss")]]
    assert len(losses) == 25
    assert sum(losses[-3:]) / 3 < 0.3 * sum(losses[:3]) / 3
    for column in ("throughput/tokens_per_s", "train/grad_norm", "lr/llm/decay", "skipped/bad_image"):
        assert column in header
    resolved = yaml.safe_load((tmp_path / "run" / "logs" / "version_0" / "config.yaml").read_text())
    assert resolved["model"]["policy"]["stage"] == "finetune"
    exported = mm.load_pretrained(tmp_path / "run" / "export")
    assert json.loads((tmp_path / "run" / "export" / "image_processing.json").read_text())["image_size"] == 64
    assert exported.projector.__class__.__name__ and exported.tokens_per_image == 16


def test_validation_loss_is_the_token_mean_over_the_split(tmp_path):
    write_caption_shards(tmp_path / "val", TEXTS, per_shard=3)
    module = tiny_module()
    data = tiny_data(tmp_path / "val", val_shards=[ShardSource(str(tmp_path / "val"))])
    trainer = cpu_trainer(tmp_path)
    result = trainer.validate(module, datamodule=data)[0]["val/loss"]
    batches = list(data.val_dataloader())
    with torch.no_grad():
        total = sum(float(module(b, num_items_in_batch=1.0).loss) for b in batches)
    assert result == pytest.approx(total / sum(target_tokens(b) for b in batches), rel=1e-5)
    assert sum(len(b["keys"]) for b in batches) == len(TEXTS)


def test_a_padding_only_step_changes_no_weight_and_logs_no_loss(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    write_shards(tmp_path / "data", [2, 2, 1])  # 2 workers of 2 and 3 samples, batch 2: batch 2 is padding

    class Snapshots(L.Callback):
        def __init__(self):
            self.weights, self.padding = [], []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.weights.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})
            self.padding.append(batch["is_padding"])

    snapshots = Snapshots()
    logger = CSVLogger(tmp_path, name="logs", version=0)
    trainer = cpu_trainer(tmp_path, max_steps=4, callbacks=[snapshots], logger=logger, log_every_n_steps=1)
    trainer.fit(tiny_module(weight_decay=0.1), datamodule=tiny_data(tmp_path / "data", num_workers=2))
    assert snapshots.padding == [False, False, True, False]
    before, after = snapshots.weights[1], snapshots.weights[2]
    assert all(torch.equal(before[name], after[name]) for name in before)  # no momentum, no weight decay
    assert any(not torch.equal(after[n], snapshots.weights[3][n]) for n in after)  # the next real step moves
    rows = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = {int(r.split(",")[header.index("step")]): r.split(",")[header.index("train/loss")] for r in rows[1:]
              if r.split(",")[header.index("train/loss")]}
    assert sorted(losses) == [0, 1, 3] and all(float(v) > 0 for v in losses.values())
