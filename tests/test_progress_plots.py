"""Progress without a bar, quiet Lightning, and the pictures: `ProgressLines`, the paired CSV/TensorBoard
loggers, `mm-plot` and `mm-eval compare`'s chart."""

from __future__ import annotations

import csv
import importlib
import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from mm.data.shards import ShardSource
from mm.train.progress import ProgressLines, duration
from test_configs import CONFIGS, parse
from train_helpers import CSV_LOGGER, cpu_trainer, tiny_cli_config, tiny_data, tiny_module, write_shards

LINE = re.compile(r"step (\d+)/(\d+)  loss (\d+\.\d{4})  lr (\S+)  \d+ tok/s  elapsed \d+s(  ETA \d+s)?")


def progress_lines(text: str) -> list[re.Match]:
    return [LINE.fullmatch(line) for line in text.splitlines() if line.startswith("step ")]


def logged_losses(path: Path) -> dict[int, str]:
    """{optimizer step: train/loss to 4 decimals} of a metrics.csv (its `step` column counts from 0)."""
    rows = csv.DictReader(open(path))
    return {int(row["step"]) + 1: f"{float(row['train/loss']):.4f}" for row in rows if row["train/loss"]}


def test_progress_lines_every_n_steps_show_the_step_just_trained(tmp_path, capsys):
    from lightning.pytorch.loggers import CSVLogger

    write_shards(tmp_path / "data", [6, 6])
    trainer = cpu_trainer(tmp_path, max_steps=5, log_every_n_steps=1, callbacks=[ProgressLines(every_n_steps=2)],
                          logger=CSVLogger(tmp_path, name="logs", version=0))
    trainer.fit(tiny_module(), datamodule=tiny_data(tmp_path / "data"))
    lines = progress_lines(capsys.readouterr().out)
    assert all(lines), lines
    assert [int(m.group(1)) for m in lines] == [2, 4, 5]  # every 2nd step, and the last one
    assert {m.group(2) for m in lines} == {"5"}
    assert [bool(m.group(5)) for m in lines] == [True, True, False]  # no ETA once done
    losses = logged_losses(tmp_path / "logs" / "version_0" / "metrics.csv")
    assert [m.group(3) for m in lines] == [losses[2], losses[4], losses[5]]  # that step's loss, not the one before
    assert float(lines[0].group(4)) > 0


def test_progress_lines_print_on_global_rank_zero_only(capsys):
    callback = ProgressLines(every_n_steps=1)
    callback._due = 3
    callback._flush(SimpleNamespace(is_global_zero=False))
    assert capsys.readouterr().out == "" and callback._due is None
    with pytest.raises(ValueError):
        ProgressLines(every_n_steps=0)
    assert [duration(s) for s in (5, 62, 3 * 3600 + 310)] == ["5s", "1m02s", "3h05m"]


def test_a_tiny_fit_raises_no_length_or_empty_validation_warning(tmp_path, recwarn):
    write_shards(tmp_path / "data", [4, 4])  # 8 samples, batch 2: 4 batches an epoch
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(tiny_module(), datamodule=tiny_data(tmp_path / "data"))
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "`__len__` defined" in m or "Total length of" in m], messages
    # Lightning still knows the epoch's length (progress totals, epochs, validation intervals use it)
    assert trainer.num_training_batches == 4 and trainer.global_step == 4
    assert trainer.limit_val_batches == 0  # no validation split: validation is off, not an empty loader


def test_validation_still_runs_with_a_validation_split(tmp_path, recwarn):
    write_shards(tmp_path / "data", [4, 4])
    data = tiny_data(tmp_path / "data", val_shards=[ShardSource(str(tmp_path / "data"))])
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(tiny_module(), datamodule=data)
    assert "val/loss" in trainer.callback_metrics and trainer.limit_val_batches == 1.0
    assert not [w for w in recwarn if "`__len__` defined" in str(w.message)]


