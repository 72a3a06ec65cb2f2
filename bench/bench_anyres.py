"""Anyres vs single view: tokens per image, and the training step's throughput (measured, and forecast at 7B).

Three parts, one result line:

1. Tokens and views per image, counted (no model): LLaVA-NeXT-7B's shapes (CLIP ViT-L/14-336, 576 tokens
   per view, its five grid pinpoints) and LLaVA-OneVision's (SigLIP-so400m/14-384, 729 per view, the 6 x 6
   grid of 384-px pinpoints that is transformers' ``LlavaOnevisionConfig`` default, anyres_max_9), for
   typical image sizes. The LLM's cost follows the tokens (``mm.image_tokens.ImageTokens.count``), the
   tower's the views (base view + tiles).
2. The FLOP ratio of a training step, anyres / single view, at LLaVA-NeXT-7B's shapes (Vicuna-7B + ViT-L +
   mlp2x_gelu), with ``bench_train_step.FlopCounter``'s formula: every view goes through the tower and the
   projector, the LLM sees the text plus the image's placeholders. A GPU keeps about the same MFU on both
   (both are long dense sequences), so the forecast throughput ratio is the inverse FLOP ratio.
3. One training step (forward, the model's loss, backward, AdamW) of the same model single-view and anyres
   on the same images, alternated in one process: samples/s and tokens/s of each, their ratio, and the
   FLOP ratio the formula predicts for that model, to show how far the formula is from the clock. CPU:
   the tiny model (64-px tiles, so the images are scaled by 64/336 to tile as at 7B). GPU (``--device
   cuda``): ``bench_train_step``'s ViT-L + Qwen2 sizes, bf16, activation checkpointing.

The result line's ``ratio`` is the measured anyres / single-view samples/s; there is no target (a figure
for planning). ``forecast_7b_samples_ratio`` is 1 / the 7B FLOP ratio (frozen tower, the five images).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_step  # noqa: E402
import common  # noqa: E402
import train_mix  # noqa: E402

from mm.anyres import anyres_grid  # noqa: E402
from mm.chat import encode_conversation  # noqa: E402
from mm.data.batching import collate  # noqa: E402
from mm.data.samples import Sample  # noqa: E402
from mm.image_tokens import ImageTokens  # noqa: E402

# (rows, cols) of LLaVA-NeXT's pinpoints in tiles: [[336,672],[672,336],[672,672],[1008,336],[336,1008]] at 336
NEXT_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
ONEVISION_GRIDS = tuple((rows, cols) for rows in range(1, 7) for cols in range(1, 7))


def pinpoints(grids, tile: int) -> list[list[int]]:
    return [[rows * tile, cols * tile] for rows, cols in grids]


SHAPES = {
    "llava-next-7b": ImageTokens(576, 336, tuple(map(tuple, pinpoints(NEXT_GRIDS, 336)))),
    "onevision anyres_max_9": ImageTokens(729, 384, tuple(map(tuple, pinpoints(ONEVISION_GRIDS, 384))), 9),
}
# (height, width) of typical inputs
IMAGES = {
    "COCO photo 640x480": (480, 640),
    "phone photo 4032x3024": (3024, 4032),
    "document page 1700x2200": (2200, 1700),
    "wide chart 1200x600": (600, 1200),
    "receipt 600x1600": (1600, 600),
}
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 vocab_size=32000, tie_word_embeddings=False)


def views_of(tokens: ImageTokens, size) -> int:
    rows, cols = anyres_grid(size, tokens.grid_pinpoints, tokens.tile)
    return 1 + rows * cols


def token_table() -> dict:
    """{shape: {image: {"views", "tokens"}}} plus single view's tokens per shape."""
    return {name: {"single_view_tokens": shape.per_view,
                   "images": {image: {"views": views_of(shape, size), "tokens": shape.count(size)}
                              for image, size in IMAGES.items()}}
            for name, shape in SHAPES.items()}


