"""The terminal chat: a read-answer loop over one `ChatSession`.

Lines starting with `/` are commands (`/image PATH`, `/reset`, `/save PATH`, `/help`, `/quit`); any other line
is a message. On a terminal the answer streams as it is generated; when stdin is not a terminal (scripts,
tests) nothing but the answers goes to stdout, one per line, and the first error ends the run with status 2.
Input is read as UTF-8: a line that is not (binary data, another encoding) is such an error, naming the line,
rather than being guessed at with replacement characters the model would then answer.
"""

from __future__ import annotations

import shlex
import sys
from typing import TextIO

from mm.chat_app.session import ChatError, ChatSession

HELP = """commands:
  /image PATH   attach an image to the next message (several: one /image each)
  /reset        start a new conversation
  /save PATH    write the conversation as LLaVA JSON (a training record)
  /help         this text
  /quit         leave (or Ctrl-D)"""


def run_terminal(session: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> int:
    """Chat until end of input or /quit (default streams: the process's); returns the exit status."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    interactive = stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        print(f"mm-chat: {session.name} ready. /help lists the commands.", file=stderr)
    number = 0
    while True:
        number += 1
        try:
            line = _read_line(stdin, interactive, number)
            if line is None:
                return 0
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return 0
            if line.startswith("/"):
                note = _command(session, line)
                if interactive or line == "/help":  # a script's stderr carries its errors only
                    print(note, file=stderr)
            else:
                _reply(session, line, stdout, interactive)
        except ChatError as error:
            print(f"mm-chat: {error}", file=stderr)
            if not interactive:
                return 2
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            print("\n(interrupted)", file=stderr)


def _read_line(stdin: TextIO, interactive: bool, number: int) -> str | None:
    """The next line (None at the end of input); a ChatError naming it when it is not UTF-8."""
    try:
        if not interactive:  # bytes where there are any: the text layer's decoding error names no line
            line = stdin.buffer.readline() if hasattr(stdin, "buffer") else stdin.readline()
            return _utf8(line, number) if line else None
        return input("you> ")
    except UnicodeDecodeError as error:
        raise _not_utf8(error, number) from None
    except EOFError:
        return None
    except KeyboardInterrupt:
        return ""


def _utf8(line: bytes | str, number: int) -> str:
    try:
        return line.decode("utf-8") if isinstance(line, bytes) else line
    except UnicodeDecodeError as error:
        raise _not_utf8(error, number) from None


def _not_utf8(error: UnicodeDecodeError, number: int) -> ChatError:
    byte = error.object[error.start]
    return ChatError(f"stdin line {number} is not UTF-8 text (byte 0x{byte:02x} at offset {error.start}); "
                     "mm-chat reads UTF-8")


def _command(session: ChatSession, line: str) -> str:
    """Carry out one /command; returns what to tell the user."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name == "/help":
        return HELP
    if name == "/reset":
        session.reset()
        return "(new conversation)"
    if name not in ("/image", "/save"):
        raise ChatError(f"unknown command {name}; /help lists them")
    if not rest:
        raise ChatError(f"{name} needs a path")
    path = _one_path(rest)
    if name == "/image":
        session.attach_image(path)
        return f"(image {path} goes with the next message)"
    return f"(saved {session.save(path)})"


def _one_path(text: str) -> str:
    """A path as typed: quoted like a shell word when it has spaces, else taken as it is."""
    if text[0] in "'\"":
        try:
            (path,) = shlex.split(text)
        except ValueError:
            raise ChatError(f"cannot read the path {text}: one quoted path expected") from None
        return path
    return text


def _reply(session: ChatSession, text: str, stdout: TextIO, interactive: bool) -> None:
    if not interactive:
        print(session.answer(text), file=stdout, flush=True)
        return
    print(f"{session.name}> ", end="", file=stdout, flush=True)
    for piece in session.send(text):
        print(piece, end="", file=stdout, flush=True)
    print(file=stdout, flush=True)
