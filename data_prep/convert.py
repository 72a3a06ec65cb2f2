"""The one conversion path every `mm-prep` command uses: samples -> shuffled, planned, resumable shards.

1. image files are stat'ed (missing ones rejected; sizes feed `--max-shard-bytes`), and duplicate
   ids settled: the first copy that passes every check is kept;
2. samples are shuffled with the seed and cut into shards; the plan depends only on the input and
   the options, so a rerun recomputes the same shards and skips those already complete;
3. shards are written by `--workers` processes (one shard per task);
4. `rejected.jsonl`, `sizes.json` and `manifest.json` are rewritten atomically from the plan's
   rejections and the shards' saved results, so they never hold duplicates.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import sys
import tarfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

from tqdm import tqdm

from mm.atomic import write_json_atomic, write_text_atomic
from data_prep.images import CHECK_MODES
from data_prep.records import MISSING_IMAGE, IdRegistry, RecordError, Rejection, Sample, id_text
from data_prep.shards import PROGRESS_DIR, TAR_BLOCK, ShardResult, ShardTask, load_completed, load_image, write_shard

FORMAT = "mm-shards/1"
PLAN_FILE = "plan.json"


class OutputDirError(RuntimeError):
    """The output directory holds a different conversion."""


class ConversionInterrupted(RuntimeError):
    """A worker process died; the run can be resumed."""


@dataclass
class ConvertOptions:
    """How samples become shards (shared by the llava, vqa and synth commands)."""

    out_dir: str
    """Directory for shards, manifest.json, sizes.json and rejected.jsonl."""
    seed: int = 0
    """Seed of the shuffle before writing."""
    samples_per_shard: int = 1000
    """Most samples in one shard."""
    max_shard_bytes: int = 1_000_000_000
    """Most bytes in one shard (estimated from file sizes; a larger single sample gets its own shard)."""
    workers: int = 1
    """Processes writing shards, one shard per task."""
    max_image_side: int | None = None
    """Re-encode images whose longer side exceeds this; others are copied verbatim."""
    check: str = "fast"
    """Image check: 'fast' (headers + integrity markers) or 'full' (decode every image)."""
    overwrite: bool = False
    """Delete a different earlier conversion in out_dir instead of refusing."""
    progress: bool = True
    """Show a progress bar."""
    command: list[str] | None = None
    """The command line recorded in the manifest (default: sys.argv)."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1 or self.max_shard_bytes < 1 or self.workers < 1:
            raise ValueError("samples_per_shard, max_shard_bytes and workers must be >= 1")
        if self.max_image_side is not None and self.max_image_side < 1:
            raise ValueError("max_image_side must be >= 1")
        if self.check not in CHECK_MODES:
            raise ValueError(f"unknown check mode {self.check!r}; valid: {', '.join(CHECK_MODES)}")


def _stat_images(samples: list[Sample], progress: bool) -> tuple[list[Sample], list[Rejection], dict[int, int]]:
    """Reject samples with a missing image file; return the rest and each sample's image bytes."""
    kept, rejected, image_bytes = [], [], {}
    for sample in tqdm(samples, desc="checking files", unit="sample", disable=not progress, dynamic_ncols=True):
        total = 0
        try:
            for ref in sample.images:
                if ref.data is not None:
                    total += len(ref.data)
                    continue
                stat = os.stat(ref.path)
                if not S_ISREG(stat.st_mode):
                    raise FileNotFoundError(f"{ref.name!r} is not a regular file")
                total += stat.st_size
        except OSError as error:
            rejected += sample.reject(MISSING_IMAGE, f"image {ref.name!r}: {error.strerror or error}")
            continue
        kept.append(sample)
        image_bytes[sample.index] = total
    return kept, rejected, image_bytes


def _claim_ids(samples: list[Sample], options: ConvertOptions) -> tuple[list[Sample], list[Rejection]]:
    """Give each sample its key, in input order; of samples sharing an id, the first whose images
    pass the check is kept (their images are checked here, so a bad first copy cannot take a good
    later one down with it) and the others are rejected as duplicates."""
    copies = Counter(id_text(sample.id) for sample in samples)
    registry, kept, rejected = IdRegistry(), [], []
    for sample in samples:
        try:
            if copies[id_text(sample.id)] > 1 and sample.id not in registry:
                for ref in sample.images:
                    load_image(ref, options.check, options.max_image_side)
            sample.key = registry.claim(sample.id)
        except RecordError as bad:
            rejected += sample.reject(bad.reason, bad.detail)
            continue
        kept.append(sample)
    return kept, rejected


