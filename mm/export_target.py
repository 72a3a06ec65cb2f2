"""Export folders: where an export may go, and writing one without destroying anything that is not ours.

An export folder records in `.mm-export.json` the files its export wrote, where it wrote them and what it was
made from (`source_identity`; both as fingerprints, so that no local path travels with a shared export). Only a folder whose record names this very folder and the same source is ours
to replace: a copy of an export (`cp -r run1/export other`), an export of another source, one made before
exports recorded their source, or any other folder needs overwrite, and even then only the files the new
export writes are replaced; nothing else there is removed, and the source itself is never written into.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mm.atomic import default_mode, new_file_mode
from mm.cli_errors import BadInput

MARKER = ".mm-export.json"
# A record is a short list of names; anything longer was not written by an export.
MARKER_MAX_BYTES = 1 << 20
# Found in a training run's root / log folder; an export never writes them.
RUN_FOLDER_SIGNS = ("checkpoints", "logs", "lightning_logs", "hparams.yaml", "config.yaml", "metrics.csv")
# What a checkpoint folder holds (mm's config, llava-hf's): a target inside one would change that checkpoint.
CHECKPOINT_SIGNS = ("mm_config.json", "config.json")


class ExportTargetError(BadInput):
    """An export must not be written there; the message names the folder and the option that allows it."""


def source_identity(source: str | os.PathLike, kind: str) -> str:
    """What an export records as made from: `kind` (checkpoint, run) and the source's resolved path; a Hub
    id as given. The path, not the content: a source trained further is still the same source, and a copy
    of it, elsewhere, is not."""
    try:
        return f"{kind} {_resolved(source, 'source')}" if Path(source).exists() else f"{kind} {source}"
    except OSError:  # a name too long to look up: no local path, so as given (and the load says what is wrong)
        return f"{kind} {source}"


def check_export_target(target: str | os.PathLike, *, sources: Iterable[str | os.PathLike | None] = (),
                        source: str | None = None, overwrite: bool = False, option: str = "--overwrite") -> Path:
    """Raise ExportTargetError unless exporting to `target` destroys nothing; returns it resolved.

    `sources` are the folders the export is made from (checkpoint, run root, log folder): never written into,
    and a target containing one needs `overwrite`, as does any existing folder that is not an earlier export
    of `source` (a `source_identity`) written to this very folder.
    """
    resolved = _resolved(target, "output folder")
    _refuse_dangling_link(Path(target))
    target = resolved
    sources = [_resolved(folder, "source") for folder in sources if folder]
    _refuse_writing_into_a_source(target, sources)
    if not target.exists():
        # Its folder is created when the export is written, after the model load: a file where a parent
        # folder should be, or a parent we cannot write in, must be refused now.
        ancestor = next(parent for parent in target.parents if parent.exists())
        if not ancestor.is_dir() or not _writable(ancestor):
            kind = "is not a folder" if not ancestor.is_dir() else "is not writable"
            raise ExportTargetError(f"{target} cannot be created: {ancestor} {kind}; choose another output folder")
        return target
    if not target.is_dir():
        raise ExportTargetError(f"{target} exists and is not a folder; choose another output folder")
    # The new export is written beside the target, then moved into it: both must be writable, or the export
    # would fail only after a model load and a full copy written.
    for folder in (target, target.parent):
        if not _writable(folder):
            raise ExportTargetError(f"{target} cannot be written: {folder} is not writable; choose another output "
                                    "folder or make it writable")
    problem = _why_not_replaceable(target, sources, source)
    if problem and not overwrite:
        raise ExportTargetError(
            f"{target} {problem}; pass {option} to write the export's own files into it (nothing else there is touched)"
        )
    return target


def _resolved(path: str | os.PathLike, what: str) -> Path:
    """`path` absolute with its links followed, or ExportTargetError naming it (a link loop, a name too long
    for the system): found now, not midway through an export."""
    try:
        resolved = Path(path).resolve()
        resolved.exists()
    except (OSError, RuntimeError) as error:  # RuntimeError: a link loop, before Python 3.13
        raise ExportTargetError(f"{what} {path} cannot be used: {getattr(error, 'strerror', None) or error}") from None
    return resolved


def _refuse_dangling_link(target: Path) -> None:
    """A link to nowhere would have the export created wherever it points; one to a folder is that folder."""
    if target.is_symlink() and not target.exists():
        raise ExportTargetError(f"{target} is a symlink to {os.readlink(target)}, which does not exist; name a "
                                "folder, not a dangling link")


def _refuse_writing_into_a_source(target: Path, sources: list[Path]) -> None:
    for source in sources:
        if target == source:
            raise ExportTargetError(f"{target} is what the export is made from (checkpoint or run folder); choose "
                                    "another output folder")
        if source in target.parents and any((source / name).is_file() for name in CHECKPOINT_SIGNS):
            raise ExportTargetError(f"{target} is inside the checkpoint {source} the export is made from; choose "
                                    "an output folder outside it")


def _writable(folder: Path) -> bool:
    """Listable and writable by us (root too: `os.access` says False on a read-only file system)."""
    return os.access(folder, os.R_OK | os.W_OK | os.X_OK)


def _why_not_replaceable(target: Path, sources: list[Path], source: str | None) -> str | None:
    for folder in sources:
        if target in folder.parents:
            return f"contains the source {folder}"
    signs = [name for name in RUN_FOLDER_SIGNS if (target / name).exists()] + [p.name for p in target.glob("*.ckpt")]
    if signs:
        return f"looks like a training run folder (it has {', '.join(signs)})"
    if any(target.iterdir()):
        return _why_not_ours(target, source)
    return None


def _why_not_ours(folder: Path, source: str | None) -> str | None:
    """None if `folder` holds an export of `source` written right there; else what it holds instead."""
    record = _export_record(folder)
    if record is None:
        if (folder / MARKER).exists() or any((folder / name).exists() for name in CHECKPOINT_SIGNS):
            return (f"holds a checkpoint or export that does not record its source and place in {MARKER} "
                    "(another tool's, or made before mm recorded them)")
        return "exists and is not an earlier mm export"
    if record["written_to"] != _fingerprint(str(folder)):
        return "holds an export written to another folder and copied or moved here"
    if record["source"] != _fingerprint(source):
        return f"holds an export of a source other than {source!r}"
    return None


def _fingerprint(value: str | None) -> str:
    """How a path is recorded: an export folder is shared (uploaded to a Hub), its owner's paths are not."""
    return "sha256:" + hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _export_record(folder: Path) -> dict | None:
    """The folder's `.mm-export.json` if it is a well-formed record of ours, else None."""
    path = folder / MARKER
    try:
        if not path.is_file() or path.stat().st_size > MARKER_MAX_BYTES:
            return None
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, nested past the parser's depth
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("written_to", "source")):
        return None
    files = record.get("files")
    if not isinstance(files, list):
        return None
    if not all(isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..") for name in files):
        return None
    return record


def _claimed_files(folder: Path, source: str | None) -> set[str] | None:
    """The files our earlier export of `source` wrote in `folder`, or None if it holds no such export."""
    if _why_not_ours(folder, source) is not None:
        return None
    return set(_export_record(folder)["files"])


class export_directory:
    """Context manager: yields an empty temp folder beside `target`; on success its (flat) files become the
    export. A target holding only our earlier export of `source` is swapped for the new folder in one
    rename; a target holding other files keeps them: ours are moved in one by one, stale ones of ours
    removed. A non-empty target that is not ours needs `overwrite` (ExportTargetError otherwise), and then
    only the new export's files are moved in. On an error the target is left as it was and the temp folder
    removed."""

    def __init__(self, target: str | os.PathLike, *, source: str | None = None, overwrite: bool = False) -> None:
        self.target = Path(target).resolve()
        self.source, self.overwrite = source, overwrite

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._publish()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _publish(self) -> None:
        written = sorted(os.listdir(self.tmp))
        record = {"files": written, "written_to": _fingerprint(str(self.target)), "source": _fingerprint(self.source)}
        (self.tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        for name in [*written, MARKER]:  # some writers (and mkdtemp) make files private to the owner
            os.chmod(self.tmp / name, default_mode(directory=(self.tmp / name).is_dir()))
        # the folder's mode is set once it is in place: a temp folder made read-only could not be removed
        mode = new_file_mode(self.target, directory=True)
        if not self.target.exists():
            os.replace(self.tmp, self.target)
            os.chmod(self.target, mode)
            return
        claimed = self._claimed_or_refuse()
        present = set(os.listdir(self.target))
        if claimed is not None and present <= claimed | set(written) | {MARKER}:
            self._swap()
            os.chmod(self.target, mode)
            return
        self._merge(written, stale=((claimed or set()) & present) - set(written) - {MARKER})

    def _claimed_or_refuse(self) -> set[str] | None:
        """Our earlier export's files; None for a folder not ours, which only `overwrite` lets us write in.
        Checked again here: the folder may have changed since the command started (a training run)."""
        claimed = _claimed_files(self.target, self.source)
        if claimed is None and not self.overwrite and any(self.target.iterdir()):
            raise ExportTargetError(f"{self.target} {_why_not_ours(self.target, self.source)}; the export was not "
                                    "written (overwrite writes the export's own files into it)")
        return claimed

    def _swap(self) -> None:
        old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
        try:
            os.replace(self.target, old / "previous")
            try:
                os.replace(self.tmp, self.target)
            except BaseException:
                os.replace(old / "previous", self.target)  # the earlier export back in its place
                raise
        finally:
            if self.target.exists():  # else the earlier export is only in `old`: never delete that one
                shutil.rmtree(old, ignore_errors=True)

    def _merge(self, written: list[str], stale: set[str]) -> None:
        # A folder where a file of ours goes would fail the move halfway: refuse before moving any.
        blocking = [name for name in written if (self.target / name).is_dir() and not (self.target / name).is_symlink()]
        if blocking:
            raise ExportTargetError(f"{self.target} holds a folder {blocking[0]!r} where the export writes a file; "
                                    "move it away or choose another output folder")
        for name in [*written, MARKER]:  # the marker last: it lists the files once they are all in place
            os.replace(self.tmp / name, self.target / name)
        for name in stale:  # only names that are in the folder
            path = self.target / name
            if path.is_file() and not path.is_symlink():
                path.unlink()
