"""Two-process DDP on CPU (gloo): exact epochs over ranks and workers, no hang on uneven shards, and the
loss normalised by the target tokens of all ranks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import torch

from train_helpers import caption_record, reference_grads, tiny_module, write_shards, write_tar

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import torch
torch.set_num_threads(1)
from train_helpers import cpu_trainer, recorded_batches_callback, tiny_data, tiny_module

root = Path(sys.argv[1])
recorder = recorded_batches_callback()
trainer = cpu_trainer(root, accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, callbacks=[recorder])
trainer.fit(tiny_module(), datamodule=tiny_data(root / "data", num_workers=2, batch_size=3))
metrics = {{k: float(v) for k, v in trainer.callback_metrics.items()}}
torch.save({{"batches": recorder.batches, "grads": recorder.first_grads, "metrics": metrics}},
           root / f"rank{{trainer.global_rank}}.pt")
"""


def test_ddp_two_ranks_see_every_sample_once_and_do_not_hang(tmp_path):
    keys = write_shards(tmp_path / "data", [7, 1, 4, 1])  # 13 samples: 4 consumers of 3, 3, 3, 4
    write_tar(tmp_path / "data" / "shard-000004.tar", {"broken": {**caption_record("broken"), "img0.png": b"xx"}})
    manifest = (tmp_path / "data" / "manifest.json")
    text = manifest.read_text().replace('"num_samples": 13', '"num_samples": 14')
    manifest.write_text(text.replace(']', ', {"name": "shard-000004.tar", "num_samples": 1}]', 1))
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parent))))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # 14 samples over 4 consumers (3, 3, 4, 4 with the broken one): batch 3 -> quota 2 per worker
    assert [len(r["batches"]) for r in ranks] == [4, 4]
    seen = Counter(key.split("#")[1] for r in ranks for b in r["batches"] if not b["is_padding"] for key in b["keys"])
    assert seen == Counter(keys)  # every good sample exactly once; the broken one skipped
    assert ranks[0]["metrics"]["skipped/bad_image"] == 1.0  # summed over ranks
    for name, grad in ranks[0]["grads"].items():  # DDP: identical gradients on both ranks
        torch.testing.assert_close(ranks[1]["grads"][name], grad)

    # the first step's gradient is sum(CE over both ranks' batches) / (their target tokens)
    reference = tiny_module()
    reference.configure_model()
    expected = reference_grads(reference, [ranks[0]["batches"][0], ranks[1]["batches"][0]])
    for name, grad in expected.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