_TAR_END = 2 * TAR_BLOCK + tarfile.RECORDSIZE  # end-of-archive blocks + the most padding tarfile adds


def _estimated_bytes(sample: Sample, image_bytes: int) -> int:
    """Bytes the sample adds to a tar (exact unless images get re-encoded)."""
    parts = [sample.id, sample.source, sample.conversations, sample.meta] + ([sample.fields] if sample.fields else [])
    text = json.dumps(parts, ensure_ascii=False, default=str)
    json_bytes = len(text.encode("utf-8")) + 64 * len(sample.images) + 256
    members = 1 + len(sample.images)
    return image_bytes + json_bytes + members * 2 * TAR_BLOCK  # header + padding per member


def plan_shards(samples: list[Sample], image_bytes: dict[int, int], options: ConvertOptions) -> list[list[Sample]]:
    """Shuffle with the seed and cut into shards by sample count and estimated bytes."""
    order = list(samples)
    random.Random(options.seed).shuffle(order)
    shards: list[list[Sample]] = []
    current, current_bytes = [], _TAR_END
    for sample in order:
        size = _estimated_bytes(sample, image_bytes[sample.index])
        if current and (len(current) == options.samples_per_shard or current_bytes + size > options.max_shard_bytes):
            shards.append(current)
            current, current_bytes = [], _TAR_END
        current.append(sample)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def _fingerprint(samples: list[Sample], image_bytes: dict[int, int], options: ConvertOptions) -> str:
    digest = hashlib.sha256(json.dumps([FORMAT, options.check, options.max_image_side]).encode())
    for sample in samples:
        images = [[ref.name, hashlib.sha256(ref.data).hexdigest() if ref.data is not None else ref.path] for ref in sample.images]
        entry = [sample.key, sample.index, sample.id, sample.source, sample.conversations, sample.meta, images, image_bytes[sample.index]]
        if sample.fields:  # only then: earlier conversions keep their fingerprints (and resume)
            entry.append(sample.fields)
        digest.update(json.dumps(entry, sort_keys=True, default=str).encode())
    return digest.hexdigest()


_RESULT_FILES = ("manifest.json", "sizes.json", "rejected.jsonl")


def looks_like_shard_set(name: str) -> bool:
    """A name a conversion writes, or a shard reader reads, in a shard directory."""
    return name.startswith("shard-") or name.endswith((".tar", ".tar.tmp")) or name in (
        *_RESULT_FILES, "dropped.jsonl", PROGRESS_DIR,
    )  # fmt: skip


