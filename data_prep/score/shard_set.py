"""Which shard set a scores file was made from, so scores of two different sets are never merged by accident.

Keys alone cannot tell: two `mm-prep synth` runs with different seeds (or a reconversion) name their samples
alike. The identity is a fingerprint of what the shard directory holds: each shard's name, byte count and CRC-32,
as `manifest.json` records them; a directory without a manifest is fingerprinted from its `*.tar` files
(read once: one pass over the bytes), which gives the same fingerprint as the manifest that came with them. The directory's path is kept for messages only: a moved or copied shard set is still the same set.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

from data_prep.inspect_shards import ShardReadError, shard_paths
from mm.cli_errors import BadInput

FIELDS = ("name", "num_bytes", "crc32")
CRC_CHUNK = 1 << 20
SHARD_SET = "shard_set"
"""The key of the identity in a scores file's metadata, ``SCORES.meta.json``."""
MERGED_SHARD_SETS = "merged_shard_sets"


def _manifest_entries(manifest: Path) -> list[dict]:
    try:
        shards = json.loads(manifest.read_bytes().decode("utf-8"))["shards"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ShardReadError(f"{manifest}: not a readable shard manifest ({error})") from None
    return [{k: entry.get(k) for k in FIELDS} for entry in shards if isinstance(entry, dict)]


def _tar_entry(path: Path) -> dict:
    crc = size = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CRC_CHUNK):
                crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    except OSError as error:  # a dangling link, a link loop, no permission
        raise ShardReadError(f"{path}: cannot read the shard ({error.strerror or error})") from None
    return {"name": path.name, "num_bytes": size, "crc32": f"{crc:08x}"}


def shard_set_identity(directory: str | Path) -> dict:
    """{"directory", "num_shards", "fingerprint"} of a shard directory (see the module docstring)."""
    directory = Path(directory)
    manifest = directory / "manifest.json"
    entries = _manifest_entries(manifest) if manifest.exists() else [_tar_entry(p) for p in shard_paths(directory)]
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()
    return {"directory": str(directory.resolve()), "num_shards": len(entries), "fingerprint": digest}


def same_shard_set(a: dict | None, b: dict | None) -> bool:
    """Whether two identities name the same content (the directory may differ: a moved set is the same set)."""
    return isinstance(a, dict) and isinstance(b, dict) and a.get("fingerprint") == b.get("fingerprint")


def describe(identity: dict | None) -> str:
    if not isinstance(identity, dict):
        return "an unrecorded shard set"
    return (f"{identity.get('directory')} ({identity.get('num_shards')} shards, "
            f"fingerprint {str(identity.get('fingerprint'))[:12]})")  # fmt: skip


def provenance_path(scores: Path) -> Path:
    """``SCORES.meta.json``: how each metric's columns were made, and which shard set the lines score."""
    return scores.with_name(f"{scores.name}.meta.json")


def read_provenance(scores: Path) -> dict:
    path = provenance_path(scores)
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise BadInput(f"{path}: not a readable scores metadata file ({error}); move it away to start over") from None
    if not isinstance(meta, dict):
        raise BadInput(f"{path}: not a scores metadata file (not a JSON object); move it away to start over")
    return meta
