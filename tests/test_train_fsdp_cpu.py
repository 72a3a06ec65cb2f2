"""FSDP on CPU: two gloo ranks train the tiny model with FSDP and with DDP from the same seed; equal losses,
gradient norms and exports.

Neither library runs FSDP on a CPU as shipped (Lightning 2.6, torch 2.14):
- Lightning's accelerator connector refuses it: "The strategy `fsdp` requires a GPU accelerator, but received
  `accelerator='cpu'`" (`_check_strategy_and_fallback`, for `type(strategy) is FSDPStrategy` only);
- `FSDPStrategy._setup_model` passes `device_id=root_device.index`, None on a CPU, and torch's
  `FullyShardedDataParallel` then raises "FSDP needs a non-CPU accelerator device, but no accelerator device
  is detected".
torch's FSDP itself shards and trains on CPU over gloo when given `device_id=cpu`. `CPUFSDPStrategy` (below) is
Lightning's FSDPStrategy with only that changed, so sharding, the full-state-dict gathering, mm's export and
mm's global gradient norm and clipping all run as on GPUs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train_helpers import tiny_module, write_shards

STEPS = 3
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from train_helpers import cpu_trainer, recorded_batches_callback, tiny_data, tiny_module

torch.set_num_threads(1)


class CPUFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                                         sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                         **self.kwargs)
        self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn that it is ignored
        return super()._setup_model(model)  # already wrapped: Lightning only adds activation checkpointing


class GradNorms(L.Callback):
    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.norms.append(float(trainer.callback_metrics["train/grad_norm"]))


root, kind = Path(sys.argv[1]), sys.argv[2]
strategy = CPUFSDPStrategy(auto_wrap_policy={{LlamaDecoderLayer}}, state_dict_type="full") if kind == "fsdp" else "ddp"
recorder, norms = recorded_batches_callback(), GradNorms()
trainer = cpu_trainer(root / kind, devices=2, strategy=strategy, max_steps={steps}, gradient_clip_val=1.0,
                      callbacks=[recorder, norms])
module = tiny_module()
module.export_dir = str(root / kind / "export")
trainer.fit(module, datamodule=tiny_data(root / "data", batch_size=2))
groups = sorted(group["name"] for group in trainer.optimizers[0].param_groups)
(root / kind).mkdir(exist_ok=True)
torch.save({{"losses": recorder.losses, "grad_norms": norms.norms, "groups": groups}},
           root / kind / f"rank{{trainer.global_rank}}.pt")
trainer.strategy.barrier()  # rank 0 must not exit (and the test read) before rank 1 has written its file
"""


def test_lightning_refuses_fsdp_on_cpu():
    """The refusal the module docstring quotes; if a Lightning release drops it, CPUFSDPStrategy can go."""
    import lightning as L

    with pytest.raises(ValueError, match="The strategy `fsdp` requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same two-rank training (3 steps, clipping at 1.0) with FSDP and with DDP: {kind: [rank0, rank1]}."""
    root = tmp_path_factory.mktemp("fsdp_cpu")
    write_shards(root / "data", [8, 8])
    script = root / "fit.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parent), steps=STEPS)))
    found = {}
    for kind in ("fsdp", "ddp"):
        done = subprocess.run([sys.executable, str(script), str(root), kind], cwd=root, capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-10000:]
        found[kind] = [torch.load(root / kind / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    return root, found


def test_fsdp_on_cpu_trains_and_exports_as_ddp(runs):
    import mm

    root, found = runs
    for fsdp, ddp in zip(found["fsdp"], found["ddp"]):
        assert len(fsdp["losses"]) == STEPS
        torch.testing.assert_close(fsdp["losses"], ddp["losses"])
        # the global norm, over both ranks' shards under FSDP; above 1.0, so clipping by it changed the steps
        torch.testing.assert_close(fsdp["grad_norms"], ddp["grad_norms"])
        assert min(fsdp["grad_norms"]) > 1.0
    exported = {kind: mm.load_pretrained(root / kind / "export").state_dict() for kind in ("fsdp", "ddp")}
    assert exported["fsdp"].keys() == exported["ddp"].keys()
    initial = tiny_module()
    initial.configure_model()
    start = initial.vlm.state_dict()
    for name, weight in exported["ddp"].items():
        torch.testing.assert_close(exported["fsdp"][name], weight, rtol=1e-5, atol=1e-6, msg=name)
    assert max(float((exported["ddp"][n] - start[n]).abs().max()) for n in start) > 1e-3  # the steps trained


def test_fsdp_gets_the_parameter_groups_of_ddp(runs):
    _, found = runs
    assert found["fsdp"][0]["groups"] == found["ddp"][0]["groups"]