def test_mm_train_prints_progress_without_a_bar_and_logs_csv_and_tensorboard(tmp_path, capsys):
    from mm.train.cli import main

    write_shards(tmp_path / "data", [4])
    config = tmp_path / "run.yaml"
    config.write_text(tiny_cli_config(tmp_path / "run", tmp_path / "data", steps=3,
                                      trainer="  log_every_n_steps: 1\n" + CSV_LOGGER))
    main(["fit", "--config", str(config)])  # the config switches the progress bar off
    lines = progress_lines(capsys.readouterr().out)
    assert [int(m.group(1)) for m in lines] == [3] and all(lines)  # default interval 50: the last step only
    version = tmp_path / "run" / "logs" / "version_0"
    assert (version / "metrics.csv").is_file() and list(version.glob("events.out.tfevents.*"))
    assert not (tmp_path / "run" / "logs" / "version_1").exists()  # both loggers write the same version


def test_csv_and_tensorboard_false_keeps_the_configured_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from mm.train.cli import make_cli

    config = tmp_path / "run.yaml"
    config.write_text(tiny_cli_config(tmp_path / "run", tmp_path / "data", trainer=CSV_LOGGER))
    for flag, expected in (("true", ["CSVLogger", "TensorBoardLogger"]), ("false", ["CSVLogger"])):
        cli = make_cli(["--config", str(config), "--csv_and_tensorboard", flag], run=False)
        assert [type(logger).__name__ for logger in cli.trainer.loggers] == expected
        assert isinstance(cli.trainer.loggers[0], CSVLogger)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_logs_csv_and_tensorboard(path, tmp_path):
    from mm.train.cli import pair_csv_and_tensorboard

    spec = parse(path).trainer.logger
    module, _, name = spec.class_path.rpartition(".")
    logger = getattr(importlib.import_module(module), name)(**{**dict(spec.init_args), "save_dir": str(tmp_path)})
    trainer = SimpleNamespace(loggers=[logger])
    pair_csv_and_tensorboard(trainer)
    assert sorted(type(logger).__name__ for logger in trainer.loggers) == ["CSVLogger", "TensorBoardLogger"]
    assert len({logger.log_dir for logger in trainer.loggers}) == 1


def test_trained_parts_train_in_train_mode_and_only_the_dpo_reference_stays_in_eval(tmp_path, monkeypatch):
    import lightning as L

    import mm.train.module
    from mm.train.dpo_module import DPOTrainingModule
    from mm.train.init import build_for_stage
    from mm.train.module import VLMTrainingModule
    from mm.train.policy import TrainingPolicy
    from test_train_dpo_fit import write_pref_shards
    from mm.tiny import tiny_vlm_config

    def as_from_pretrained(*args, **kwargs):  # from_pretrained hands models over in eval mode
        return build_for_stage(*args, **kwargs).eval()

    monkeypatch.setattr(mm.train.module, "build_for_stage", as_from_pretrained)
    modes = {}

    class Modes(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            modes["eval"] = [name for name, part in module.vlm.named_modules() if not part.training]
            reference = getattr(module, "reference", None)
            modes["reference_training"] = None if reference is None else any(p.training for p in reference.modules())

    write_shards(tmp_path / "sft", [4])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sft = VLMTrainingModule(tiny_vlm_config(), TrainingPolicy(stage="lora", lr=1e-3, lora_r=2, lora_dropout=0.1))
        cpu_trainer(tmp_path / "a", max_steps=1, callbacks=[Modes()]).fit(sft, datamodule=tiny_data(tmp_path / "sft"))
    assert modes["eval"] == []  # LoRA's dropout among them
    assert not any("in eval mode" in str(w.message) for w in caught)

    write_pref_shards(tmp_path / "pref", [4])
    dpo = DPOTrainingModule(tiny_vlm_config(), TrainingPolicy(stage="dpo", lr=1e-3))
    cpu_trainer(tmp_path / "b", max_steps=1, callbacks=[Modes()]).fit(dpo, datamodule=tiny_data(tmp_path / "pref"))
    assert modes["eval"] == [] and modes["reference_training"] is False


# ----------------------------------------------------------------- mm-plot
def write_metrics(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = ["epoch", "step", "lr/llm/decay", "lr/projector/decay", "throughput/tokens_per_s", "train/loss"]
    with open(folder / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, names)
        writer.writeheader()
        writer.writerows(rows)


def rows(steps, loss) -> list[dict]:
    return [{"epoch": 0, "step": s, "lr/llm/decay": 1e-4, "lr/projector/decay": 1e-3,
             "throughput/tokens_per_s": 900.0, "train/loss": loss(s)} for s in steps]


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_mm_plot_draws_a_resumed_run_as_one_curve(tmp_path, capsys):
    from mm.plot import load_runs, main

    write_metrics(tmp_path / "a" / "logs" / "version_0", rows(range(0, 10), lambda s: 5.0 - s * 0.1))
    write_metrics(tmp_path / "a" / "logs" / "version_1", rows(range(6, 15), lambda s: 9.0))  # resumed at 6
    write_metrics(tmp_path / "b" / "logs" / "version_0", rows(range(0, 5), lambda s: 2.0))
    (run_a,) = load_runs([tmp_path / "a"])
    assert sorted(run_a.series["loss"]) == list(range(15))
    assert run_a.series["loss"][5] == pytest.approx(4.5) and run_a.series["loss"][6] == 9.0  # the later start wins
    assert set(run_a.series["lr"].values()) == {1e-3}  # the largest group's rate
    assert [run.label for run in load_runs([tmp_path])] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "fig.png")]) == 0
    assert_png(tmp_path / "fig.png")
    assert "fig.png" in capsys.readouterr().out