# ----------------------------------------------------------------------------- FLOP forecast at 7B
@dataclasses.dataclass
class _Shape:
    """What FlopCounter reads of a sample: its length and one entry per tower input (here: per view)."""

    length: int
    images: list

    def __len__(self) -> int:
        return self.length


def next_7b_counters() -> dict[str, bench_train_step.FlopCounter]:
    """FlopCounters of LLaVA-NeXT-7B (frozen and trained tower), weights counted on the meta device."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**VICUNA_7B))
        tower = CLIPVisionModel(CLIPVisionConfig(**bench_train_step.VIT_L_14_336))
        # LLaVA's mlp2x_gelu: 1024 -> 4096 -> 4096
        projector = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096))
    sizes = dict(llm_params=bench_train_step.matmul_params(llm),
                 projector_params=bench_train_step.matmul_params(projector),
                 tower_params=bench_train_step.matmul_params(tower),
                 tower_tokens_per_image=577, projector_tokens_per_image=576)
    return {"frozen tower": bench_train_step.FlopCounter(**sizes),
            "trained tower": bench_train_step.FlopCounter(**sizes, tower_trained=True)}


def causal_attention_flops(length: int) -> float:
    """Training FLOPs of Vicuna-7B's attention scores and weighted sum (QK^T, AV: 4 T^2 d forward, half of it
    under the causal mask, x3 with backward), which FlopCounter leaves out; they grow with T squared."""
    return 3 * 2 * length**2 * VICUNA_7B["hidden_size"] * VICUNA_7B["num_hidden_layers"]


def flop_forecast(text_tokens: int) -> dict:
    """anyres / single view FLOPs per sample at 7B, per image and over the five images together."""
    counters = next_7b_counters()
    shape = SHAPES["llava-next-7b"]
    single = _Shape(text_tokens + shape.per_view, [None])
    anyres = {image: _Shape(text_tokens + shape.count(size), [None] * views_of(shape, size))
              for image, size in IMAGES.items()}

    def ratios(flops) -> dict:
        per_image = {image: flops([s]) / flops([single]) for image, s in anyres.items()}
        per_image["all five"] = flops(list(anyres.values())) / (len(anyres) * flops([single]))
        return {k: round(v, 3) for k, v in per_image.items()}

    frozen = counters["frozen tower"]
    return {
        "text_tokens": text_tokens,
        "weights": {"llm": frozen.llm_params, "projector": frozen.projector_params, "tower": frozen.tower_params},
        "frozen tower": ratios(frozen),
        "trained tower": ratios(counters["trained tower"]),
        "frozen tower + causal attention": ratios(
            lambda samples: frozen(samples) + sum(causal_attention_flops(len(s)) for s in samples)),
    }


# ----------------------------------------------------------------------------- measured step
def scaled_images(tile: int) -> dict[str, tuple[int, int]]:
    """The typical sizes scaled by tile / 336, so that the model's tiles cut them as LLaVA-NeXT's cut the originals.

    Rounded down: rounding 1200x600 to nearest made it 229x114, a hair wider than 2:1, which tips it onto the
    1 x 3 pinpoint; the grids are checked so that another tile size cannot silently measure other tilings."""
    scaled = {image: (max(1, h * tile // 336), max(1, w * tile // 336)) for image, (h, w) in IMAGES.items()}
    shape, ours = SHAPES["llava-next-7b"], pinpoints(NEXT_GRIDS, tile)
    for image, size in scaled.items():
        if anyres_grid(size, ours, tile) != anyres_grid(IMAGES[image], shape.grid_pinpoints, shape.tile):
            raise ValueError(f"{image} scaled to {size} for {tile}-px tiles is not tiled as LLaVA-NeXT-7B tiles it")
    return scaled


def build_pair(size: str, device: str, dtype: torch.dtype, grad_checkpointing: bool, train_tower: bool):
    """The same model (same seed) single-view and anyres on LLaVA-NeXT's grid in its own tile size."""
    from mm.builder import build_vlm

    models = {}
    config = bench_train_step.build_size(size)
    for name in ("single view", "anyres"):
        if name == "anyres":
            tile = models["single view"].vision_tower.image_size
            config = dataclasses.replace(config, image_transform="anyres", image_grid_pinpoints=pinpoints(NEXT_GRIDS, tile))
        torch.manual_seed(0)
        model = build_vlm(config)
        model.set_trainable(vision=train_tower, projector=True, llm=True)
        model.to(device=device, dtype=dtype).train()
        if grad_checkpointing:
            model.gradient_checkpointing_enable()
        models[name] = model
    return models


