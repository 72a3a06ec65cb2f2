"""`mm-prep inspect DIR`: what a shard directory holds, and an HTML contact sheet for eyeballing."""

from __future__ import annotations

import base64
import html
import json
import statistics
import tarfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mm.atomic import write_text_atomic
from mm.cli_errors import BadInput, one_line
from mm.data.shards import has_end_of_archive, load_shard_sizes

_MIME = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp", "tiff": "image/tiff"}


@dataclass
class ShardSample:
    """One sample read back from a shard."""

    shard: str
    key: str
    record: dict
    images: list[bytes] = field(default_factory=list)


class ShardReadError(ValueError):
    """A shard (or its manifest) cannot be read back: truncated or corrupt."""


class ContactSheetError(ValueError):
    """The contact sheet cannot be written where --dump-out says."""


def _manifest_counts(directory: Path) -> dict[str, int] | None:
    """{shard name: num_samples} from manifest.json, or None without one."""
    manifest = directory / "manifest.json"
    if not manifest.exists():
        return None
    counts = load_shard_sizes(str(manifest))  # the reading training does; its errors name the manifest and entry
    for name in counts:
        if name in ("", ".", "..") or Path(name).name != name:  # ../x or /x would read a file outside the set
            raise ShardReadError(f"{manifest}: shard {name!r} is not a file name in {directory}")
    return counts


def shard_paths(directory: str | Path) -> list[Path]:
    """The shards listed in manifest.json (only complete ones), else every `*.tar` in the directory."""
    directory = Path(directory)
    counts = _manifest_counts(directory)
    paths = [directory / name for name in counts] if counts is not None else sorted(directory.glob("*.tar"))
    if counts is None and not paths:  # e.g. the parent of `mm-prep synth`'s align/: say so, not "0 samples"
        raise ShardReadError(f"{directory}: no shards here (no manifest.json, no *.tar)")
    return paths


def iter_shard(path: Path) -> Iterator[ShardSample]:
    """Samples of one shard, in tar order; a shard that cannot be read is an error naming it."""
    try:
        yield from _read_shard(path)
    except (tarfile.TarError, OSError, ValueError, RecursionError) as error:  # Recursion: a .json nested too deep
        raise ShardReadError(f"{path}: cannot read the shard, truncated or corrupt? ({error})") from None


def _read_shard(path: Path) -> Iterator[ShardSample]:
    """A sample's members are contiguous, json first."""
    with tarfile.open(path, "r:") as tar:  # plain tar, as mm-prep writes; "r" would list every codec it tried
        members: dict[str, bytes] = {}
        current = None
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            if current is not None and key != current:
                yield _assemble(path.name, current, members)
                members = {}
            current = key
            members[suffix] = tar.extractfile(member).read()
        if current is not None:
            yield _assemble(path.name, current, members)
        if not has_end_of_archive(tar):  # cut at a header boundary: reads as a shorter tar, no error from tarfile
            raise ValueError("no end-of-archive blocks after its last readable member")


