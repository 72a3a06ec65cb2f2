"""`mm-train`: the Lightning CLI over ``VLMTrainingModule`` and ``ShardDataModule``.

    mm-train fit --config configs/demo/stage1_align.yaml
    mm-train fit --config ... --ckpt_path last          # resume mid-epoch exactly
    mm-train fit --print_config                         # every option with its help text

The resolved config is written next to the logs/checkpoints (`config.yaml`).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from mm.data.module import ShardDataModule
from mm.train.module import VLMTrainingModule


class MMTrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.use_distributed_sampler": False})


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
    make_cli(args)


if __name__ == "__main__":
    main()
