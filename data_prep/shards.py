"""Writing one webdataset shard: a deterministic tar, written as `*.tar.tmp` and renamed when complete.

Each shard is one task (one process with `--workers N`). Images are read and checked here, so an
undecodable image rejects its sample inside the task; the shard's result (counts, bytes, checksum,
rejections) is saved under `.progress/` before the rename, so a rerun can skip the shard.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mm.atomic import write_json_atomic
from data_prep.images import CheckedImage, ImageError, check_image, downscale
from data_prep.records import MISSING_IMAGE, UNDECODABLE_IMAGE, ImageRef, RecordError, Sample

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"
TAR_BLOCK = 512


@dataclass
class ShardTask:
    """Everything one worker needs to write one shard."""

    out_dir: str
    name: str
    samples: list[Sample]
    fingerprint: str
    """Hash of the shard's planned content and options; a saved result is reused only if it matches."""
    check: str = "fast"
    max_image_side: int | None = None


@dataclass
class ShardResult:
    """What a written shard holds (saved in `.progress/{name}.json`)."""

    name: str
    fingerprint: str
    num_samples: int
    num_records: int
    num_images: int
    num_bytes: int
    crc32: str
    """CRC-32 of the shard file (hex), to detect corruption in transfers."""
    rejected: list[dict] = field(default_factory=list)


class TarStream:
    """Writes a tar member by member with fixed metadata (mode 644, owner 0, mtime 0), so equal
    input gives equal bytes; the header of each member is built directly (tarfile's general
    machinery costs more than the rest of the conversion). Counts and checksums what it writes."""

    def __init__(self, file):
        self.file, self.size, self.crc32 = file, 0, 0

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self.size += len(data)

    def add(self, name: str, data: bytes) -> None:
        self._write(ustar_header(name, len(data)))
        self._write(data)
        if len(data) % TAR_BLOCK:
            self._write(bytes(TAR_BLOCK - len(data) % TAR_BLOCK))

    def close(self) -> None:
        """End-of-archive blocks, padded to tarfile's record size as tarfile does."""
        end = self.size + 2 * TAR_BLOCK
        self._write(bytes(2 * TAR_BLOCK + (-end) % tarfile.RECORDSIZE))


def ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header equal to tarfile's for a regular file with our fixed metadata."""
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = bytearray(TAR_BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000644\0"  # mode
    header[108:116] = header[116:124] = b"0000000\0"  # uid, gid
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"  # mtime
    header[148:156] = b" " * 8  # checksum placeholder
    header[156:157] = tarfile.REGTYPE
    header[257:265] = tarfile.POSIX_MAGIC
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def load_image(ref: ImageRef, check: str, max_image_side: int | None) -> CheckedImage:
    """Read and check one image; downscale it if asked. Raises `RecordError` with the reason."""
    try:
        data = ref.data if ref.data is not None else Path(ref.path).read_bytes()
    except FileNotFoundError:
        raise RecordError(MISSING_IMAGE, f"image file {ref.name!r} not found") from None
    except OSError as error:
        raise RecordError(UNDECODABLE_IMAGE, f"image {ref.name!r} unreadable: {error}") from None
    try:
        checked = check_image(data, check)
        return downscale(checked, max_image_side) if max_image_side else checked
    except ImageError as error:
        raise RecordError(UNDECODABLE_IMAGE, f"image {ref.name!r}: {error}") from None


def sample_members(sample: Sample, images: list[CheckedImage]) -> list[tuple[str, bytes]]:
    """The tar members of one sample: `{key}.json` then `{key}.img{i}.{ext}` in placeholder order."""
    suffixes = [f"img{i}.{image.extension}" for i, image in enumerate(images)]
    meta = dict(sample.meta)
    resized = [{"image": i, "from": list(im.resized_from)} for i, im in enumerate(images) if im.resized_from]
    if resized:
        meta["resized"] = resized
    base = ("id", "source", "conversations", "images", "image_sizes", "meta")
    if any(name in base for name in sample.fields):
        raise ValueError(f"sample {sample.id!r}: extra fields {sorted(sample.fields)} would replace {base}")
    record = {
        "id": sample.id,
        "source": sample.source,
        "conversations": sample.conversations,
        **sample.fields,
        "images": suffixes,
        "image_sizes": [[image.width, image.height] for image in images],
        "meta": meta,
    }
    members = [(f"{sample.key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))]
    members += [(f"{sample.key}.{suffix}", image.data) for suffix, image in zip(suffixes, images)]
    return members


def progress_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / PROGRESS_DIR / f"{name}.json"


def write_shard(task: ShardTask, report: Callable[[int], None] = lambda n: None) -> ShardResult:
    """Write the shard; `report(n)` is called as samples are done (for the progress bar)."""
    final = Path(task.out_dir) / task.name
    tmp = final.with_name(final.name + ".tmp")
    rejected, num_samples, num_records, num_images, pending = [], 0, 0, 0, 0
    with open(tmp, "wb") as file:
        tar = TarStream(file)
        for sample in task.samples:
            try:
                images = [load_image(ref, task.check, task.max_image_side) for ref in sample.images]
            except RecordError as error:
                rejected += [r.to_json() for r in sample.reject(error.reason, error.detail)]
            else:
                for name, data in sample_members(sample, images):
                    tar.add(name, data)
                num_samples, num_images = num_samples + 1, num_images + len(images)
                num_records += len(sample.input_records())
            pending += 1
            if pending == 32:
                report(pending)
                pending = 0
        tar.close()
        file.flush()
        os.fsync(file.fileno())
    report(pending)
    result = ShardResult(task.name, task.fingerprint, num_samples, num_records, num_images, tar.size, f"{tar.crc32:08x}", rejected)
    write_json_atomic(progress_path(task.out_dir, task.name), asdict(result))  # before the rename: a
    os.replace(tmp, final)  # visible shard always has its saved result
    return result


def load_completed(task: ShardTask) -> ShardResult | None:
    """The saved result of a complete shard matching `task`, or None if it must be (re)written: a shard
    whose bytes no longer match the size and CRC-32 recorded when it was written is rewritten."""
    final = Path(task.out_dir) / task.name
    try:
        saved = ShardResult(**json.loads(progress_path(task.out_dir, task.name).read_text()))
        size = final.stat().st_size
    except (OSError, ValueError, TypeError):
        return None
    if saved.fingerprint != task.fingerprint:
        return None
    if saved.num_bytes != size:
        log.warning("%s: %d bytes, %d when written; rewriting it", final, size, saved.num_bytes)
        return None
    crc = file_crc32(final)
    if crc != saved.crc32:
        log.warning("%s: CRC-32 %s, %s when written (changed on disk); rewriting it", final, crc, saved.crc32)
        return None
    return saved


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"