def _is_record(record) -> bool:
    """The shape mm-prep writes and the statistics index: {conversations: [{from, value}, ...], images: [names]}.
    Shards written by other tools may differ; they get an error naming the sample, not a KeyError."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return False
    images = record.get("images", [])
    return (all(isinstance(m, dict) and isinstance(m.get("from"), str) and isinstance(m.get("value"), str)
                for m in record["conversations"])
            and isinstance(images, list) and all(isinstance(name, str) for name in images))


def _assemble(shard: str, key: str, members: dict[str, bytes]) -> ShardSample:
    if "json" not in members:
        raise ValueError(f"sample {key!r} has no .json member")
    record = json.loads(members["json"])
    if not _is_record(record):
        raise ValueError(f"sample {key!r}: its .json is not a record with `conversations` [{{from, value}}, ...]")
    missing = [s for s in record.get("images", []) if s not in members]
    if missing:
        raise ValueError(f"sample {key!r} lacks image members {missing}")
    return ShardSample(shard, key, record, [members[s] for s in record.get("images", [])])


def iter_samples(directory: str | Path) -> Iterator[ShardSample]:
    """Samples of every shard; a shard holding fewer samples than its manifest says was cut short."""
    counts = _manifest_counts(Path(directory)) or {}
    for path in shard_paths(directory):
        read = 0
        for sample in iter_shard(path):
            read += 1
            yield sample
        if path.name in counts and read != counts[path.name]:
            raise ShardReadError(f"{path}: {read} samples, but manifest.json says {counts[path.name]}; truncated?")


def _stats(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    ordered = sorted(values)
    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 2), "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}  # fmt: skip


def inspect_directory(directory: str | Path, tokenizer=None) -> dict:
    """Counts, per-source breakdown, length statistics and images per sample."""
    sources, images_per_sample, formats = Counter(), Counter(), Counter()
    turns, characters, tokens = [], [], []
    answers = {"chosen": [], "rejected": []}  # preference pairs (`mm-prep pref`): the two answers' lengths
    num_samples = 0
    for sample in iter_samples(directory):
        num_samples += 1
        record = sample.record
        # a preference record's prompt ends with a human turn; its chosen answer is the turn it trains
        texts = [m["value"] for m in record["conversations"]] + ([record["chosen"]] if "chosen" in record else [])
        sources[record.get("source", "?")] += 1
        images_per_sample[len(sample.images)] += 1
        formats.update(s.rsplit(".", 1)[-1] for s in record.get("images", []))
        turns.append(sum(m["from"] == "gpt" for m in record["conversations"]) + ("chosen" in record))
        characters.append(sum(len(text) for text in texts))
        for side, lengths in answers.items():
            if side in record:
                lengths.append(len(record[side]))
        if tokenizer is not None:
            tokens.append(sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts))
    report = {
        "directory": str(directory),
        "num_shards": len(shard_paths(directory)),
        "num_samples": num_samples,
        "num_images": sum(n * count for n, count in images_per_sample.items()),
        "sources": dict(sources.most_common()),
        "images_per_sample": {str(n): images_per_sample[n] for n in sorted(images_per_sample)},
        "image_formats": dict(formats.most_common()),
        "turns": _stats(turns),
        "characters": _stats(characters),
    }
    for side, lengths in answers.items():
        if lengths:
            report[f"{side} characters"] = _stats(lengths)
    if tokenizer is not None:
        report["tokens"] = _stats(tokens)
    manifest = Path(directory) / "manifest.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        report["rejected_by_reason"] = saved.get("rejected_by_reason", {})
    return report


def format_report(report: dict) -> str:
    lines = [
        f"{report['directory']}: {report['num_samples']} samples, {report['num_images']} images, {report['num_shards']} shards",
        "sources: " + ", ".join(f"{name} {count}" for name, count in report["sources"].items()),
        "images per sample: " + ", ".join(f"{n}: {c}" for n, c in report["images_per_sample"].items()),
        "image formats: " + ", ".join(f"{n}: {c}" for n, c in report["image_formats"].items()),
    ]
    for name in ("turns", "characters", "chosen characters", "rejected characters", "tokens"):
        if name in report:
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in report[name].items()))
    if report.get("rejected_by_reason"):
        lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items()))
    return "\n".join(lines)


def contact_sheet_rows(samples: list[ShardSample], notes: list[str] | None = None) -> str:
    """Table rows: each sample's images (inline, base64) beside its conversation; `notes[i]` is added to
    sample i's caption (e.g. its scores)."""
    rows = []
    for number, sample in enumerate(samples):
        pictures = "".join(
            f'<img src="data:{_MIME.get(name.rsplit(".", 1)[-1], "application/octet-stream")};base64,'
            f'{base64.b64encode(data).decode()}" title="{html.escape(name)}">'
            for name, data in zip(sample.record.get("images", []), sample.images)
        )  # fmt: skip
        answers = [(side, sample.record[side]) for side in ("chosen", "rejected") if side in sample.record]
        turns = "".join(
            f'<p class="{html.escape(speaker)}"><b>{html.escape(speaker)}:</b> {html.escape(text)}</p>'
            for speaker, text in [(m["from"], m["value"]) for m in sample.record["conversations"]] + answers
        )  # fmt: skip
        caption = html.escape(f"{sample.shard} / {sample.key} / id {sample.record.get('id')!r} / {sample.record.get('source')}")
        if notes is not None and notes[number]:
            caption += f' / <span class="note">{html.escape(notes[number])}</span>'
        rows.append(f'<tr><td class="img">{pictures or "(text only)"}</td><td><div class="id">{caption}</div>{turns}</td></tr>')
    return "".join(rows)


def contact_sheet_page(body: str, title: str = "mm-prep contact sheet") -> str:
    """A complete HTML page around `body` (tables of `contact_sheet_rows`, headings)."""
    style = ("body{font-family:sans-serif}td{vertical-align:top;border-bottom:1px solid #ccc;padding:6px}"
             "td.img img{max-width:320px;image-rendering:pixelated;min-width:128px;display:block;margin-bottom:4px}"
             "p{white-space:pre-wrap;margin:4px 0}.gpt{color:#064}.chosen{color:#064}.rejected{color:#a00}.id{color:#666;font-size:small}"
             ".note{color:#a00;font-weight:bold}")  # fmt: skip
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>\n")  # fmt: skip


def contact_sheet(samples: list[ShardSample]) -> str:
    """An HTML page: each sample's images (inline, base64) beside its conversation."""
    return contact_sheet_page(f"<table>{contact_sheet_rows(samples)}</table>")


@contextmanager
def loading_option(option: str, value: str, what: str):
    """Around loading what an option names (a tokenizer folder or Hub id): any failure is that option's."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - third-party loaders fail in many types on a folder that is not theirs
        raise BadInput(f"{option} {value}: cannot load a {what} ({one_line(error)})") from None


def load_tokenizer_option(source: str):
    """`--tokenizer`: a local folder or a Hub id; slow tokenizers too (only token counts are needed)."""
    from transformers import AutoTokenizer

    from mm.hub import local_or_hub

    with loading_option("--tokenizer", source, "tokenizer"), local_or_hub(source, "tokenizer"):
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)


def check_dump_options(count: int, out: str | Path | None) -> None:
    """--dump and --dump-out, checked before the statistics are printed, not after."""
    if count < 0:
        raise ContactSheetError(f"--dump {count}: the number of samples must be 0 or more")
    if count and out is not None and Path(out).is_dir():
        raise ContactSheetError(f"--dump-out {out}: cannot write the contact sheet (Is a directory)")


def dump_contact_sheet(directory: str | Path, count: int, out: str | Path) -> int:
    """Write the first `count` samples (shards are already shuffled) as an HTML page; returns how many."""
    samples = []
    for sample in iter_samples(directory):
        if len(samples) == count:
            break
        samples.append(sample)
    try:
        write_text_atomic(out, contact_sheet(samples))
    except OSError as error:  # a folder in its place, a parent that is a file, no permission
        raise ContactSheetError(f"--dump-out {out}: cannot write the contact sheet ({error.strerror})") from None
    return len(samples)