def _read_plan(out_dir: Path) -> dict | None:
    try:
        plan = json.loads((out_dir / PROGRESS_DIR / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def _earlier_files(out_dir: Path, plan: dict) -> set[str]:
    """The files in `out_dir` an earlier conversion wrote: those its plan lists (a plan from before they were
    listed: the shards whose result it saved, and the result files)."""
    files = plan.get("files")
    if not isinstance(files, list):
        files = [path.name.removesuffix(".json") for path in (out_dir / PROGRESS_DIR).glob("shard-*.tar.json")]
        files += [path.name.removesuffix(".tmp") for path in out_dir.glob("shard-[0-9]*.tar.tmp")]  # killed mid-shard
        files += _RESULT_FILES
    names = {name for name in files if isinstance(name, str) and Path(name).name == name}
    return names | {name + ".tmp" for name in names}


def _prepare_out_dir(out_dir: Path, plan_fingerprint: str, files: list[str], overwrite: bool) -> None:
    """Refuse (or with `overwrite`, clear) an output directory holding a different conversion. Only files an
    earlier conversion recorded as its own are removed: shards that are not (another command's, copied in)
    are refused, with or without `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} exists and is not a directory")
    plan = _read_plan(out_dir)
    present = sorted(path.name for path in out_dir.iterdir() if looks_like_shard_set(path.name)) if out_dir.exists() else []
    if present and (plan or {}).get("fingerprint") != plan_fingerprint:
        if not overwrite:
            raise OutputDirError(
                f"{out_dir} holds shards from a different conversion (other input or options); "
                "use another --out or pass --overwrite to replace them"
            )
        _remove_earlier_conversion(out_dir, plan, present)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputDirError(f"--out {out_dir} is not writable")
    write_json_atomic(out_dir / PROGRESS_DIR / PLAN_FILE, {"fingerprint": plan_fingerprint, "files": files})


def _remove_earlier_conversion(out_dir: Path, plan: dict | None, present: list[str]) -> None:
    if plan is None:
        raise OutputDirError(f"{out_dir} holds shards mm-prep did not convert there (no {PROGRESS_DIR}/{PLAN_FILE}); "
                             "--overwrite replaces only an earlier conversion: use another --out")  # fmt: skip
    ours = _earlier_files(out_dir, plan)
    foreign = [name for name in present if name not in ours and name != PROGRESS_DIR]
    if foreign:
        raise OutputDirError(f"{out_dir}: {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''} beside an earlier "
                             "conversion were not written by it; move them away or use another --out")  # fmt: skip
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputDirError(f"--out {out_dir} is not writable")
    # the manifest first: a reader never sees the old manifest over missing shards
    for name in sorted(ours & set(present), key=lambda name: (name != "manifest.json", name)):
        (out_dir / name).unlink()
        (out_dir / PROGRESS_DIR / f"{name}.json").unlink(missing_ok=True)


def _run_tasks(tasks: list[ShardTask], workers: int, bar: tqdm) -> list[ShardResult]:
    if workers == 1 or len(tasks) <= 1:
        return [write_shard(task, bar.update) for task in tasks]
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:  # workers fork from a clean server with the shard writer imported
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["data_prep.shards"])
    else:
        context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # Workers wait on the reading end; only this process holds the writing end, so they see EOF
    # and exit when it dies, even by SIGKILL (they are the forkserver's children, not ours).
    parent_alive, parent_handle = context.Pipe(duplex=False)
    # An executor, not multiprocessing.Pool: a worker killed from outside (e.g. out of memory)
    # fails its futures instead of leaving the run waiting forever.
    with parent_alive, parent_handle, ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context,
                                                          initializer=_init_worker, initargs=(queue, parent_alive)) as pool:
        futures = [pool.submit(_worker_write_shard, task) for task in tasks]
        while not all(future.done() for future in futures):
            _drain(queue, bar, timeout=0.1)
        _drain(queue, bar, timeout=0)
        try:
            return [future.result() for future in futures]  # re-raises a worker's exception
        except BrokenProcessPool:
            raise ConversionInterrupted("a worker process died (killed, out of memory?); "
                                        "complete shards are kept: rerun the same command to resume") from None


_progress_queue = None


def _init_worker(queue, parent_alive) -> None:
    global _progress_queue
    _progress_queue = queue
    threading.Thread(target=_exit_with_parent, args=(parent_alive,), daemon=True).start()


def _exit_with_parent(parent_alive) -> None:
    """Returns only at EOF (the parent never writes): the parent is gone, so stop writing shards."""
    parent_alive.poll(None)
    os._exit(1)


def _worker_write_shard(task: ShardTask) -> ShardResult:
    return write_shard(task, _progress_queue.put)


def _drain(queue, bar: tqdm, timeout: float) -> None:
    import queue as queue_module

    try:
        bar.update(queue.get(timeout=timeout) if timeout else queue.get_nowait())
        while True:
            bar.update(queue.get_nowait())
    except queue_module.Empty:
        pass


@dataclass
class ConvertResult:
    """What `convert` wrote, as recorded in manifest.json."""

    manifest: dict
    shards_written: int
    shards_skipped: int
    seconds: float
    rejected: list[dict] = field(default_factory=list)


def convert(samples: list[Sample], rejections: list[Rejection], options: ConvertOptions, *,
            num_input_records: int, source: str, input_info: dict[str, Any] | None = None) -> ConvertResult:  # fmt: skip
    """Write `samples` as shards in `options.out_dir`; `rejections` are the converter's own."""
    start = time.perf_counter()
    out_dir = Path(options.out_dir)
    samples, missing, image_bytes = _stat_images(samples, options.progress)
    samples, duplicates = _claim_ids(samples, options)
    shards = plan_shards(samples, image_bytes, options)
    names = [f"shard-{i:06d}.tar" for i in range(len(shards))]
    fingerprints = [_fingerprint(shard, image_bytes, options) for shard in shards]
    plan_fingerprint = hashlib.sha256(json.dumps([names, fingerprints]).encode()).hexdigest()
    _prepare_out_dir(out_dir, plan_fingerprint, [*names, *_RESULT_FILES], options.overwrite)
    tasks = [ShardTask(str(out_dir), name, shard, fp, options.check, options.max_image_side)
             for name, shard, fp in zip(names, shards, fingerprints)]  # fmt: skip
    done = {task.name: load_completed(task) for task in tasks}
    todo = [task for task in tasks if done[task.name] is None]
    skipped_samples = sum(len(task.samples) for task in tasks if done[task.name] is not None)
    with tqdm(total=len(samples), initial=skipped_samples, unit="sample", desc="writing shards",
              disable=not options.progress, dynamic_ncols=True) as bar:  # fmt: skip
        for result in _run_tasks(todo, options.workers, bar):
            done[result.name] = result
    for name in names:  # a killed run's partial shards; this plan's names only
        (out_dir / f"{name}.tmp").unlink(missing_ok=True)
    results = [done[name] for name in names]
    rejected = sorted([r.to_json() for r in (*rejections, *missing, *duplicates)] + [r for res in results for r in res.rejected],
                      key=lambda row: row["index"])  # fmt: skip
    manifest = _manifest(results, rejected, options, num_input_records, source, input_info or {})
    # ASCII-escaped JSON: a rejected record's text may not be encodable as UTF-8 (lone surrogates).
    write_text_atomic(out_dir / "rejected.jsonl", "".join(json.dumps(row) + "\n" for row in rejected))
    write_json_atomic(out_dir / "sizes.json", {r.name: r.num_samples for r in results})
    write_json_atomic(out_dir / "manifest.json", manifest)
    return ConvertResult(manifest, len(todo), len(tasks) - len(todo), time.perf_counter() - start, rejected)


def _manifest(results: list[ShardResult], rejected: list[dict], options: ConvertOptions,
              num_input_records: int, source: str, input_info: dict) -> dict:  # fmt: skip
    from mm import __version__

    shards = [{k: v for k, v in asdict(r).items() if k not in ("rejected", "fingerprint")} for r in results]
    written = sum(r.num_records for r in results)
    if written + len(rejected) != num_input_records:  # the accounting promise: nothing lost silently
        raise AssertionError(f"{num_input_records} records in, {written} written + {len(rejected)} rejected")
    return {
        "format": FORMAT,
        "mm_version": __version__,
        "command": list(options.command if options.command is not None else sys.argv),
        "source": source,
        "input": input_info,
        "options": {k: getattr(options, k) for k in ("seed", "samples_per_shard", "max_shard_bytes", "max_image_side", "check")},
        "num_input_records": num_input_records,
        "num_records_written": written,
        "num_samples": sum(r.num_samples for r in results),
        "num_images": sum(r.num_images for r in results),
        "num_bytes": sum(r.num_bytes for r in results),
        "num_shards": len(results),
        "num_rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(row["reason"] for row in rejected).items())),
        "shards": shards,
    }


def format_summary(result: ConvertResult) -> str:
    """Human-readable end-of-run summary."""
    m = result.manifest
    rate = m["num_samples"] / result.seconds if result.seconds else 0.0
    lines = [
        f"{m['num_input_records']} input records: {m['num_records_written']} written as {m['num_samples']} samples "
        f"({m['num_images']} images, "
        f"{m['num_bytes'] / 1e6:.1f} MB in {m['num_shards']} shards), {m['num_rejected']} rejected",
        f"shards written {result.shards_written}, already complete {result.shards_skipped}; "
        f"{result.seconds:.1f} s ({rate:.0f} samples/s)",
    ]
    lines += [f"  rejected {reason}: {count}" for reason, count in m["rejected_by_reason"].items()]
    if m["num_rejected"]:
        lines.append("  (details in rejected.jsonl)")
    return "\n".join(lines)