def draw_samples(model, images: dict[str, tuple[int, int]], per_image: int, text_words: int, seed: int) -> list[Sample]:
    """One question and answer per sample, ``per_image`` samples of each image size, noise pictures."""
    from PIL import Image

    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    words = train_mix.corpus_words()
    transform = model.make_image_transform()
    samples = []
    for _ in range(per_image):
        for name, (height, width) in images.items():
            pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
            picture = Image.fromarray(pixels.numpy())
            answer = " ".join(rng.choice(words) for _ in range(text_words))
            conversation = [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                            {"from": "gpt", "value": answer}]
            encoded = encode_conversation(conversation, model.tokenizer, model.config.chat_template,
                                          tokens_per_image=model.image_tokens.counts([(height, width)]))
            samples.append(Sample(encoded.input_ids, encoded.labels, [transform.views(picture)], key=name,
                                  image_sizes=[(height, width)]))
    return samples


def make_step(model, samples: list[Sample], steps: int, device: str, dtype: torch.dtype):
    """A round = ``steps`` training steps on the same padded batch (as mm-train batches by default); the
    pictures are decoded, tiled and normalised beforehand: only the model's step is timed."""
    batch = collate(samples, model.tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
              "labels": batch["labels"].to(device),
              "pixel_values": model.make_image_transform().normalize(batch["pixel_values"].to(device), dtype),
              "image_sizes": batch["image_sizes"].tolist(), "return_logits": False}
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=parameters[0].is_cuda or None)
    counts = {"samples": len(samples), "tokens": sum(map(len, samples)),
              "computed_tokens": batch["input_ids"].numel(), "views": batch["pixel_values"].shape[0]}

    def run(_round: int) -> dict[str, float]:
        for _ in range(steps):
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {unit: value * steps for unit, value in counts.items()}

    return run


