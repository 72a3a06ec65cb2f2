"""`mm-train`: the Lightning CLI over ``VLMTrainingModule`` and ``ShardDataModule``.

    mm-train fit --config configs/demo/stage1_align.yaml
    mm-train fit --config ... --ckpt_path last          # resume mid-epoch exactly (error if none)
    mm-train fit --print_config                         # every option with its help text
    mm-train fit --config configs/demo/dpo.yaml         # model.policy.stage dpo: preference pairs (DPOTrainingModule)
    mm-train fit --config configs/demo/tower_contrastive.yaml   # stage contrastive: a vision tower (ContrastiveTrainingModule)

The resolved config is written next to the logs/checkpoints (`config.yaml`). Every run logs both CSV
(`metrics.csv`, read by `mm-plot`) and TensorBoard: a lone CSVLogger or TensorBoardLogger gets the other
beside it (`--csv_and_tensorboard false`: only the configured one). With the progress bar off, a
`ProgressLines` callback prints a short line every 50 optimizer steps instead.

A bad option or config value, a setting out of range and a --ckpt_path that is missing, empty, cut short or
not a Lightning checkpoint are one `mm-train: error:` line and status 2 (mm.cli_errors), before the model is
built or a folder written (`--ckpt_path last` is found, and checked, once the Trainer exists).
"""

from __future__ import annotations

import math
import sys
from argparse import ArgumentError
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mm.chat import TEMPLATES
from mm.cli_errors import BadInput, one_line, run_cli
from mm.data.module import ShardDataModule
from mm.data.shards import ShardSourceError
from mm.export_target import ExportTargetError
from mm.train.contrastive import contrastive_data_problem
from mm.train.contrastive_module import for_stage
from mm.train.module import CheckpointMismatch, VLMTrainingModule
from mm.train.policy import CONTRASTIVE_STAGE, TrainingPolicy
from mm.train.progress import ProgressLines
from mm.train.strategies import UnsupportedStrategy, check_strategy
from mm.weights import lightning_checkpoint_problem

SUBCOMMANDS = tuple(LightningCLI.subcommands())  # fit, validate, test, predict
# --ckpt_path values Lightning resolves itself rather than naming a file
NAMED_CHECKPOINTS = ("last", "best", "hpc")


class UnusableCheckpoint(BadInput):
    """A --ckpt_path that is missing, not a file, or not a readable Lightning checkpoint (cut short, corrupt,
    carrying pickled code): the message names the file, and an older checkpoint beside it if there is one."""


class MMTrainCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except UnicodeDecodeError as error:  # jsonargparse reads config files as UTF-8 and names none
            raise BadInput(f"--config {undecodable_config(args)}: not UTF-8 text ({error.reason} at byte "
                           f"{error.start})") from None
        # Before anything is built or logged: LightningCLI reads an explicit checkpoint right after parsing (for
        # its hyperparameters), and Trainer.fit would fail on it only after creating the run's log folders.
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        check_settings(config, fit=subcommand == "fit")
        check_policy(config)
        check_contrastive_data(config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None and ckpt_path not in NAMED_CHECKPOINTS and not str(ckpt_path).startswith("registry"):
            check_checkpoint(Path(ckpt_path), "--ckpt_path")

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

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BadInput:
            raise
        except ValueError as error:  # a class's own check of its settings (TrainingPolicy's ranges, ...)
            raise BadInput(f"invalid setting: {one_line(error)}") from error

    def after_instantiate_classes(self) -> None:
        # The preference stages (model.policy.stage dpo, dpo_lora) train with DPOTrainingModule, stage contrastive
        # with ContrastiveTrainingModule: same options.
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
            last = find_last_checkpoint(self.trainer)
            check_checkpoint(last, "--ckpt_path last")
            config["ckpt_path"] = str(last)


# Settings whose bad values would otherwise fail deep inside training (a division by zero, a silent ascent
# with a negative lr), after the run's folders exist: (key, valid, what is valid, fit only)
SETTING_CHECKS = [
    ("data.batch_size", lambda v: v >= 1, "a whole number >= 1", False),
    ("data.num_workers", lambda v: v >= 0, "a whole number >= 0", False),
    ("data.max_length", lambda v: v is None or v >= 1, "a whole number >= 1 or null", False),
    ("data.template", lambda v: v is None or v in TEMPLATES, f"one of {sorted(TEMPLATES)} or null", False),
    ("trainer.accumulate_grad_batches", lambda v: v >= 1, "a whole number >= 1", True),
    ("trainer.max_steps", lambda v: v == -1 or v >= 1, "-1 (no limit) or a whole number >= 1", True),
    ("model.policy.lr", lambda v: math.isfinite(v) and v > 0, "a finite number > 0", True),
]


def check_settings(config, *, fit: bool) -> None:
    for key, valid, requirement, fit_only in SETTING_CHECKS:
        if fit_only and not fit:
            continue
        try:
            value = config[key]
        except KeyError:  # not an option of this subcommand or model
            continue
        if not valid(value):
            raise BadInput(f"--{key} {value!r}: must be {requirement}")


def check_policy(config) -> None:
    """TrainingPolicy's own range checks, run on the parsed values before seeding and building (which print
    and cost minutes); the module makes the same policy again."""
    try:
        policy = config["model.policy"]
    except KeyError:
        return
    try:
        TrainingPolicy(**policy.as_dict())
    except (ValueError, TypeError) as error:
        raise BadInput(f"--model.policy: {one_line(error)}") from None


def check_contrastive_data(config) -> None:
    """Stage `contrastive`: data settings it cannot train with (a batch of one pair has no negatives)."""
    try:
        stage, batch_size, packing = config["model.policy.stage"], config["data.batch_size"], config["data.packing"]
    except KeyError:
        return
    problem = contrastive_data_problem(batch_size=batch_size, packing=packing) if stage == CONTRASTIVE_STAGE else None
    if problem:
        raise BadInput(problem)


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
        raise UnusableCheckpoint(
            f"--ckpt_path last: no checkpoint to resume under {Path(trainer.default_root_dir).resolve()} "
            f"(looked for last*.ckpt in {looked}); run without --ckpt_path to start a new run"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)


def undecodable_config(args) -> str:
    """The first --config file in `args` (default: the command line) that is not UTF-8, or '(a file)'."""
    args = list(sys.argv[1:] if args is None else args)
    paths = [value for option, value in zip(args, args[1:]) if option in ("--config", "-c")]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in paths:
        try:
            Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return path
        except OSError:
            continue
    return "(a file)"


def check_checkpoint(path: Path, option: str) -> None:
    """`path` is a Lightning checkpoint torch can read without running pickled code, else one
    `UnusableCheckpoint` line naming it (and the newest good checkpoint beside it, to resume from instead)."""
    problem = lightning_checkpoint_problem(path)
    if problem is None:
        return
    older = newest_readable_checkpoint(path.parent, besides=path) if path.parent.is_dir() else None
    hint = f"; the newest readable checkpoint beside it is {older}" if older else ""
    raise UnusableCheckpoint(f"{option}: {path}: {problem}{hint}")


def newest_readable_checkpoint(folder: Path, *, besides: Path) -> Path | None:
    others = sorted((p for p in folder.glob("*.ckpt") if p != besides), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((other for other in others if lightning_checkpoint_problem(other) is None), None)


def make_cli(args=None, run: bool = True) -> MMTrainCLI:
    return MMTrainCLI(
        VLMTrainingModule,
        ShardDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # a bad option or config file raises (one run_cli line) instead of printing the usage block and exiting
        parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in SUBCOMMANDS}},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args=None) -> None:
    # a mistake in the data, strategy, export or resume options: one line, no traceback, rc 2 (mm.cli_errors)
    def fit_or_other_subcommand() -> int:
        try:
            make_cli(args)
        except ArgumentError as error:  # jsonargparse puts what is wrong on the lines after 'Parser key "x":'
            raise BadInput(" ".join(line.strip() for line in str(error).splitlines() if line.strip())) from None
        return 0

    status = run_cli("mm-train", fit_or_other_subcommand,
                     bad_input=(ShardSourceError, UnsupportedStrategy, ExportTargetError, CheckpointMismatch))
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
