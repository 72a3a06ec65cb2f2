"""Training step throughput: our model vs transformers' LlavaForConditionalGeneration, identical weights.

Both take the same batches of a llava_v1_5_mix665k-shaped mix (see ``train_mix``) through forward +
backward + AdamW step. The reference pads each batch to its longest sample (the LLaVA way); ours packs
the batch's samples into rows as long as its longest sample, or ``--pack-length`` (positions restart per
sample, block-diagonal causal attention), and is also timed padded, to show what packing alone buys.
Before timing, the three losses on one batch must agree: same weights, same targets.

Model FLOPs per step (for MFU; attention score FLOPs and recomputation are not counted):
  6 x N_llm x real tokens  +  6 x N_proj x image tokens  +  (2, or 6 if trained) x N_tower x tower tokens
where N_* are the weights that multiply activations (linear layers incl. the LM head, the patch conv),
real tokens exclude padding, and tower tokens are patches + CLS per image (every tower layer is counted,
though the features come from ``select_layer``). MFU = FLOPs / step time / peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import train_mix  # noqa: E402

from mm.config import LLMConfig, ProjectorConfig, VisionTowerConfig, VLMConfig  # noqa: E402
from mm.data.batching import collate, pack, packed_attention_mask  # noqa: E402
from mm.tiny import TOKENIZER_DIR, tiny_vlm_config  # noqa: E402
from mm.transforms import ImageTransform  # noqa: E402

TARGET = 1.5
MFU_TARGET = 0.40
# Dense bf16 tensor-core peaks, most specific name first; H200 has the H100 SXM's compute.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12}

VIT_L_14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
QWEN2 = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
}


def gpu_config(llm_size: str) -> VLMConfig:
    """ViT-L/14-336-shaped CLIP tower + Qwen2-shaped LLM, random weights (the tiny tokenizer's ids fit).

    Inline configs with an empty ``name_or_path`` build without weights and without touching the hub
    (GPU machines may have no network)."""
    qwen = dict(model_type="qwen2", num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=3, **QWEN2[llm_size])
    return VLMConfig(
        vision=VisionTowerConfig(kind="hf_clip", name_or_path="", model_config=VIT_L_14_336),
        projector=ProjectorConfig(kind="mlp2x_gelu"),
        llm=LLMConfig(name_or_path="", model_config=qwen, tokenizer=str(TOKENIZER_DIR)),
    )


SIZES = {
    "tiny": lambda: tiny_vlm_config(vision="hf_clip", llm="qwen2"),
    "qwen2-0.5b": lambda: gpu_config("0.5b"),
    "qwen2-1.5b": lambda: gpu_config("1.5b"),
}


def build_size(name: str) -> VLMConfig:
    if name not in SIZES:
        raise ValueError(f"unknown --size {name!r}; valid sizes: {list(SIZES)}")
    return SIZES[name]()


# ----------------------------------------------------------------------------- models
def build_ours(config: VLMConfig):
    from mm.builder import build_vlm

    torch.manual_seed(0)
    return build_vlm(config)


def build_pair(config: VLMConfig, device: str, dtype: torch.dtype, grad_checkpointing: bool):
    """Our model and a transformers Llava loaded from its export: same weights, same trainable parts."""
    from transformers import LlavaForConditionalGeneration

    from mm.llava import export_llava_hf

    ours = build_ours(config)
    with tempfile.TemporaryDirectory() as tmp:
        export_llava_hf(ours, Path(tmp) / "llava")
        reference = LlavaForConditionalGeneration.from_pretrained(
            Path(tmp) / "llava", dtype=torch.float32, attn_implementation=config.llm.attn_implementation)
    ours.set_trainable(vision=False, projector=True, llm=True)
    reference.requires_grad_(True)
    reference.model.vision_tower.requires_grad_(False)
    trainable = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, reference)]
    if trainable[0] != trainable[1]:
        raise RuntimeError(f"trainable parameters differ: ours {trainable[0]:,}, transformers Llava {trainable[1]:,}")
    for model in (ours, reference):
        model.to(device=device, dtype=dtype).train()
    if grad_checkpointing:
        ours.gradient_checkpointing_enable()  # non-reentrant, LLM (and the tower only when trained)
        language_model = reference.model.language_model
        if hasattr(language_model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ours, reference


def matmul_params(module: nn.Module) -> int:
    """Weights that multiply activations: linear layers (a tied LM head counts once more) and convolutions."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


@dataclass(frozen=True)
class FlopCounter:
    """Model FLOPs of a training step (the formula in the module docstring)."""

    llm_params: int
    projector_params: int
    tower_params: int
    tower_tokens_per_image: int
    """Patches + prefix (CLS) tokens the tower runs on."""
    projector_tokens_per_image: int
    tower_trained: bool = False

    @classmethod
    def of(cls, model, tower_trained: bool = False) -> "FlopCounter":
        tower = model.vision_tower
        return cls(matmul_params(model.llm), matmul_params(model.projector), matmul_params(tower),
                   tower.num_tokens + tower.num_prefix_tokens, tower.num_tokens, tower_trained)

    def __call__(self, samples) -> float:
        real_tokens = sum(len(s) for s in samples)
        images = sum(len(s.images) for s in samples)
        tower_factor = 6 if self.tower_trained else 2
        return (6 * self.llm_params * real_tokens + 6 * self.projector_params * images * self.projector_tokens_per_image
                + tower_factor * self.tower_params * images * self.tower_tokens_per_image)


# ----------------------------------------------------------------------------- steps
def padded_inputs(samples, pad_id, transform, device, dtype) -> dict:
    """One sample per row, right-padded to the batch's longest (the LLaVA way)."""
    batch = collate(samples, pad_id)
    return {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "labels": batch["labels"].to(device),
        "pixel_values": _pixels(batch, transform, device, dtype),
    }


def packed_inputs(samples, pad_id, transform, device, dtype, row_length: int | None) -> dict:
    """Samples packed into rows (positions restart, attention stays within a sample).

    Rows are ``row_length`` tokens, or with None as long as the batch's longest sample: then no row is
    longer than the padded batch's, so the quadratic attention never costs more than padding does.
    """
    batch = pack(samples, pad_id, row_length or max(len(s) for s in samples))
    return {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": packed_attention_mask(batch["segment_ids"].to(device)),
        "position_ids": batch["position_ids"].to(device),
        "labels": batch["labels"].to(device),
        "pixel_values": _pixels(batch, transform, device, dtype),
    }


def _pixels(batch, transform, device, dtype):
    images = batch["pixel_values"]
    return None if images is None else transform.normalize(images.to(device), dtype)


def make_step(model, make_inputs, batches, flops: FlopCounter):
    """A round = one full training step on each batch, the same batches every round; returns the work done."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=parameters[0].is_cuda or None)

    def run(_round: int) -> dict[str, float]:
        counts = {"samples": 0, "tokens": 0, "computed_tokens": 0, "flops": 0.0}
        for samples in batches:
            inputs = make_inputs(samples)
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counts["samples"] += len(samples)
            counts["tokens"] += sum(map(train_mix.supervised_tokens, samples))
            counts["computed_tokens"] += inputs["input_ids"].numel()
            counts["flops"] += flops(samples)
        return counts

    return run


def check_same_loss(paths: dict, batch, dtype: torch.dtype) -> dict[str, float]:
    """Loss of every path on one batch, before any step; they must agree (identical weights and targets)."""
    losses = {}
    for name, (model, make_inputs) in paths.items():
        with torch.no_grad():
            losses[name] = float(model(**make_inputs(batch)).loss)
    first = next(iter(losses.values()))
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    if any(abs(loss - first) > tolerance * max(1.0, abs(first)) for loss in losses.values()):
        raise RuntimeError(f"paths disagree on the loss of the same batch: {losses}")
    return losses


def peak_flops(device: str, override_tflops: float | None) -> float | None:
    """The device's dense bf16 peak, from --peak-tflops or the GPU's name; None when unknown (CPU)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if not device.startswith("cuda"):
        return None
    name = common.device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--size", default=None,
                        help=f"model shapes: {list(SIZES)} (default: tiny on CPU, qwen2-0.5b on GPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step (LLaVA-1.5's per-GPU batch)")
    parser.add_argument("--max-length", type=int, default=2048, help="longest sample (longer ones are truncated)")
    parser.add_argument("--pack-length", type=int, default=None,
                        help="packed row length (default: the batch's longest sample)")
    parser.add_argument("--steps-per-round", type=int, default=None,
                        help="batches per round: each round trains one step on each (the same batches every round)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: fp32 on CPU, bf16 on GPU")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="activation checkpointing in both models (default: on for GPU, as LLaVA trains)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU when the GPU is not known")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout-only", action="store_true",
                        help="only count the tokens padded and packed batches compute (no training, no result line)")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.size = args.size or ("qwen2-0.5b" if on_gpu else "tiny")
    args.steps_per_round = args.steps_per_round or (2 if args.quick else 6)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.precision = args.precision or ("bf16" if on_gpu else "fp32")
    args.grad_checkpointing = on_gpu if args.grad_checkpointing is None else args.grad_checkpointing
    # One thread on CPU: steadier figures on a machine shared with other work (--threads overrides).
    args.threads = args.threads or (None if on_gpu else 1)
    return args


