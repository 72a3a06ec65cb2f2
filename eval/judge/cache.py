"""The judge cache: one JSON line per judge call, appended and fsynced, keyed by the sha256 of the request.

The key hashes the judge's cache identity (kind, model, base url; for a local model its path and file
fingerprint; never the API key), the messages, the parameters and the attempt number (a reply that could
not be parsed is asked again as attempt 1, 2, ...; every reply is kept, so a re-score replays the same
sequence without a call).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from eval.tasks.base import TaskDataError

log = logging.getLogger(__name__)
CACHE_FILE = "judge_cache.jsonl"


def request_key(identity: dict, messages: list[dict], params: dict, attempt: int) -> str:
    payload = {"judge": identity, "messages": messages, "params": params, "attempt": attempt}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgeCache:
    """Thread-safe {key: record} backed by an append-only JSONL file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = self.path.read_bytes()
        except OSError as error:  # e.g. a folder of that name
            raise TaskDataError(f"{self.path}: cannot read the judge cache ({error.strerror})") from None
        lines = data.split(b"\n")
        last_filled = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        offset = 0
        for index, line in enumerate(lines):
            if line.strip():
                try:
                    record = json.loads(line.decode("utf-8"))
                    if not isinstance(record, dict) or not isinstance(record.get("key"), str) \
                            or not isinstance(record.get("reply"), str) \
                            or not isinstance(record.get("served_by"), (str, type(None))):
                        raise ValueError("a cache record needs a string key and reply, and served_by a string "
                                         "or null")
                except (ValueError, RecursionError) as error:
                    if index != last_filled:
                        raise TaskDataError(f"{self.path}:{index + 1}: damaged judge cache line ({error}); "
                                            f"delete the file to ask the judge again") from None
                    # the last record, cut short by a crash: drop it (that call is made again)
                    log.warning("%s:%d: torn last record cut off (%s)", self.path, index + 1, error)
                    with self.path.open("r+b") as f:
                        f.truncate(offset)
                    return
                self._records.setdefault(record["key"], record)
            offset += len(line) + 1
        if not data.endswith(b"\n") and data.strip():  # a complete last record without its newline
            with self.path.open("ab") as f:
                f.write(b"\n")

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._records.get(key)

    def put(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._records.setdefault(record["key"], record)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
