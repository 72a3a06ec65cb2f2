"""Checks shared by the bad-input tests: a CLI refusing input does it in one line, with status 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_installed(command: str, *argv: str, input: bytes | None = None, timeout: float = 300, **kwargs):
    """Run an installed entry point (`mm-prep`, `mm-export`, ...) as a user would, capturing its output."""
    return subprocess.run([str(BIN / command), *map(str, argv)], input=input, capture_output=True,
                          timeout=timeout, **kwargs)


# root ignores a folder's or a file's mode, and CI runs as root: these capabilities dropped, it meets them
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                "-dac_override,-dac_read_search"]


def as_a_user(argv: list, **options) -> subprocess.CompletedProcess:
    """Run `argv` as a user who meets permission bits (as root: without the capabilities that bypass them)."""
    argv = [str(arg) for arg in argv]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permission bits cannot be met")
        argv = [*UNPRIVILEGED, *argv]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300, **options)


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