def draw_batches(args, model, config: VLMConfig):
    """The timed batches (LLaVA's modality grouping), the mix's counts, and the samples they hold."""
    image = model.image_transform_config
    samples, mix_counts = train_mix.encode_mix(
        args.steps_per_round * args.batch_size * 2, model.tokenizer, template=config.chat_template,
        tokens_per_image=model.tokens_per_image, image_size=image.image_size, max_length=args.max_length,
        seed=args.seed)
    batches = train_mix.llava_batches(samples, args.batch_size, args.seed)[: args.steps_per_round]
    return batches, mix_counts, [s for batch in batches for s in batch]


def layout(batches, pad_id: int, max_length: int) -> dict[str, int]:
    """Tokens each layout computes for these batches (rows x width): no model run, no timing."""
    def packed(row_length):
        return sum(pack(b, pad_id, row_length or max(map(len, b)))["input_ids"].numel() for b in batches)

    return {
        "real": sum(len(s) for batch in batches for s in batch),
        "padded": sum(collate(batch, pad_id)["input_ids"].numel() for batch in batches),
        "packed_rows_of_longest": packed(None),
        f"packed_rows_of_{max_length}": packed(max_length),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.set_threads(args.threads)
    config = build_size(args.size)
    if args.layout_only:
        ours = build_ours(config)
        batches, mix_counts, used = draw_batches(args, ours, config)
        figures = layout(batches, ours.tokenizer.pad_token_id, args.max_length)
        print(f"size {args.size}: {ours.tokens_per_image} tokens per image; mix {dict(mix_counts)}")
        print(f"lengths {train_mix.length_summary(used)}; tokens computed per round: {figures}")
        return figures
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ours, reference = build_pair(config, args.device, dtype, args.grad_checkpointing)
    image = ours.image_transform_config
    transform = ImageTransform(image.image_size, image.mean, image.std, mode=image.mode)
    pad_id = ours.tokenizer.pad_token_id
    batches, mix_counts, used = draw_batches(args, ours, config)

    def packed(batch):
        return packed_inputs(batch, pad_id, transform, args.device, dtype, args.pack_length)

    def padded(batch):
        return padded_inputs(batch, pad_id, transform, args.device, dtype)

    def training(make_inputs):
        # As mm-train runs our model: the output head only at supervised positions.
        return lambda batch: {**make_inputs(batch), "return_logits": False}

    paths = {"ours, packed": (ours, training(packed)), "ours, padded": (ours, training(padded)),
             "transformers Llava, padded": (reference, padded)}
    losses = check_same_loss(paths, batches[0], dtype)
    flops = FlopCounter.of(ours)
    runs = {name: make_step(model, inputs, batches, flops) for name, (model, inputs) in paths.items()}
    results = common.alternate(runs, rounds=args.rounds, warmup=args.warmup, device=args.device)
    if args.profile:
        print(common.torch_profile_paths(runs))
    peak = peak_flops(args.device, args.peak_tflops)
    return report(args, results, losses, peak, train_mix.length_summary(used), mix_counts)


def report(args, results, losses, peak, lengths, mix_counts) -> dict:
    ours, padded_ours, reference = (results[name] for name in results)
    rows = []
    for result in results.values():
        computed = result.rounds[0].counts["computed_tokens"]
        mfu = result.rate("flops") / peak if peak else None
        rows.append([result.name, result.rate("tokens"), result.rate("samples"), *result.spread("tokens"),
                     computed, "-" if mfu is None else f"{mfu:.1%}"])
    ratio = ours.rate("tokens") / reference.rate("tokens")
    print(f"size {args.size}, {args.precision}, batch {args.batch_size}, max length {args.max_length}, "
          f"packed rows {args.pack_length or 'as long as the longest sample'}, "
          f"{args.steps_per_round} steps x {args.rounds} rounds after {args.warmup} warmup, on {args.device}")
    print(f"mix: {dict(mix_counts)}; lengths of the timed samples: {lengths}")
    print(f"loss on the first batch (must agree): {losses}")
    headers = ["path", "supervised tok/s", "samples/s", "min tok/s", "max tok/s", "tokens computed/round", "MFU"]
    print(common.format_table(headers, rows))
    print(f"ours packed / transformers: {ratio:.2f}x  (ours padded / transformers: "
          f"{padded_ours.rate('tokens') / reference.rate('tokens'):.2f}x)")
    mfu = ours.rate("flops") / peak if peak else None
    result = {
        "bench": "train_step",
        "size": args.size,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "ours_tokens_per_s": round(ours.rate("tokens"), 1),
        "ours_samples_per_s": round(ours.rate("samples"), 3),
        "ours_padded_tokens_per_s": round(padded_ours.rate("tokens"), 1),
        "reference_tokens_per_s": round(reference.rate("tokens"), 1),
        "reference_samples_per_s": round(reference.rate("samples"), 3),
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
        "mfu": None if mfu is None else round(mfu, 4),
        "mfu_reference": None if peak is None else round(reference.rate("flops") / peak, 4),
        "mfu_target": MFU_TARGET if peak else None,
        "mfu_met": None if mfu is None else mfu >= MFU_TARGET,
        "lengths": lengths,
        "losses": losses,
    }
    common.emit(result, args.device)
    return result


if __name__ == "__main__":
    main()
