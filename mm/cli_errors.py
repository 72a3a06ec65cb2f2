"""How every mm command ends on bad input: one line on stderr naming the file or option, exit status 2.

A traceback is for bugs, not for a user's mistake. Each CLI runs its body through `run_cli`, naming the error
types that mean "the input is wrong" (they, and `BadInput`, become one line and status 2). Anything else is a
bug or the environment failing: one line saying so and status 1. With `MM_DEBUG=1` in the environment both are
raised as they are, traceback and all.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

DEBUG_ENV = "MM_DEBUG"
BAD_INPUT_STATUS = 2
UNEXPECTED_STATUS = 1
WORKER_TRACEBACK = "Original Traceback"
SIGPIPE_STATUS = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the signal


class BadInput(ValueError):
    """Input the user can fix (a file, an option, a folder): the message says which and what is wrong."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(error: BaseException | str) -> str:
    """The message on one line: a library's multi-line message joined, a KeyError's quotes dropped."""
    if isinstance(error, KeyError) and error.args:
        error = str(error.args[0])
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith(WORKER_TRACEBACK) for line in lines):
        # torch's DataLoader re-raises a worker's error with the worker's traceback as its message: its
        # last line is `Type: the message`
        lines = [lines[-1].split(": ", 1)[-1]]
    return printable("; ".join(lines) or type(error).__name__)


def printable(text: str) -> str:
    """`text` with what no stream can encode escaped: a path's undecodable bytes come through argv and os
    functions as lone surrogates, which a strict UTF-8 stream refuses (`\\udcff` is shown instead)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def run_cli(prog: str, body: Callable[[], int | None], *, bad_input: tuple[type[BaseException], ...] = ()) -> int:
    """Run `body` (a CLI's work, returning its exit status) so that no error ends it with a traceback."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`mm-prep inspect ... | head`): stop quietly as a killed writer would; stdout is
        # pointed at /dev/null so that the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_STATUS
    except (BadInput, *bad_input) as error:
        if debugging():
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return BAD_INPUT_STATUS
    except Exception as error:  # noqa: BLE001 - the last line of defence: a bug still gets one line
        if debugging():
            raise
        print(f"{prog}: internal error: {type(error).__name__}: {one_line(error)} "
              f"(set {DEBUG_ENV}=1 for the traceback and please report it)", file=sys.stderr)
        return UNEXPECTED_STATUS


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad option as one `PROG: error: ...` line and status 2 instead of the usage block
    (`--help` shows the usage). Subcommand parsers made from it inherit this."""

    def error(self, message: str):
        self.exit(BAD_INPUT_STATUS, printable(f"{self.prog}: error: {message} (see {self.prog} --help)\n"))


def checked_number(kind: Callable[[str], Any], check: Callable[[Any], bool], requirement: str):
    """An argparse type: `kind(text)` when `check` holds for it, else an error saying `requirement`
    (e.g. `checked_number(int, lambda n: n >= 1, "a whole number >= 1")`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {requirement}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {requirement}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its own messages
    return parse


def whole_number_at_least(minimum: int):
    return checked_number(int, lambda n: n >= minimum, f"a whole number >= {minimum}")
