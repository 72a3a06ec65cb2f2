"""Checks shared by the bad-input tests: a CLI refusing input does it in one line, with status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run_installed(command: str, *argv: str, input: bytes | None = None, timeout: float = 300, **kwargs):
    """Run an installed entry point (`mm-prep`, `mm-export`, ...) as a user would, capturing its output."""
    return subprocess.run([str(BIN / command), *map(str, argv)], input=input, capture_output=True,
                          timeout=timeout, **kwargs)


def assert_refused(status: int, stderr: str | bytes, *mentions: str) -> str:
    """Status 2, no traceback, one line on stderr naming each of `mentions`; returns that line."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, (status, stderr)
    assert len(lines) == 1, stderr
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])
    return lines[0]
