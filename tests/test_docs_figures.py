"""The commands beside the figures in README.md and BENCHMARKS.md exist as written.

In every fenced code line and inline code span of those documents: each `bench/<file>.py` is a file in
`bench/` and every `--flag` written after it (up to a comment, `;`, `&&`, `|` or the next script) is an
option of that script's own argparse parser (captured from its `main()`, nothing is run); each bare
`bench_*.py` / `run_all.py` name is a file in `bench/`; each `make <target>` is a Makefile target; each
`tests/<file>.py` exists; each `DEMO_*` knob is read by `configs/demo/run_demo.sh` (or set in the
Makefile). No benchmark, demo or other subprocess runs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
DOCS = ("README.md", "BENCHMARKS.md")

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
SCRIPT = re.compile(r"(?<![\w./-])bench/([\w.-]+?\.py)\b")
BARE_SCRIPT = re.compile(r"(?<![\w./-])((?:bench_\w+|run_all)\.py)\b")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SEGMENT_END = re.compile(r"(?:^|\s)#|;|&&|\|")
TEST_FILE = re.compile(r"(?<![\w./-])(tests/[\w/.-]+?\.py)\b")
DEMO_KNOB = re.compile(r"\bDEMO_[A-Z_]+\b")


def commands(markdown: str) -> list[str]:
    """Fenced code lines (backslash continuations joined), then inline code spans (line breaks as spaces)."""
    found: list[str] = []

    def take_fenced(match: re.Match) -> str:
        found.extend(match.group(2).replace("\\\n", " ").splitlines())
        return ""

    rest = FENCE.sub(take_fenced, markdown)
    found.extend(" ".join(span.split()) for span in INLINE.findall(rest))
    return found


def script_flags(command: str) -> list[tuple[str, list[str]]]:
    """(script file name, the --flags written after it) for every `bench/<file>.py` in one command."""
    mentions = list(SCRIPT.finditer(command))
    named = []
    for index, mention in enumerate(mentions):
        stop = mentions[index + 1].start() if index + 1 < len(mentions) else len(command)
        tail = command[mention.end():stop]
        end = SEGMENT_END.search(tail)
        named.append((mention.group(1), FLAG.findall(tail[: end.start()] if end else tail)))
    return named


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


@functools.cache
def script_options(name: str) -> frozenset[str] | None:
    """Option strings of bench/<name>'s parser, as its main() builds it; None for a module without a CLI."""
    path = BENCH / name
    if "__main__" not in path.read_text():
        return None
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    module = importlib.import_module(path.stem)
    if not hasattr(module, "main"):
        raise AssertionError(f"bench/{name} runs as a script but has no main()")

    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        module.main([])
    except _Parsed as parsed:
        return frozenset(parsed.parser._option_string_actions)
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"bench/{name}: main() returned without parsing its arguments")


@functools.cache
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_./ -]+?)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return frozenset(targets - {".PHONY"})


def make_invocations(command: str) -> list[str]:
    """Targets of every `make ...` that starts a segment of the command (after VAR=value assignments)."""
    targets = []
    for segment in re.split(r"&&|\|\||;|\||(?:^|\s)#", command):
        words = segment.split()
        while words and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):
            words.pop(0)
        if words[:1] == ["make"]:
            targets += [w for w in words[1:] if "=" not in w and not w.startswith("-")]
    return targets


def problems(markdown: str) -> list[str]:
    """Everything in the document's commands that does not exist as written."""
    found = []
    demo_script = (REPO / "configs" / "demo" / "run_demo.sh").read_text()
    makefile = (REPO / "Makefile").read_text()
    for command in commands(markdown):
        for name, flags in script_flags(command):
            if not (BENCH / name).is_file():
                found.append(f"bench/{name} does not exist: {command!r}")
                continue
            options = script_options(name) if flags else frozenset()
            if options is None:
                found += [f"bench/{name} has no command line, yet {flag} is given: {command!r}" for flag in flags]
            else:
                found += [f"bench/{name} has no option {flag}: {command!r}" for flag in flags if flag not in options]
        for name in BARE_SCRIPT.findall(command):
            if not (BENCH / name).is_file():
                found.append(f"bench/{name} does not exist: {command!r}")
        for target in make_invocations(command):
            if target not in make_targets():
                found.append(f"the Makefile has no target {target!r}: {command!r}")
        for path in TEST_FILE.findall(command):
            if not (REPO / path).is_file():
                found.append(f"{path} does not exist: {command!r}")
        for knob in DEMO_KNOB.findall(command):
            if not re.search(rf"\b{knob}\b", demo_script) and not re.search(rf"^{knob}\s*\??=", makefile, re.M):
                found.append(f"{knob} is read neither by configs/demo/run_demo.sh nor the Makefile: {command!r}")
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_in_the_doc_exists_as_written(doc):
    assert problems((REPO / doc).read_text()) == []


def test_the_docs_name_bench_commands_and_make_targets():
    """The checks above are not vacuous: the documents' commands are found."""
    named = {doc: commands((REPO / doc).read_text()) for doc in DOCS}
    scripts = {name for command in named["BENCHMARKS.md"] for name, _ in script_flags(command)}
    assert {"run_all.py", "bench_train_step.py", "bench_dataload.py", "bench_eval.py", "bench_prep.py"} <= scripts
    flags = {flag for command in named["BENCHMARKS.md"] for _, flags in script_flags(command) for flag in flags}
    assert {"--quick", "--write-md", "--device"} <= flags
    assert {"demo", "test"} <= {t for command in named["README.md"] for t in make_invocations(command)}


def test_a_missing_script_flag_or_target_is_reported():
    doc = """
```
make bench-quick                  # = .venv/bin/python bench/run_all.py --quick
.venv/bin/python bench/bench_train_step.py --size tiny --no-grad-checkpointing --no-such-flag 3
.venv/bin/python bench/no_such_bench.py --quick
DEMO_SEED=1 make demo && make no-such-target
```
Run `.venv/bin/python bench/bench_prep.py --device cuda`, then `DEMO_NO_SUCH_KNOB=1 make demo`;
`bench/train_mix.py --quick`, `bench_nope.py` and `tests/test_no_such_file.py`; `bench/common.py: alternate`.
"""
    found = problems(doc)
    expected = ["bench_train_step.py has no option --no-such-flag", "bench/no_such_bench.py does not exist",
                "no target 'no-such-target'", "bench_prep.py has no option --device",
                "DEMO_NO_SUCH_KNOB is read neither", "bench/train_mix.py has no command line",
                "bench/bench_nope.py does not exist", "tests/test_no_such_file.py does not exist"]
    for text in expected:
        assert sum(text in problem for problem in found) == 1, (text, found)
    assert len(found) == len(expected), found
