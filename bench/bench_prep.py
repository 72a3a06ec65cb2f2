"""Conversion speed of `mm-prep llava`: images/s per core for COCO-size JPEGs, no re-encoding.

A LLaVA JSON index over N COCO-like JPEGs (about 640x480, 100-200 KB, the photo-like generator of
bench_dataload) is converted to shards end to end (annotation loading, stat, header check, tar
writing, manifest) with `--workers 1` and `--workers 2`. For context the same work is timed the
naive way: every image fully decoded with PIL to validate it, bytes written with webdataset's
TarWriter, one process.

Input files are written once (unique images cycled to save generation time; every file is its
own file on disk) and are in the page cache when timed, so the figure is the CPU cost of
conversion, not the disk's speed. Paths run alternately, each round into an empty directory.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from data_prep.convert import ConvertOptions, convert  # noqa: E402
from data_prep.llava import load_llava  # noqa: E402

TARGET_PER_CORE = 1500.0
UNIQUE_IMAGES = 200


def write_inputs(root: Path, num_images: int) -> tuple[Path, Path, int]:
    """`num_images` JPEG files and a LLaVA JSON index; returns (index, image root, total bytes)."""
    # Imported here: worker processes re-import this script, and bench_dataload pulls in torch.
    from bench_dataload import COCO_SHAPES, photo_like_jpeg
    rng = np.random.default_rng(0)
    unique = [photo_like_jpeg(rng, *COCO_SHAPES[i % len(COCO_SHAPES)]) for i in range(min(UNIQUE_IMAGES, num_images))]
    images = root / "images"
    images.mkdir(parents=True)
    records, total = [], 0
    for number in range(num_images):
        data = unique[number % len(unique)]
        name = f"{number // 1000:03d}/COCO_train2014_{number:012d}.jpg"
        (images / name).parent.mkdir(exist_ok=True)
        (images / name).write_bytes(data)
        total += len(data)
        records.append({"id": f"{number:012d}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A photo."}]})
    index = root / "index.json"
    index.write_text(json.dumps(records))
    return index, images, total


def ours(index: Path, images: Path, out: Path, workers: int) -> int:
    samples, rejections, total = load_llava(index, images, "bench")
    options = ConvertOptions(out_dir=str(out), workers=workers, samples_per_shard=1000, progress=False, command=["bench"])
    result = convert(samples, rejections, options, num_input_records=total, source="bench")
    assert result.manifest["num_samples"] == total, result.manifest["rejected_by_reason"]
    return total


def naive(index: Path, images: Path, out: Path) -> int:
    """Validate by decoding every image, write with webdataset's TarWriter (one process)."""
    import webdataset as wds

    records = json.loads(index.read_text())
    out.mkdir(parents=True)
    for start in range(0, len(records), 1000):
        with wds.TarWriter(str(out / f"shard-{start // 1000:06d}.tar")) as writer:
            for record in records[start : start + 1000]:
                data = (images / record["image"]).read_bytes()
                Image.open(io.BytesIO(data)).convert("RGB")
                writer.write({"__key__": record["id"], "json": json.dumps(record).encode(), "img0.jpg": data})
    return len(records)


def measure(paths: dict, out_root: Path, rounds: int, warmup: int) -> dict[str, common.PathResult]:
    """Alternate the paths; each run starts from an empty output directory (not timed)."""
    results = {name: common.PathResult(name) for name in paths}
    for index in range(warmup + rounds):
        for name, run in paths.items():
            out = out_root / "out"
            shutil.rmtree(out, ignore_errors=True)
            start, cpu_start = time.perf_counter(), time.process_time()
            count = run(out)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if index >= warmup:
                results[name].rounds.append(common.Round(seconds, {"images": count, "cpu_s": cpu}))
    return results


def cpu_rate(result: common.PathResult) -> float:
    """Median images per CPU-second of this process: the per-core cost, whatever else runs on the
    machine (meaningful for in-process paths only; worker processes are not counted)."""
    return statistics.median(r.counts["images"] / r.counts["cpu_s"] for r in result.rounds)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 images, 2 rounds; well under 2 minutes")
    parser.add_argument("--images", type=int, default=None, help="images (default 10,000; 1,000 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per path (default 3; 2 quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per path")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive decode-everything path")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    num_images = args.images or (1000 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 3)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        index, images, total_bytes = write_inputs(Path(tmp), num_images)
        paths = {f"mm-prep --workers {w}": (lambda w: lambda out: ours(index, images, out, w))(w) for w in (1, 2)}
        if not args.no_naive:
            paths["naive: PIL decode + wds.TarWriter, 1 process"] = lambda out: naive(index, images, out)
        results = measure(paths, Path(tmp), rounds, args.warmup)

    cores = {"mm-prep --workers 1": 1, "mm-prep --workers 2": 2}
    in_process = [name for name in results if name != "mm-prep --workers 2"]
    rows = []
    for name, result in results.items():
        rate = result.rate("images")
        low, high = result.spread("images")
        rows.append([name, rate, low, high, rate / cores.get(name, 1), cpu_rate(result) if name in in_process else "-"])
    wall_per_core = {name: results[name].rate("images") / n for name, n in cores.items()}
    cpu_per_core = cpu_rate(results["mm-prep --workers 1"])
    print(f"{num_images} COCO-like JPEGs ({total_bytes / num_images / 1e3:.0f} KB mean, warm page cache), "
          f"no re-encoding; {rounds} rounds after {args.warmup} warmup; {common.usable_cores()} usable cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(common.format_table(["path", "images/s (median)", "min", "max", "per core (wall)", "per CPU-second"], rows))
    result = {
        "bench": "prep",
        "unit": "images/s per core",
        "per_core_wall": {name: round(rate, 1) for name, rate in wall_per_core.items()},
        "per_core_cpu": round(cpu_per_core, 1),
        "images_per_s": {name: round(results[name].rate("images"), 1) for name in results},
        "ratio": round(cpu_per_core / TARGET_PER_CORE, 3),
        "ratio_against": f"target of {TARGET_PER_CORE:.0f} images per CPU-second (--workers 1; wall figures beside it)",
        "target": 1.0,
        "met": cpu_per_core >= TARGET_PER_CORE,
        "images": num_images,
        "mean_jpeg_kb": round(total_bytes / num_images / 1e3, 1),
        "rounds": rounds,
        "load_average": round(os.getloadavg()[0], 2),
    }
    common.emit(result, "cpu")
    return result


if __name__ == "__main__":
    main()
