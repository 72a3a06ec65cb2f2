"""mm.cli_errors: the one-line, status-2 contract every CLI runs through."""

from __future__ import annotations

import pytest

from mm.cli_errors import BadInput, run_cli


def _raise(error: BaseException):
    def body():
        raise error

    return body


def test_bad_input_is_one_line_status_2(capsys):
    assert run_cli("mm-x", _raise(BadInput("file a.json: line 3\n  is not JSON"))) == 2
    assert capsys.readouterr().err == "mm-x: error: file a.json: line 3; is not JSON\n"


def test_named_error_types_count_as_bad_input(capsys):
    assert run_cli("mm-x", _raise(KeyError("no task 'foo'")), bad_input=(KeyError,)) == 2
    assert capsys.readouterr().err == "mm-x: error: no task 'foo'\n"


def test_a_bug_is_one_line_status_1_pointing_at_the_debug_variable(capsys):
    assert run_cli("mm-x", _raise(ZeroDivisionError("division by zero"))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError" in err and "MM_DEBUG=1" in err


def test_debug_variable_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("MM_DEBUG", "1")
    with pytest.raises(BadInput):
        run_cli("mm-x", _raise(BadInput("x")))
    with pytest.raises(ZeroDivisionError):
        run_cli("mm-x", _raise(ZeroDivisionError()))


def test_status_and_interrupt(capsys):
    assert run_cli("mm-x", lambda: 3) == 3
    assert run_cli("mm-x", lambda: None) == 0
    assert run_cli("mm-x", _raise(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "mm-x: interrupted\n"


def test_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    script = ("import sys\nfrom mm.cli_errors import run_cli\n"
              "def body():\n    for i in range(10**6):\n        print('line', i)\n"
              "sys.exit(run_cli('mm-x', body))\n")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer.stdout.readline()
    writer.stdout.close()  # what `| head -1` does
    assert writer.wait(timeout=60) == 141
    assert writer.stderr.read() == b""


ENTRY_POINTS = {  # every console script of pyproject.toml: its main, and a valid start of a command line
    "mm-prep": ("data_prep.cli", ["llava"]),
    "mm-train": ("mm.train.cli", ["fit"]),
    "mm-eval": ("eval.cli", ["run"]),
    "mm-export": ("mm.export", ["hf-llava", "a", "b"]),
    "mm-chat": ("mm.chat_app.cli", ["ckpt"]),
    "mm-plot": ("mm.plot", ["run", "--out", "x.png"]),
}


def test_every_console_script_is_covered():
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(ENTRY_POINTS)
    assert {name: value.split(":")[0] for name, value in scripts.items()} == {
        name: module for name, (module, _) in ENTRY_POINTS.items()}


@pytest.mark.parametrize("prog", ENTRY_POINTS)
@pytest.mark.parametrize("bad", [["--no-such-option"], ["--no-such-option=\udcff"], ["no-such-command"]])
def test_an_unknown_option_or_command_is_one_line_with_status_2(prog, bad, capsys):
    import importlib

    from cli_checks import assert_refused

    module, start = ENTRY_POINTS[prog]
    argv = bad if bad == ["no-such-command"] else [*start, *bad]
    try:
        status = importlib.import_module(module).main(argv)
    except SystemExit as exit:
        status = exit.code
    assert_refused(status, capsys.readouterr().err, prog)
