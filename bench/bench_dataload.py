"""Data loading: images/s per worker, shards -> model-ready tensors, ours vs the LLaVA-1.5 way.

Both paths turn the same COCO-like JPEGs (about 640x480, ~100-200 KB) into a normalised
(N, 3, 336, 336) float batch on ``--device``:

- ours: webdataset shards written by mm-prep from those files, read by the training stream's reader
  -> ``ImageTransform(336, CLIP mean/std,
  mode="pad", draft=True)`` -> uint8 batch -> ``normalize`` on the device;
- reference (LLaVA-1.5): loose files + a JSON index -> ``PIL.Image.open(...).convert("RGB")`` ->
  expand-to-square with the mean colour -> transformers ``CLIPImageProcessor`` (shortest_edge 336,
  crop 336) -> float batch -> device. transformers 5 has two CLIP processors; the default
  (torchvision backend) and the PIL/numpy one LLaVA-1.5 ran with (transformers 4.31). Both are
  timed and the target is judged against the faster one.

Everything runs in this one process with one torch thread, which is what a DataLoader worker gets,
so the figures are per worker.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mm.data.stream import Piece, read_pieces  # noqa: E402
from mm.transforms import ImageTransform  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 336
TARGET = 2.0
# COCO's common shapes (landscape dominates).
COCO_SHAPES = ((640, 480), (640, 427), (640, 480), (480, 640), (640, 424), (500, 375))
SAMPLES_PER_SHARD = 64


def photo_like_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """A random image with a photo's statistics: smooth shapes, mid-scale texture and sensor noise.

    Pure noise would compress far worse than a photo and flat colour far better; this mix lands at
    COCO's typical 100-200 KB for 640x480 at quality 90.
    """
    shapes = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    texture_size = (max(1, width // 8), max(1, height // 8))
    texture = Image.fromarray(rng.integers(0, 256, (*texture_size[::-1], 3), dtype=np.uint8))
    texture = texture.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(shapes, dtype=np.float32) * 0.7 + np.asarray(texture, dtype=np.float32) * 0.3
    pixels += rng.normal(0.0, 12.0, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_dataset(root: Path, num_images: int, seed: int = 0) -> tuple[list[Piece], Path, int]:
    """The same images twice: loose files + a LLaVA JSON index, and shards converted from them by mm-prep.

    Returns (one piece per shard, as the training stream resolves them; the index path; total JPEG bytes).
    """
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    index, total_bytes = [], 0
    for number in range(num_images):
        data = photo_like_jpeg(rng, *COCO_SHAPES[number % len(COCO_SHAPES)])
        total_bytes += len(data)
        key = f"coco_{number:08d}"
        (image_dir / f"{key}.jpg").write_bytes(data)
        index.append({"id": key, "image": f"{key}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A photo."}]})
    index_path = root / "index.json"
    index_path.write_text(json.dumps(index))
    return convert_to_shards(index_path, image_dir, root / "shards", num_images), index_path, total_bytes


def convert_to_shards(index_path: Path, image_dir: Path, out_dir: Path, expected: int) -> list[Piece]:
    """`mm-prep llava` (no re-encoding), then the shards as the training stream resolves them."""
    from data_prep.convert import ConvertOptions, convert
    from data_prep.llava import load_llava
    from mm.data.shards import ShardSource, resolve_source

    samples, rejections, total = load_llava(index_path, image_dir, "bench")
    options = ConvertOptions(out_dir=str(out_dir), samples_per_shard=SAMPLES_PER_SHARD, progress=False,
                             command=["bench_dataload"])
    convert(samples, rejections, options, num_input_records=total, source="bench")
    shards = resolve_source(ShardSource(urls=str(out_dir))).shards
    if sum(shard.num_samples for shard in shards) != expected:
        raise RuntimeError(f"mm-prep wrote {[(s.url, s.num_samples) for s in shards]}, expected {expected} samples")
    return [Piece(shard.url, 0, shard.num_samples) for shard in shards]


def ours_batches(shards: list[Piece], transform: ImageTransform, batch_size: int, device: str):
    """Shards -> normalised batches on ``device``: our path (the training stream's shard reader)."""
    skipped: Counter = Counter()
    pending: list[torch.Tensor] = []
    for sample in read_pieces(shards, skipped):
        record = json.loads(sample["json"])
        pending.extend(transform.load(sample[suffix]) for suffix in record["images"])
        if len(pending) >= batch_size:
            yield transform.normalize(torch.stack(pending).to(device, non_blocking=True))
            pending = []
    if pending:
        yield transform.normalize(torch.stack(pending).to(device, non_blocking=True))
    if skipped:
        raise RuntimeError(f"shard reader skipped samples of freshly written shards: {dict(skipped)}")


def llava_expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA-1.5's pad-to-square: the picture centred on a square of the mean colour."""
    width, height = image.size
    if width == height:
        return image
    square = Image.new(image.mode, (max(width, height),) * 2, background)
    square.paste(image, ((square.width - width) // 2, (square.height - height) // 2))
    return square


def reference_batches(index_path: Path, processor, batch_size: int, device: str):
    """Loose files + JSON index -> normalised batches on ``device``: the LLaVA-1.5 way."""
    image_dir = index_path.parent / "images"
    background = tuple(int(c * 255) for c in processor.image_mean)  # LLaVA's expand2square truncates
    pending: list[torch.Tensor] = []
    for entry in json.loads(index_path.read_text()):
        image = Image.open(image_dir / entry["image"]).convert("RGB")
        image = llava_expand2square(image, background)
        pending.append(torch.as_tensor(processor.preprocess(image, return_tensors="pt")["pixel_values"][0]))
        if len(pending) >= batch_size:
            yield torch.stack(pending).to(device, non_blocking=True)
            pending = []
    if pending:
        yield torch.stack(pending).to(device, non_blocking=True)


def clip_processors() -> dict[str, object]:
    """The two transformers CLIP processors, configured as LLaVA-1.5's (openai/clip-vit-large-patch14-336)."""
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    settings = dict(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                    image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return {"CLIPImageProcessor": CLIPImageProcessor(**settings),
            "CLIPImageProcessorPil": CLIPImageProcessorPil(**settings)}


def count_images(batches) -> dict[str, float]:
    return {"images": float(sum(batch.shape[0] for batch in batches))}


def pixel_gap(shards, index_path, transform, processor) -> float:
    """Mean absolute difference of the two paths' outputs for each image (matched by id, as mm-prep
    shuffles), in 0-255 pixel levels: a sanity check that both make the same picture, not a target."""
    ours = {}
    for sample in read_pieces(shards, Counter()):
        record = json.loads(sample["json"])
        ours[record["id"]] = transform.normalize(transform.load(sample[record["images"][0]])[None])[0]
    image_dir = index_path.parent / "images"
    background = tuple(int(c * 255) for c in processor.image_mean)  # LLaVA's expand2square truncates
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    gaps = []
    for entry in json.loads(index_path.read_text()):
        image = llava_expand2square(Image.open(image_dir / entry["image"]).convert("RGB"), background)
        reference = torch.as_tensor(processor.preprocess(image, return_tensors="pt")["pixel_values"][0])
        gaps.append(float(((ours[entry["id"]] - reference).abs() * std * 255).mean()))
    return sum(gaps) / len(gaps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--images", type=int, default=None, help="images per round (default 96 quick, 512 full)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the images (default: a temp dir)")
    args = parser.parse_args(argv)
    num_images = args.images or (96 if args.quick else 512)
    rounds = args.rounds or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else 1
    torch.set_num_threads(args.threads or 1)  # a DataLoader worker runs with one thread

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        shards, index_path, total_bytes = write_dataset(Path(tmp), num_images)
        transform = ImageTransform(IMAGE_SIZE, CLIP_MEAN, CLIP_STD, mode="pad", draft=True)
        processors = clip_processors()
        paths = {"ours: shards + ImageTransform(draft) + uint8": lambda _: count_images(
            ours_batches(shards, transform, args.batch_size, args.device))}
        for name, processor in processors.items():
            paths[f"LLaVA-1.5: files + {name}"] = (lambda p: lambda _: count_images(
                reference_batches(index_path, p, args.batch_size, args.device)))(processor)
        results = common.alternate(paths, rounds=rounds, warmup=warmup, device=args.device)
        if args.profile:
            print(common.profile_paths(paths))
        gap = pixel_gap(shards, index_path, transform, processors["CLIPImageProcessor"])
    return report(args, results, gap, num_images, total_bytes, rounds, warmup)


def report(args, results, gap: float, num_images: int, total_bytes: int, rounds: int, warmup: int) -> dict:
    ours_name, *reference_names = list(results)
    ours_rate = results[ours_name].rate("images")
    rates = {name: results[name].rate("images") for name in reference_names}
    strictest = max(rates, key=rates.get)
    ratio = ours_rate / rates[strictest]
    rows = [[name, result.rate("images"), *result.spread("images"), ours_rate / result.rate("images")]
            for name, result in results.items()]
    print(f"{num_images} COCO-like JPEGs ({total_bytes / num_images / 1e3:.0f} KB mean) -> ({IMAGE_SIZE}x{IMAGE_SIZE}) "
          f"batches of {args.batch_size} on {args.device}; {rounds} rounds after {warmup} warmup, "
          f"{torch.get_num_threads()} torch thread(s)")
    print(common.format_table(["path", "images/s (median)", "min", "max", "ours / path"], rows))
    print(f"mean |ours - reference| = {gap:.2f} pixel levels (0-255)")
    result = {
        "bench": "dataload",
        "unit": "images/s per worker",
        "ours": round(ours_rate, 2),
        "reference": {name: round(rate, 2) for name, rate in rates.items()},
        "ratio": round(ratio, 3),
        "ratio_against": strictest,
        "target": TARGET,
        "met": ratio >= TARGET,
        "images": num_images,
        "mean_jpeg_kb": round(total_bytes / num_images / 1e3, 1),
        "mean_abs_pixel_gap": round(gap, 3),
        "rounds": rounds,
    }
    common.emit(result, args.device)
    return result


if __name__ == "__main__":
    main()
