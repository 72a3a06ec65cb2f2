"""Export folders: where an export may go, and writing one without destroying anything that is not ours.

An export folder lists the files its export wrote in `.mm-export.json`. A folder holding anything else
(a user's files, a training run, the checkpoint being exported) is refused unless overwrite is asked for,
and even then only the export's own files in it are replaced; the source itself is never written into.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from mm.atomic import default_mode, new_file_mode

MARKER = ".mm-export.json"
# Found in a training run's root / log folder; an export never writes them.
RUN_FOLDER_SIGNS = ("checkpoints", "logs", "lightning_logs", "hparams.yaml", "config.yaml", "metrics.csv")


class ExportTargetError(ValueError):
    """An export must not be written there; the message names the folder and the option that allows it."""


def check_export_target(target: str | os.PathLike, *, sources: Iterable[str | os.PathLike | None] = (),
                        overwrite: bool = False, option: str = "--overwrite") -> Path:
    """Raise ExportTargetError unless exporting to `target` destroys nothing; returns it resolved.

    `sources` are the folders the export is made from (checkpoint, run root, log folder): never written into,
    and a target containing one needs `overwrite`, as does any existing folder that is not an earlier export.
    """
    target = Path(target).resolve()
    sources = [Path(source).resolve() for source in sources if source]
    if target in sources:
        raise ExportTargetError(f"{target} is what the export is made from (checkpoint or run folder); choose another output folder")
    if not target.exists():
        # Its folder is created when the export is written, after the model load: a file where a parent
        # folder should be, or a parent we cannot write in, must be refused now.
        ancestor = next(parent for parent in target.parents if parent.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            kind = "is not a folder" if not ancestor.is_dir() else "is not writable"
            raise ExportTargetError(f"{target} cannot be created: {ancestor} {kind}; choose another output folder")
        return target
    if not target.is_dir():
        raise ExportTargetError(f"{target} exists and is not a folder; choose another output folder")
    problem = _why_not_replaceable(target, sources)
    if problem and not overwrite:
        raise ExportTargetError(
            f"{target} {problem}; pass {option} to write the export's own files into it (nothing else there is touched)"
        )
    return target


def _why_not_replaceable(target: Path, sources: list[Path]) -> str | None:
    for source in sources:
        if target in source.parents:
            return f"contains the source {source}"
    signs = [name for name in RUN_FOLDER_SIGNS if (target / name).exists()] + [p.name for p in target.glob("*.ckpt")]
    if signs:
        return f"looks like a training run folder (it has {', '.join(signs)})"
    if any(target.iterdir()) and not _is_earlier_export(target):
        return "exists and is not an earlier mm export"
    return None


def _is_earlier_export(folder: Path) -> bool:
    """Ours: the marker, or (exports made before it existed) an mm checkpoint or a llava-hf config."""
    if (folder / MARKER).is_file() or (folder / "mm_config.json").is_file():
        return True
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "llava"
    except (OSError, ValueError, AttributeError):
        return False


def _earlier_export_files(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


class export_directory:
    """Context manager: yields an empty temp folder beside `target`; on success its (flat) files become the
    export. A target holding only an earlier export's files is swapped for the new folder in one rename;
    one that also holds other files keeps them: ours are moved in one by one, stale ones of ours removed.
    On an error the target is left as it was."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target).resolve()

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
        (self.tmp / MARKER).write_text(json.dumps({"files": written}, indent=2) + "\n")
        for name in [*written, MARKER]:  # some writers (and mkdtemp) make files private to the owner
            os.chmod(self.tmp / name, default_mode(directory=(self.tmp / name).is_dir()))
        os.chmod(self.tmp, new_file_mode(self.target, directory=True))
        if not self.target.exists():
            os.replace(self.tmp, self.target)
            return
        earlier, present = _earlier_export_files(self.target), set(os.listdir(self.target))
        if present <= earlier | set(written) | {MARKER}:
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.replace(self.target, old / "previous")
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
            return
        for name in [*written, MARKER]:  # the marker last: it lists the files once they are all in place
            os.replace(self.tmp / name, self.target / name)
        for stale in (earlier & present) - set(written) - {MARKER}:  # only names that are in the folder
            path = self.target / stale
            if path.is_file() and not path.is_symlink():
                path.unlink()
