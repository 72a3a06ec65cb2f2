"""`mm-prep score`: run the scorers over a shard directory, resumably, over torchrun ranks, into one JSONL.

Files beside ``--out`` while a run is in progress (all removed when it completes):

- ``OUT.partial`` (one process) or ``OUT.rank{R}.partial`` (under torchrun): score lines, appended and
  fsynced per batch; a rerun of the same command skips the keys in any of them (a torn last line, from a
  kill mid-write, is cut off and that sample scored again);
- ``OUT.partial.json``: the run's settings (the shard set's fingerprint among them); a rerun with other
  settings over leftover partial files that hold score lines is an error, so lines of two different runs are
  never mixed. A run that fails before scoring anything removes the partial files it created, so the
  corrected command is never blocked by them; leftover partial files without a line are not a run to resume.

At the end rank 0 merges, by key, the lines already in ``OUT`` (earlier runs, other metrics) with the new
ones (whose metric columns replace the old values of those metrics) and writes ``OUT`` atomically.
``OUT.meta.json`` records which shard set the lines score (``shard_set``, see ``shard_set``): merging into an
``OUT`` that scores another set, or one written before sets were recorded, is refused unless
``--merge-other-shards`` says the keys name the same samples.
Each sample goes to exactly one rank: sample i (in shard order) to rank i % WORLD_SIZE.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.inspect_shards import ShardSample, iter_samples, loading_option, shard_paths
from data_prep.score import METRICS, MODEL_METRICS
from data_prep.score.model_free import LengthScorer, MinHashScorer, MinHashSettings, PHashScorer
from data_prep.score.shard_set import (
    MERGED_SHARD_SETS,
    SHARD_SET,
    describe,
    provenance_path,
    read_provenance,
    same_shard_set,
    shard_set_identity,
)
from mm.atomic import BadLine, read_appended_lines, write_json_atomic, write_text_atomic
from mm.cli_errors import BadInput

IDENTITY = ("key", "id", "source")


def metric_columns(metric: str, with_tokens: bool = True) -> tuple[str, ...]:
    """The columns a metric writes (and replaces when rerun)."""
    if metric in MODEL_METRICS:
        return (metric, f"{metric}_turns", f"{metric}_error")
    if metric == "length":
        return ("num_tokens",) * with_tokens + ("num_words", "num_turns", "num_images")
    if metric == "minhash":
        return ("minhash", "minhash_params")
    return (metric, f"{metric}_error")


def parse_metrics(text: str) -> list[str]:
    """"loss,ifd" -> ["loss", "ifd"]; an unknown name is an error listing the valid ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise BadInput(f"--metrics: unknown metrics {unknown or [text]}; valid metrics: {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


@dataclass
class ScoreOptions:
    shards: str
    out: str
    metrics: list[str]
    checkpoint: str | None = None
    tokenizer: str | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None
    limit: int | None = None
    max_length: int | None = None
    minhash: MinHashSettings = field(default_factory=MinHashSettings)
    progress: bool = True
    trust_remote_code: bool = False
    merge_other_shards: bool = False

    @property
    def needs_model(self) -> bool:
        return any(m in MODEL_METRICS for m in self.metrics)

    @property
    def needs_clip(self) -> bool:
        return "clip" in self.metrics

    @property
    def tokenizer_source(self) -> str | None:
        return self.tokenizer or self.checkpoint


def check_options(options: ScoreOptions) -> None:
    """Bad input as one clear error, before any model is loaded or any file written."""
    if not Path(options.shards).is_dir():
        raise FileNotFoundError(f"{options.shards}: no such shard directory")
    shard_paths(options.shards)  # no shards, or an unreadable manifest: said now, not after creating files
    if options.needs_model and not options.checkpoint:
        raise ValueError(f"metrics {[m for m in options.metrics if m in MODEL_METRICS]} need --checkpoint")
    if options.checkpoint and not Path(options.checkpoint).exists() and (options.needs_model or not options.tokenizer):
        raise FileNotFoundError(f"--checkpoint {options.checkpoint}: no such checkpoint directory")
    if options.needs_clip and not (options.clip_model and options.clip_pretrained):
        raise ValueError("metric clip needs --clip-model and --clip-pretrained (an open_clip tag or a weights file)")
    for name in ("batch_size", "limit", "max_length"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if "minhash" in options.metrics and (options.minhash.num_perm < 1 or options.minhash.shingle_words < 1):
        raise ValueError("--minhash-perm and --minhash-shingle must be at least 1")
    check_out_path(Path(options.out))
    if options.needs_model or options.needs_clip:
        check_device(options.device)


def check_out_path(out: Path) -> None:
    """--out names a file we can create: not a folder, under a folder (or one we can make) we may write in."""
    if "\0" in str(out):
        raise BadInput(f"--out {str(out)!r}: a path cannot hold a NUL byte")
    if out.is_dir():
        raise BadInput(f"--out {out} is a folder; it names the scores file (JSONL)")
    folder = out.absolute().parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent  # the nearest folder that exists: mkdir will create the rest in it
    if not folder.is_dir():
        raise BadInput(f"--out {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: cannot write in {folder} (read-only or no permission)")


def check_device(name: str | None) -> None:
    import torch

    if name is None:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {name!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device is available here")


def resume_record(options: ScoreOptions, dtype_name: str | None, shard_set: dict) -> dict:
    """What must match between a run and the partial files it continues."""
    def where(path):
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    record = {"shards": where(options.shards), "shard_set": shard_set["fingerprint"], "metrics": options.metrics,
              "limit": options.limit}  # fmt: skip
    if options.needs_model:
        record.update(checkpoint=where(options.checkpoint), dtype=dtype_name, max_length=options.max_length)
    if options.needs_clip:
        record.update(clip_model=options.clip_model, clip_pretrained=where(options.clip_pretrained))
    if "minhash" in options.metrics:
        record["minhash"] = options.minhash.as_dict()
    if "length" in options.metrics:
        record["tokenizer"] = where(options.tokenizer_source)
    return record


# ---------------------------------------------------------------------------------------------- files
def part_path(out: Path, rank: int, world_size: int) -> Path:
    return out.with_name(f"{out.name}.partial" if world_size == 1 else f"{out.name}.rank{rank}.partial")


def settings_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.partial.json")


def existing_parts(out: Path) -> list[Path]:
    """Every partial file of ``out`` (of any world size)."""
    pattern = glob.escape(str(out.with_name(out.name))) + ".rank*.partial"
    return [p for p in [part_path(out, 0, 1), *sorted(Path(p) for p in glob.glob(pattern))] if p.exists()]


def read_lines(path: Path, *, torn_tail: bool = False, truncate: bool = False) -> list[dict]:
    """Score lines of a file. With ``torn_tail`` an unterminated or unreadable *last* line (a kill mid-write)
    is left out, and cut off the file with ``truncate``; any other bad line is an error naming the line."""
    try:
        records, good_end = read_appended_lines(path, _score_line, torn_tail=torn_tail)
    except BadLine as bad:
        raise ValueError(f"{path}:{bad.number}: not a score line ({bad.message})") from None
    if truncate and good_end < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return records


def _score_line(line: bytes) -> dict:
    try:
        record = json.loads(line.decode("utf-8"), parse_constant=_not_json, parse_float=_finite_float)
    except RecursionError:  # nesting deeper than the parser's stack: no line we wrote
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        raise ValueError("not a JSON object with a string 'key'")
    return record


def _not_json(constant: str):
    """NaN and Infinity: Python's json reads them, but no score line holds one (we write strict JSON)."""
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: beyond float range, it would be written back as Infinity
        raise ValueError(f"{text} is beyond float range")
    return value


def append_lines(path: Path, rows: list[dict]) -> None:
    """Append whole lines and fsync: a kill loses at most the batch in flight."""
    text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def merge_into(out: Path, parts: list[Path], key_order: list[str], owned: set[str]) -> int:
    """Merge ``out``'s lines with the partial files' by key (the new columns ``owned`` by this run's metrics
    replace old ones); keys in shard order, then keys only ``out`` had. Atomic; returns the line count."""
    merged: dict[str, dict] = {}
    if out.exists():
        for record in read_lines(out):
            merged[record["key"]] = record
    for part in parts:
        for record in read_lines(part, torn_tail=True):
            old = {k: v for k, v in merged.get(record["key"], {}).items() if k not in owned}
            merged[record["key"]] = {**{k: record[k] for k in IDENTITY if k in record}, **old, **record}
    known = set(key_order)
    order = [k for k in key_order if k in merged] + [k for k in merged if k not in known]
    write_text_atomic(out, "".join(json.dumps(merged[k], ensure_ascii=False, allow_nan=False) + "\n" for k in order))
    return len(order)


def write_provenance(out: Path, scorers: list, shard_set: dict, merged_from: list | None = None) -> None:
    """``OUT.meta.json``: {metric: how its columns were made (checkpoint, template, dtype, clip model, minhash
    parameters, tokenizer)}, updated per run like the columns; ``shard_set``: the set the lines score, and
    ``merged_shard_sets``: other sets merged in with --merge-other-shards (null: one never recorded)."""
    meta = read_provenance(out)
    for scorer in scorers:
        meta.update(scorer.settings())
    if merged_from is not None:
        earlier = meta.get(MERGED_SHARD_SETS)
        meta[MERGED_SHARD_SETS] = [*(earlier if isinstance(earlier, list) else []), *merged_from]
    meta[SHARD_SET] = shard_set
    write_json_atomic(provenance_path(out), meta)


def other_shard_sets(out: Path, out_lines: list[dict], shard_set: dict, merge: bool) -> list | None:
    """The recorded shard sets of ``out`` that are not ``shard_set`` (None when there are none): refused
    unless ``merge``, as keys alone cannot tell two sets apart (two synth seeds name their samples alike)."""
    recorded = read_provenance(out).get(SHARD_SET) if out_lines else shard_set
    if same_shard_set(recorded, shard_set):
        return None
    if merge:
        return [recorded]
    if recorded is None:
        raise BadInput(f"--out {out} holds scores written before mm-prep recorded their shard set, so they may score "
                       f"other samples under the same keys: pass --merge-other-shards if they score {shard_set['directory']}, "
                       "or choose another --out")  # fmt: skip
    raise BadInput(f"--out {out} holds scores of another shard set, {describe(recorded)}, not {describe(shard_set)}; "
                   "the same keys may name other samples: choose another --out, delete it to start over, or pass "
                   "--merge-other-shards to merge anyway")  # fmt: skip


# ---------------------------------------------------------------------------------------------- scorers
def build_scorers(options: ScoreOptions, device: str | None, dtype) -> tuple[list, list[str]]:
    """The scorers of the requested metrics, and notes for the user (e.g. a column left out)."""
    scorers, notes = [], []
    model = None
    if options.needs_model:
        from data_prep.score.model_metrics import ModelScorer
        from mm.loading import load_for_inference

        model, dtype = load_for_inference(options.checkpoint, device, options.dtype,
                                          trust_remote_code=options.trust_remote_code)
        scorers.append(ModelScorer(model, [m for m in options.metrics if m in MODEL_METRICS], dtype,
                                   options.batch_size, options.max_length, options.checkpoint))  # fmt: skip
    if options.needs_clip:
        from data_prep.score.clip_metric import ClipScorer

        scorers.append(ClipScorer(options.clip_model, options.clip_pretrained, device, options.batch_size))
    if "phash" in options.metrics:
        scorers.append(PHashScorer())
    if "minhash" in options.metrics:
        scorers.append(MinHashScorer(options.minhash))
    if "length" in options.metrics:
        tokenizer = None
        if model is not None and not options.tokenizer:
            tokenizer = model.tokenizer
        elif options.tokenizer_source:
            from mm.llm import load_tokenizer

            option = "--tokenizer" if options.tokenizer else "--checkpoint"
            with loading_option(option, options.tokenizer_source, "tokenizer"):
                tokenizer = load_tokenizer(options.tokenizer_source, trust_remote_code=options.trust_remote_code)
        else:
            notes.append("num_tokens left out: no --tokenizer or --checkpoint to count tokens with")
        scorers.append(LengthScorer(tokenizer, options.tokenizer_source))
    return scorers, notes


def score_batch(scorers: list, batch: list[ShardSample]) -> list[dict]:
    rows = [{"key": s.key, "id": s.record.get("id"), "source": s.record.get("source")} for s in batch]
    for scorer in scorers:
        for row, columns in zip(rows, scorer.score(batch)):
            row.update(columns)
    return rows


# ---------------------------------------------------------------------------------------------- run
def _shard_total(shards: str, limit: int | None) -> int | None:
    from mm.data.shards import load_shard_sizes

    manifest = Path(shards) / "manifest.json"
    if not manifest.exists():
        return limit
    total = sum(load_shard_sizes(str(manifest)).values())
    return min(total, limit) if limit is not None else total


def run_score(options: ScoreOptions) -> dict:
    """Score every sample of ``options.shards`` (this rank's share) and, on rank 0, merge into ``options.out``.
    Returns {"scored", "skipped_done", "lines", "notes"} (lines only on rank 0)."""
    from eval.distributed import Ranks, barrier, init_process_group

    check_options(options)
    ranks = Ranks.from_env()
    device, dtype_name = None, None
    if options.needs_model or options.needs_clip:
        from eval.pipeline import pick_device
        from mm.loading import resolve_dtype

        device = pick_device(options.device, ranks)
        dtype_name = str(resolve_dtype(options.dtype, device)).replace("torch.", "") if options.needs_model else None
    init_process_group(ranks, device or "cpu")
    out = Path(options.out)
    shard_set = shard_set_identity(options.shards)
    record = resume_record(options, dtype_name, shard_set)
    out_lines = read_lines(out) if out.exists() else []  # a file that is not ours is an error now, not at the end
    merged_from = other_shard_sets(out, out_lines, shard_set, options.merge_other_shards)
    check_resumable(out, record)
    scorers, notes = build_scorers(options, device, dtype_name)  # bad model options fail before any file is written
    barrier()
    mine = part_path(out, ranks.rank, ranks.world_size)
    try:
        return _score_and_merge(options, ranks, out, mine, record, scorers, notes, shard_set, merged_from)
    except BaseException:
        remove_unused_partials(out, mine, ranks.rank)
        raise


def check_resumable(out: Path, record: dict) -> None:
    """Leftover partial files holding lines must be of this very run (same settings, same shard set)."""
    if not settings_path(out).exists() or not any(read_lines(p, torn_tail=True) for p in existing_parts(out)):
        return  # nothing to resume: this run starts afresh over whatever empty files are there
    try:
        previous = json.loads(settings_path(out).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise BadInput(f"{settings_path(out)}: not readable ({error}); delete {out}'s .partial files to start over") from None
    if not isinstance(previous, dict):
        raise BadInput(f"{settings_path(out)}: not a JSON object; delete {out}'s .partial files to start over")
    previous.setdefault("shard_set", record["shard_set"])  # written before the fingerprint was: the path decides
    if previous != record:
        changed = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
        raise BadInput(f"{out} has partial results of a run with other {changed} ({settings_path(out)}); rerun "
                       "that command to finish it, or delete its .partial files to start over")  # fmt: skip


def remove_unused_partials(out: Path, mine: Path, rank: int) -> None:
    """After a failure: this rank's partial file if it holds nothing, and (rank 0) the settings once no
    partial file is left, so a corrected command is not taken for a different run over a resumable one."""
    try:
        if mine.exists() and mine.stat().st_size == 0:
            mine.unlink()
        if rank == 0 and not existing_parts(out):
            settings_path(out).unlink(missing_ok=True)
    except OSError:
        pass  # cleanup is a courtesy; the error being raised is the one to report


@contextmanager
def writing_out(out: Path):
    """Files beside --out that cannot be created are the user's --out to fix, not a bug."""
    try:
        yield
    except OSError as error:
        raise BadInput(f"--out {out}: cannot write beside it ({error.strerror or error})") from None


def _score_and_merge(options: ScoreOptions, ranks, out: Path, mine: Path, record: dict, scorers: list,
                     notes: list[str], shard_set: dict, merged_from: list | None) -> dict:  # fmt: skip
    from eval.distributed import barrier

    if ranks.rank == 0:
        with writing_out(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(settings_path(out), record)
    barrier()
    if mine.exists():
        read_lines(mine, torn_tail=True, truncate=True)  # each rank repairs only its own file
    barrier()
    done = {r["key"] for part in existing_parts(out) for r in read_lines(part, torn_tail=True)}
    barrier()  # nobody appends before every rank has read what is done
    with writing_out(out):
        mine.touch()
    key_order: list[str] = []
    scored = skipped = 0
    from tqdm import tqdm

    total = _shard_total(options.shards, options.limit)
    share = None if total is None else len(range(ranks.rank, total, ranks.world_size))
    with tqdm(total=share, unit="sample", desc=f"score {','.join(options.metrics)}", file=sys.stderr,
              disable=not options.progress or ranks.rank != 0) as bar:  # fmt: skip
        batch: list[ShardSample] = []
        for sample, is_done in _my_samples(options, ranks, done, key_order):
            if is_done:
                skipped += 1
                bar.update(1)
                continue
            batch.append(sample)
            if len(batch) == options.batch_size:
                append_lines(mine, score_batch(scorers, batch))
                scored += len(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            append_lines(mine, score_batch(scorers, batch))
            scored += len(batch)
            bar.update(len(batch))
    barrier()
    result = {"scored": scored, "skipped_done": skipped, "notes": notes, "rank": ranks.rank}
    if ranks.rank == 0:
        owned = {c for m in options.metrics for c in metric_columns(m, options.tokenizer_source is not None)}
        parts = existing_parts(out)
        result["lines"] = merge_into(out, parts, key_order, owned)
        write_provenance(out, scorers, shard_set, merged_from)
        for part in parts:
            part.unlink()
        settings_path(out).unlink(missing_ok=True)
    barrier()
    return result


def _my_samples(options: ScoreOptions, ranks, done: set[str], key_order: list[str]
                ) -> Iterator[tuple[ShardSample, bool]]:  # fmt: skip
    """(sample, already scored) for this rank's samples, in shard order; ``key_order`` gets every key."""
    seen: set[str] = set()
    for index, sample in enumerate(iter_samples(options.shards)):
        if options.limit is not None and index >= options.limit:
            break
        if sample.key in seen:
            raise ValueError(f"{options.shards}: sample key {sample.key!r} occurs twice; scores are merged by key")
        seen.add(sample.key)
        key_order.append(sample.key)
        if index % ranks.world_size == ranks.rank:
            yield sample, sample.key in done
