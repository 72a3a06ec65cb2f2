"""Do CPU code paths change the bits of training? The tiny model trains a few AdamW steps on fixed random
batches in a fresh process per setting of the kernel-selection variables (ATen's vector ISA, MKL's
conditional numerical reproducibility mode, oneDNN's ISA cap, the thread count), and the last losses are
compared bit for bit.

    .venv/bin/python bench/cpu_numerics.py [--steps 15]

Why it matters: the demo's figures are a long chain of such steps; settings that differ in the last bit
give different models after thousands of steps. `configs/demo/run_demo.sh` pins the AVX2 paths so that any
x86-64 machine with AVX2 can take the same kernels (BENCHMARKS.md, "Demo reproducibility").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

SETTINGS = {
    "native (what the CPU offers)": {},
    "ATen avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "MKL CNR AVX2": {"MKL_CBWR": "AVX2"},
    "ATen avx2 + MKL CNR AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"},
    "demo pin (ATen + MKL + oneDNN AVX2)": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
                                           "DNNL_MAX_CPU_ISA": "AVX2"},
    "demo pin, 1 thread": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
                           "OMP_NUM_THREADS": "1"},
}
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS")


def train_losses(steps: int) -> list[float]:
    """The tiny model, seeded, `steps` AdamW steps on seeded random token/image batches."""
    import torch

    import mm
    from mm.tiny import tiny_vlm_config

    torch.manual_seed(0)
    model = mm.build_vlm(tiny_vlm_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    size, image_tokens = model.image_transform_config.image_size, model.tokens_per_image
    losses = []
    for _ in range(steps):
        ids = torch.randint(5, 200, (4, 16 + image_tokens), generator=generator)
        ids[:, 1 : 1 + image_tokens] = model.image_token_id
        pixels = torch.randn(4, 3, size, size, generator=generator)
        labels = ids.clone()
        labels[:, : 1 + image_tokens] = -100
        loss = model(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def run_setting(variables: dict[str, str], steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES} | variables
    done = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="AdamW steps per setting")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch

        losses = train_losses(args.steps)
        print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                          "last": losses[-1].hex(), "losses": losses}))
        return 0
    results = {name: run_setting(variables, args.steps) for name, variables in SETTINGS.items()}
    print(f"| setting | ATen kernels | threads | loss after {args.steps} steps (hex) | digest of all {args.steps} losses |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        digest = hashlib.sha256(json.dumps([x.hex() for x in result["losses"]]).encode()).hexdigest()[:12]
        print(f"| {name} | {result['capability']} | {result['threads']} | `{result['last']}` | `{digest}` |")
    print("\nEqual digests: bit-identical training; any difference is in the last bits and grows with steps.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
