"""`mm-train`: the Lightning CLI over ``VLMTrainingModule`` and ``ShardDataModule``.

    mm-train fit --config configs/demo/stage1_align.yaml
    mm-train fit --config ... --ckpt_path last          # resume mid-epoch exactly (error if none)
    mm-train fit --print_config                         # every option with its help text
    mm-train fit --config configs/demo/dpo.yaml         # model.policy.stage dpo: preference pairs (DPOTrainingModule)

The resolved config is written next to the logs/checkpoints (`config.yaml`). Every run logs both CSV
(`metrics.csv`, read by `mm-plot`) and TensorBoard: a lone CSVLogger or TensorBoardLogger gets the other
beside it (`--csv_and_tensorboard false`: only the configured one). With the progress bar off, a
`ProgressLines` callback prints a short line every 50 optimizer steps instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mm.cli_errors import run_cli
from mm.data.module import ShardDataModule
from mm.data.shards import ShardSourceError
from mm.export_target import ExportTargetError
from mm.train.dpo_module import for_stage
from mm.train.module import CheckpointMismatch, VLMTrainingModule
from mm.train.progress import ProgressLines
from mm.train.strategies import UnsupportedStrategy, check_strategy


class MMTrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.add_argument(
            "--csv_and_tensorboard", type=bool, default=True,
            help="Log both CSV and TensorBoard: a lone CSVLogger or TensorBoardLogger gets the other beside it "
                 "(same save_dir, name and version); false: only the configured logger.",
        )

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        if self.subcommand == "fit":  # before the Trainer is built: Lightning refuses FSDP on CPU and DeepSpeed
            check_strategy(config.trainer.strategy, config.model.policy)  # when absent, naming no working fix
        if config.get("weights_only") is None:  # explicit, whatever torch's default: never unpickle code
            config.weights_only = True

    def after_instantiate_classes(self) -> None:
        # The preference stages (model.policy.stage dpo, dpo_lora) train with DPOTrainingModule: same options.
        if getattr(self, "model", None) is None:  # nothing was instantiated (a parse-only subclass)
            return
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("csv_and_tensorboard", True):
            pair_csv_and_tensorboard(self.trainer)
        model = for_stage(self.model)
        if model is not self.model:
            self.model = model
            (self.config_init[self.subcommand] if self.subcommand else self.config_init)["model"] = model

    def before_fit(self) -> None:
        run_checkpoints_in_one_folder(self.trainer)
        # before Trainer.fit: its setup creates every logger's writer (TensorBoard's events file) before the
        # module's own check in `setup` would run, and a refused run must leave its folder as it was
        self.model.check_export_dir(self.trainer)
        add_progress_lines(self.trainer)
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = str(find_last_checkpoint(self.trainer))


def pair_csv_and_tensorboard(trainer) -> None:
    """A lone CSVLogger gets a TensorBoardLogger beside it, and the other way round: both write into the
    same `<save_dir>/<name>/version_N` (the version is fixed here, before either creates its folder, so
    they cannot count different versions). Any other logger setup stays as configured."""
    loggers = trainer.loggers
    if len(loggers) != 1 or type(loggers[0]) not in (CSVLogger, TensorBoardLogger):
        return
    logger = loggers[0]
    shared = dict(save_dir=logger.save_dir, name=logger.name, version=logger.version)
    if isinstance(logger, CSVLogger):
        trainer.loggers = [logger, TensorBoardLogger(**shared, default_hp_metric=False)]
    else:
        trainer.loggers = [logger, CSVLogger(**shared)]


def add_progress_lines(trainer) -> None:
    """With no progress bar, nothing would show that training runs: print `ProgressLines` instead (unless
    the config lists one with its own interval)."""
    if trainer.progress_bar_callback is None and not any(isinstance(c, ProgressLines) for c in trainer.callbacks):
        trainer.callbacks.append(ProgressLines())


def run_checkpoints_in_one_folder(trainer) -> None:
    """Checkpoints without a `dirpath` go to `<default_root_dir>/checkpoints`, not into the logger's
    `version_N` folder: a resumed run gets a new version folder, and its `last` must still be found."""
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath is None:
            callback.dirpath = str(Path(trainer.default_root_dir).resolve() / "checkpoints")


def find_last_checkpoint(trainer) -> Path:
    """The newest `last*.ckpt` of this run: in the checkpoint callbacks' folders, or in the logger version
    folders where runs before `run_checkpoints_in_one_folder` kept them. None is an error: Lightning would
    only warn and train from scratch over the earlier run's export."""
    folders = [Path(callback.dirpath) for callback in trainer.checkpoint_callbacks if callback.dirpath]
    for logger in trainer.loggers:
        if logger.save_dir is not None:
            folders += Path(logger.save_dir, str(logger.name or "")).glob("*/checkpoints")
    candidates = [path for folder in folders for path in folder.glob("last*.ckpt")]
    if not candidates:
        looked = ", ".join(sorted({str(folder) for folder in folders})) or "(no checkpoint folder is configured)"
        raise SystemExit(
            f"mm-train: error: --ckpt_path last: no checkpoint to resume under {Path(trainer.default_root_dir).resolve()} "
            f"(looked for last*.ckpt in {looked}); run without --ckpt_path to start a new run"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)


def make_cli(args=None, run: bool = True) -> MMTrainCLI:
    return MMTrainCLI(
        VLMTrainingModule,
        ShardDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args=None) -> None:
    # a mistake in the data, strategy, export or resume options: one line, no traceback, rc 2 (mm.cli_errors)
    def fit_or_other_subcommand() -> int:
        make_cli(args)
        return 0

    status = run_cli("mm-train", fit_or_other_subcommand,
                     bad_input=(ShardSourceError, UnsupportedStrategy, ExportTargetError, CheckpointMismatch))
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