def test_mm_plot_reads_tensorboard_events_without_a_csv(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from mm.plot import load_runs, main

    logger = TensorBoardLogger(tmp_path / "run", name="tb", version=0, default_hp_metric=False)
    for step in range(4):
        logger.log_metrics({"train/loss": 3.0 - step, "lr/projector/decay": 0.01, "throughput/tokens_per_s": 50.0},
                           step=step)
    logger.finalize("success")
    (run,) = load_runs([tmp_path / "run"])
    assert run.series["loss"] == {0: 3.0, 1: 2.0, 2: 1.0, 3: 0.0} and run.label == str(tmp_path / "run")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "tb.png")]) == 0
    assert_png(tmp_path / "tb.png")


def test_mm_plot_on_a_folder_without_logs_is_one_error_line(tmp_path, capsys):
    from mm.plot import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mm-plot: error: ") and "no training logs" in err and err.count("\n") == 1
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------- mm-eval compare
def write_eval(folder: Path, overall: float, per_type: dict) -> None:
    for task, metrics in (("synth_vqa", {"task": "synth_vqa", "overall": overall, "per_answer_type": {"number": 1.0},
                                         "per_question_type": per_type}),
                          ("synth_mc", {"task": "synth_mc", "overall": 25.0})):
        (folder / task).mkdir(parents=True)
        (folder / task / "metrics.json").write_text(json.dumps(metrics))


def test_mm_eval_compare_writes_a_bar_chart_beside_the_table(tmp_path, capsys):
    from eval.chart import task_bars
    from eval.cli import main
    from eval.pipeline import find_metrics

    write_eval(tmp_path / "a", 61.0, {"count": 70.0, "exist": 55.0})
    write_eval(tmp_path / "b", 68.0, {"count": 73.0, "spatial": 46.0})
    runs = [(name, find_metrics(tmp_path / name)) for name in ("a", "b")]
    title, categories, values = task_bars("synth_vqa", runs)
    assert "question type" in title and categories == ["overall", "count", "exist", "spatial"]
    assert values == [[61.0, 70.0, 55.0, None], [68.0, 73.0, None, 46.0]]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out" / "t.md")]) == 0
    assert (tmp_path / "out" / "t.md").read_text().startswith("| run |")
    assert_png(tmp_path / "out" / "t.png")
    assert main(["compare", str(tmp_path / "a"), "--out", str(tmp_path / "t.png")]) == 2
    assert "the chart goes beside it" in capsys.readouterr().err and not (tmp_path / "t.png").exists()
