"""Shard sets: where the tars are and how many samples each holds.

Exact epochs need every shard's sample count before reading. Counts come from the ``manifest.json`` or
``sizes.json`` that ``mm-prep`` writes beside the shards; local tars without one are counted by reading
their headers. Remote URLs (``pipe:``, ``http``) need a manifest.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand


class ShardSourceError(ValueError):
    """A shard source cannot be resolved (missing path, unreadable manifest, no sample counts)."""


@dataclass
class ShardSource:
    """One set of shards in the training mixture."""

    urls: str | list[str]
    """Shard directory (with manifest.json), tar path/URL, brace pattern `a-{000..009}.tar`, `pipe:` command, or a list of these."""
    weight: float = 1.0
    """Passes over this source per epoch: 2.0 repeats it twice, 0.5 takes a seeded half."""
    manifest: str | None = None
    """manifest.json or sizes.json giving per-shard sample counts, when `urls` is not a directory."""
    name: str | None = None
    """Name used in logs; defaults to the first URL."""

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"shard source weight must be > 0, got {self.weight}")


@dataclass(frozen=True)
class Shard:
    url: str
    num_samples: int


@dataclass
class ResolvedSource:
    name: str
    weight: float
    shards: list[Shard] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns expanded, in order; `::` separates several patterns in one string."""
    items = [urls] if isinstance(urls, str) else list(urls)
    expanded: list[str] = []
    for item in items:
        for part in item.split("::"):
            expanded.extend(braceexpand.braceexpand(part.strip()))
    return expanded


def resolve_source(source: ShardSource) -> ResolvedSource:
    """Turn a source spec into shard URLs with sample counts; fails early on anything missing."""
    items = expand_urls(source.urls)
    if not items:
        raise ShardSourceError(f"shard source {source.urls!r} names no shards")
    shards: list[Shard] = []
    for item in items:
        if _is_local(item) and not Path(item).exists():  # a typo, not a remote URL lacking a manifest
            raise ShardSourceError(f"{item} does not exist (shard source {source.name or source.urls!r})")
        if _is_local(item) and Path(item).is_dir():
            shards += _shards_from_directory(Path(item))
            continue
        sizes = load_shard_sizes(source.manifest) if source.manifest else None
        shards.append(Shard(item, _count_for(item, sizes)))
    name = source.name or items[0]
    return ResolvedSource(name=name, weight=source.weight, shards=shards)


def _is_local(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url)


def _shards_from_directory(directory: Path) -> list[Shard]:
    for filename in ("manifest.json", "sizes.json"):
        if (directory / filename).is_file():
            sizes = load_shard_sizes(str(directory / filename))
            return [Shard(str(directory / name), count) for name, count in sorted(sizes.items())]
    tars = sorted(directory.glob("*.tar"))
    if not tars:
        raise ShardSourceError(f"{directory} has no manifest.json, sizes.json or *.tar shards")
    return [Shard(str(tar), count_tar_samples(str(tar))) for tar in tars]


def load_shard_sizes(path: str) -> dict[str, int]:
    """{shard file name: sample count} from a manifest.json (`shards: [{name, num_samples}]`) or sizes.json."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested too deep
        raise ShardSourceError(f"cannot read shard sizes from {path}: {error}") from error
    if isinstance(data, dict) and isinstance(data.get("shards"), list):
        return dict(_manifest_entry(path, number, entry) for number, entry in enumerate(data["shards"], 1))
    if isinstance(data, dict) and all(_is_count(v) for v in data.values()):
        return {str(k): v for k, v in data.items()}
    raise ShardSourceError(f"{path} is neither a manifest.json (with `shards`) nor a sizes.json ({{name: count}})")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_entry(path: str, number: int, entry) -> tuple[str, int]:
    """(name, num_samples) of one `shards` entry; a count read loosely would silently change what an epoch is."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ShardSourceError(f"{path}: shards entry {number} has no `name` string")
    count = entry.get("num_samples")
    if not _is_count(count):
        raise ShardSourceError(f"{path}: shards entry {number} ({entry['name']}): `num_samples` must be a whole number "
                               f">= 0, got {'nothing' if count is None else json.dumps(count)}")
    return entry["name"], count


def _count_for(url: str, sizes: dict[str, int] | None) -> int:
    if sizes is not None:
        name = os.path.basename(_tar_name_in(url))
        if name not in sizes:
            raise ShardSourceError(f"shard {name!r} (from {url!r}) is missing from the manifest; it lists {len(sizes)} shards")
        return sizes[name]
    if _is_local(url) and Path(url).is_file():
        return count_tar_samples(url)
    raise ShardSourceError(
        f"no sample count for {url!r}: give the source a `manifest` (manifest.json or sizes.json) for exact epochs"
    )


def _tar_name_in(url: str) -> str:
    """The shard file a URL reads: for `pipe:` commands, the last word that names a .tar."""
    if not url.startswith("pipe:"):
        return url
    words = [word for word in url[len("pipe:"):].split() if ".tar" in word]
    if not words:
        raise ShardSourceError(f"cannot tell which shard {url!r} reads (no word with .tar); name it in the command")
    return words[-1]


def sample_key(member_name: str) -> tuple[str, str]:
    """`dir/abc.img0.png` -> (`dir/abc`, `img0.png`): the key ends at the first dot of the base name."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), suffix


def has_end_of_archive(tar: tarfile.TarFile) -> bool:
    """Whether a tar read to its end closes with the two zero blocks every complete tar ends with.

    tarfile stops quietly at the end of the file, so a tar cut at a 512-byte header boundary reads as a
    shorter, valid one; only the missing end blocks tell. `tar.offset` is where the next header would be.
    """
    end = 2 * tarfile.BLOCKSIZE
    tar.fileobj.seek(tar.offset)
    return tar.fileobj.read(end) == bytes(end)


def count_tar_samples(path: str) -> int:
    """Number of distinct consecutive keys in a local tar (reads headers only); a truncated or corrupt
    tar is a ShardSourceError naming it, not a silently smaller epoch."""
    count, last = 0, None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _ = sample_key(member.name)
                if key != last:
                    count, last = count + 1, key
            complete = has_end_of_archive(tar)
    except (tarfile.TarError, OSError) as error:
        raise ShardSourceError(f"{path}: cannot read the tar, truncated or corrupt? ({error})") from error
    if not complete:
        raise ShardSourceError(f"{path}: truncated or corrupt: no end-of-archive blocks after its last readable member")
    return count