def measured_flop_ratio(models, samples_by_path, train_tower: bool) -> float:
    """What FlopCounter says anyres / single costs for the measured batches of the measured model."""
    flops = {}
    for name, model in models.items():
        counter = bench_train_step.FlopCounter.of(model, tower_trained=train_tower)
        flops[name] = counter([_Shape(len(s), [None] * sum(v.shape[0] for v in s.images)) for s in samples_by_path[name]])
    return flops["anyres"] / flops["single view"]


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--size", default=None, help=f"measured model: {list(bench_train_step.SIZES)} "
                        "(default: tiny on CPU, qwen2-0.5b on GPU)")
    parser.add_argument("--per-image", type=int, default=None,
                        help="samples of each of the 5 image sizes in the batch (default: 2, --quick 1)")
    parser.add_argument("--steps-per-round", type=int, default=None, help="training steps per timed round")
    parser.add_argument("--text-words", type=int, default=None,
                        help="words of the measured samples' answers (default: 30 tiny, 200 GPU sizes)")
    parser.add_argument("--text-tokens", type=int, default=256,
                        help="text tokens per sample in the 7B FLOP forecast (the image's placeholders come on top)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: fp32 on CPU, bf16 on GPU")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for GPU, as LLaVA trains")
    parser.add_argument("--train-tower", action="store_true",
                        help="train the vision tower too (LLaVA-NeXT's stage 2; default frozen, as bench_train_step)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.size = args.size or ("qwen2-0.5b" if on_gpu else "tiny")
    args.per_image = args.per_image or (1 if args.quick else 2)
    args.steps_per_round = args.steps_per_round or (1 if args.quick else 2)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else 1
    # The tiny model sees 64/576 of the 7B's image tokens per view: its text is scaled alike.
    args.text_words = args.text_words or (30 if args.size == "tiny" else 200)
    args.precision = args.precision or ("bf16" if on_gpu else "fp32")
    args.grad_checkpointing = on_gpu if args.grad_checkpointing is None else args.grad_checkpointing
    args.threads = args.threads or (None if on_gpu else 1)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.set_threads(args.threads)
    tokens = token_table()
    forecast = flop_forecast(args.text_tokens)

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    models = build_pair(args.size, args.device, dtype, args.grad_checkpointing, args.train_tower)
    images = scaled_images(models["single view"].vision_tower.image_size)
    samples = {name: draw_samples(model, images, args.per_image, args.text_words, args.seed)
               for name, model in models.items()}
    runs = {name: make_step(model, samples[name], args.steps_per_round, args.device, dtype)
            for name, model in models.items()}
    results = common.alternate(runs, rounds=args.rounds, warmup=args.warmup, device=args.device)
    if args.profile:
        print(common.torch_profile_paths(runs))
    flop_ratio = measured_flop_ratio(models, samples, args.train_tower)
    return report(args, tokens, forecast, results, images, flop_ratio)


def report(args, tokens, forecast, results, images, flop_ratio) -> dict:
    for name, shape in tokens.items():
        print(f"\n{name}: single view {shape['single_view_tokens']} tokens, 1 view")
        print(common.format_table(["image", "views", "tokens", "x single"],
                                  [[image, row["views"], row["tokens"], row["tokens"] / shape["single_view_tokens"]]
                                   for image, row in shape["images"].items()]))
    print(f"\nLLaVA-NeXT-7B FLOPs per sample, anyres / single view, {forecast['text_tokens']} text tokens "
          f"(weights {forecast['weights']}):")
    variants = ["frozen tower", "trained tower", "frozen tower + causal attention"]
    print(common.format_table(["image", *variants], [[image, *(forecast[v][image] for v in variants)]
                                                     for image in forecast["frozen tower"]]))
    single, anyres = results["single view"], results["anyres"]
    rows = [[r.name, r.rate("samples"), r.rate("tokens"), *r.spread("samples"), r.rounds[0].counts["views"],
             r.rounds[0].counts["tokens"], r.rounds[0].counts["computed_tokens"]] for r in (single, anyres)]
    print(f"\nmeasured: size {args.size}, {args.precision}, {args.per_image} x {len(images)} images {images}, "
          f"{args.steps_per_round} steps x {args.rounds} rounds after {args.warmup} warmup, on {args.device}")
    print(common.format_table(["path", "samples/s", "tokens/s", "min samples/s", "max samples/s", "views/round",
                               "tokens/round", "padded tokens/round"], rows))
    ratio = anyres.rate("samples") / single.rate("samples")
    forecast_ratio = 1 / forecast["frozen tower"]["all five"]
    print(f"anyres / single view samples/s: {ratio:.3f} measured, {1 / flop_ratio:.3f} by the FLOP formula for "
          f"this model; LLaVA-NeXT-7B forecast (frozen tower, the five images): {forecast_ratio:.3f}")
    result = {
        "bench": "anyres",
        "tokens": tokens,
        "forecast_7b": forecast,
        "size": args.size,
        "precision": args.precision,
        "images": images,
        "per_image": args.per_image,
        "single_samples_per_s": round(single.rate("samples"), 3),
        "single_tokens_per_s": round(single.rate("tokens"), 1),
        "anyres_samples_per_s": round(anyres.rate("samples"), 3),
        "anyres_tokens_per_s": round(anyres.rate("tokens"), 1),
        "flop_formula_samples_ratio": round(1 / flop_ratio, 3),
        "forecast_7b_samples_ratio": round(forecast_ratio, 3),
        # a measurement for planning, not a goal: the issue sets no target
        "ratio": round(ratio, 3),
        "target": None,
        "met": None,
    }
    common.emit(result, args.device)
    return result


if __name__ == "__main__":
    main()
