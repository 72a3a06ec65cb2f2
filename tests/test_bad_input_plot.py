"""mm-plot on bad input: a row that cannot be drawn is a counted skip named on stderr, a file or folder that
cannot be used at all is one error line (status 2), and nothing ends in a traceback or leaves a file behind.
The issue's cases (issue 20, item 9) run through the installed `mm-plot`; the rest of the matrix in-process."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cli_checks import BIN, as_a_user, assert_refused, run_installed
from mm.plot import MAX_LINE_BYTES, main

HEADER = b"epoch,step,lr/llm/decay,throughput/tokens_per_s,train/loss\n"
GOOD = b"0,0,0.001,900.0,2.5\n0,1,0.001,900.0,2.4\n"
SKIP_LINE = "mm-plot: skipped "


def write_log(run: Path, data: bytes, name: str = "metrics.csv") -> Path:
    version = run / "logs" / "version_0"
    version.mkdir(parents=True, exist_ok=True)
    (version / name).write_bytes(data)
    return version / name


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"


def leftovers(folder: Path) -> list[str]:
    """Files an --out in `folder` may have left: the PNG or the atomic write's temporary."""
    return sorted(name for name in os.listdir(folder) if name.endswith((".png", ".tmp")))


def plot(*argv) -> tuple[int, str, str]:
    """mm-plot in this process; any warning (matplotlib's overflow, an empty legend) is an error here."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("error")
        status = main([str(arg) for arg in argv])
    return status, out.getvalue(), err.getvalue()


def assert_drawn_with_note(status: int, err: str, out_png: Path, csv: Path, *reasons: str) -> None:
    """Status 0, the PNG, and one stderr line counting the rows of `csv` left out, with each reason."""
    assert status == 0, err
    assert_png(out_png)
    (line,) = err.splitlines()
    assert line.startswith(f"{SKIP_LINE}{len(reasons)} row") and f"of {csv}:" in line, line
    for reason in reasons:
        assert reason in line, (reason, line)


# ----------------------------------------------------------------- the cases, through the installed CLI
@pytest.mark.parametrize("row, reason", [
    (b"0,2,0.001,900.0,not-a-number\n", "1 non-numeric value"),
    (b"0,nan,0.001,900.0,2.3\n", "1 step not a whole number in 0..2**53"),
    (b"0,2,0.001,900.0,2.\xff\xfe3\n", "1 not UTF-8"),
], ids=["non-numeric loss", "nan step", "non-UTF-8 bytes"])
def test_installed_mm_plot_counts_a_bad_row_and_draws_the_rest(tmp_path, row, reason):
    csv = write_log(tmp_path / "run", HEADER + GOOD + row)
    result = run_installed("mm-plot", tmp_path / "run", "--out", tmp_path / "fig.png", timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    assert_png(tmp_path / "fig.png")
    assert err.splitlines() == [f"{SKIP_LINE}1 row of {csv}: {reason}"]


def test_installed_mm_plot_refuses_a_log_of_only_bad_rows_in_one_line(tmp_path):
    csv = write_log(tmp_path / "run", HEADER + b"0,0,x,y,z\n0,1,\xff,1,1\n")
    result = run_installed("mm-plot", tmp_path / "run", "--out", tmp_path / "fig.png", timeout=120)
    line = assert_refused(result.returncode, result.stderr, str(tmp_path / "run" / "logs"), "hold no train/loss")
    assert f"skipped 2 rows of {csv}" in line and "non-numeric value" in line and "not UTF-8" in line
    assert leftovers(tmp_path) == []


def test_installed_mm_plot_does_not_hang_on_a_fifo_named_like_a_log(tmp_path):
    version = tmp_path / "run" / "logs" / "version_0"
    version.mkdir(parents=True)
    os.mkfifo(version / "metrics.csv")
    os.mkfifo(version / "events.out.tfevents.1.host")
    result = run_installed("mm-plot", tmp_path / "run", "--out", tmp_path / "fig.png", timeout=120)
    assert_refused(result.returncode, result.stderr, str(tmp_path / "run"), "no training logs")


# ----------------------------------------------------------------- metrics.csv rows: a counted skip each
BAD_ROWS = {  # row -> the reason its note names
    b"0,2,0.001,900.0,inf\n": "nan or infinite value",
    b"0,2,0.001,900.0,-Infinity\n": "nan or infinite value",
    b"0,2,0.001,900.0,nan\n": "nan or infinite value",
    b"0,2,0.001,900.0,1e308\n": "value beyond",  # finite, but matplotlib's axis arithmetic overflows on it
    b"0,2,1e400,900.0,2.3\n": "nan or infinite value",
    b"0,-1,0.001,900.0,2.3\n": "step not a whole number",
    b"0,1.5,0.001,900.0,2.3\n": "step not a whole number",
    b"0,1e300,0.001,900.0,2.3\n": "step not a whole number",
    b"0," + b"9" * 5000 + b",0.001,900.0,2.3\n": "step not a whole number",  # past int()'s 4300 digits
    b"0,,0.001,900.0,2.3\n": "no step",
    b"0,two,0.001,900.0,2.3\n": "non-numeric step",
    b"0,2,0.001,900.0\n": "wrong number of fields",
    b"0,2,0.001,900.0,2.3,7\n": "wrong number of fields",
    b"0,2,0.001,900.0,2.\x003\n": "non-numeric value",
    b'0,2,"0.001,900.0,2.3\n': "not CSV",
    b'0,2,"0.001"9,900.0,2.3\n': "not CSV",
    b"0,2,0.001,900.0," + b"1" * (MAX_LINE_BYTES + 10) + b"\n": "too long",
    b"0,2,0.001,900.0,\xef\xbb\xbf2.3\n": "non-numeric value",  # a BOM mid-file
}


@pytest.mark.parametrize("row", list(BAD_ROWS), ids=lambda row: repr(row[:40]))
def test_a_row_that_cannot_be_drawn_is_counted_and_named(tmp_path, row):
    csv = write_log(tmp_path / "run", HEADER + GOOD + row)
    status, out, err = plot(tmp_path / "run", "--out", tmp_path / "fig.png")
    assert_drawn_with_note(status, err, tmp_path / "fig.png", csv, BAD_ROWS[row])
    assert out == f"wrote {tmp_path / 'fig.png'}\n"


def test_columns_mm_plot_does_not_draw_may_hold_anything(tmp_path):
    write_log(tmp_path / "run", b"step,train/loss,val/note,\xff\xfe,epoch\n0,2.5,\xff\xfe,,x\n1,2.4,nan,\x00,\n")
    assert plot(tmp_path / "run", "--out", tmp_path / "fig.png")[::2] == (0, "")


def test_a_byte_order_mark_before_the_header_is_no_part_of_the_first_name(tmp_path):
    write_log(tmp_path / "run", b"\xef\xbb\xbfstep,train/loss\n0,2.5\n1,2.4\n")  # a spreadsheet's UTF-8 CSV
    assert plot(tmp_path / "run", "--out", tmp_path / "fig.png")[::2] == (0, "")


def test_a_log_without_loss_draws_the_rates_alone_without_a_warning(tmp_path):
    write_log(tmp_path / "run", b"step,lr/projector/decay\n0,0.001\n1,0.002\n")
    status, _, err = plot(tmp_path / "run", "--out", tmp_path / "fig.png")  # the legend goes on the lr panel
    assert (status, err) == (0, "")
    assert_png(tmp_path / "fig.png")


def test_a_file_without_line_breaks_is_read_in_pieces(tmp_path):
    csv = write_log(tmp_path / "run", HEADER + GOOD + b"7" * (3 * MAX_LINE_BYTES))
    status, _, err = plot(tmp_path / "run", "--out", tmp_path / "fig.png")
    assert_drawn_with_note(status, err, tmp_path / "fig.png", csv, "too long")


def test_a_large_log_is_drawn(tmp_path):
    rows = b"".join(b"0,%d,0.001,900.0,%f\n" % (step, 3.0 / (1 + step)) for step in range(20_000))
    write_log(tmp_path / "run", HEADER + rows)
    assert plot(tmp_path / "run", "--out", tmp_path / "fig.png")[::2] == (0, "")
    assert_png(tmp_path / "fig.png")


# ----------------------------------------------------------------- files and folders that cannot be used at all
REFUSED_CSV = {  # whole file -> what its one error line says
    b"": "hold no train/loss",
    HEADER: "hold no train/loss",
    b"\n\n\n": "hold no train/loss",
    b"epoch,train/loss\n0,2.5\n": "its header has no 'step' column",
    b"\xff\xfe,train/loss\n0,1\n": "its header has no 'step' column",
    b"step," + b"x" * (MAX_LINE_BYTES + 1) + b"\n0,1\n": "its header line is too long",
    b"\x00" * 4096: "its header has no 'step' column",
    bytes(range(256)) * 64: "its header has no 'step' column",
    b'step,"train/loss\n0,1\n': "its header line is not CSV",
}


@pytest.mark.parametrize("data", list(REFUSED_CSV), ids=lambda data: repr(data[:24]))
def test_a_metrics_csv_that_cannot_be_used_is_one_error_line(tmp_path, data):
    write_log(tmp_path / "run", data)
    status, out, err = plot(tmp_path / "run", "--out", tmp_path / "fig.png")
    assert_refused(status, err, REFUSED_CSV[data])
    assert out == "" and leftovers(tmp_path) == []


def write_events(folder: Path, values: dict[str, list[float]]) -> Path:
    """A TensorBoard event file as mm-train's logger writes it: one scalar per tag and step."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for tag, series in values.items():
        for step, value in enumerate(series):
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            writer.add_event(event_pb2.Event(step=step, wall_time=1.0, summary=summary))
    writer.close()
    (path,) = folder.glob("events.out.tfevents.*")
    return path


def test_tensorboard_event_files_garbled_or_truncated(tmp_path):
    write_log(tmp_path / "garbage", os.urandom(3000), name="events.out.tfevents.1.host")
    status, _, err = plot(tmp_path / "garbage", "--out", tmp_path / "fig.png")
    assert_refused(status, err, str(tmp_path / "garbage"), "hold no train/loss")

    events = write_events(tmp_path / "cut" / "logs" / "version_0",
                          {"lr/projector/decay": [float("nan")], "train/loss": [3.0 - step / 40 for step in range(40)]})
    events.write_bytes(events.read_bytes()[: events.stat().st_size * 2 // 3])  # a killed run's torn tail
    status, _, err = plot(tmp_path / "cut", "--out", tmp_path / "fig.png")
    assert status == 0, err
    assert_png(tmp_path / "fig.png")
    assert err.splitlines() == [f"{SKIP_LINE}1 row of {events.parent / 'events.out.tfevents.*'}: "
                                "1 nan or infinite value"]


@pytest.mark.parametrize("make, says", [
    (lambda run: None, "no such folder"),
    (lambda run: run.write_text("step,train/loss\n0,1\n"), "not a folder"),
    (lambda run: run.mkdir(), "no training logs"),
    (lambda run: (run / "logs" / "version_0" / "metrics.csv").mkdir(parents=True), "no training logs"),
    (lambda run: write_log(run, b"").unlink() or (run / "logs" / "version_0" / "metrics.csv").symlink_to(
        "/dev/zero"), "no training logs"),
    (lambda run: write_log(run, b"").unlink() or (run / "logs" / "version_0" / "metrics.csv").symlink_to(
        run / "missing.csv"), "no training logs"),
], ids=["missing", "a file", "empty folder", "metrics.csv a folder", "metrics.csv -> /dev/zero", "dangling link"])
def test_a_run_folder_without_usable_logs_is_one_error_line(tmp_path, make, says):
    make(tmp_path / "run")
    status, out, err = plot(tmp_path / "run", "--out", tmp_path / "fig.png")
    assert_refused(status, err, str(tmp_path / "run"), says)
    assert leftovers(tmp_path) == []


def test_a_symlink_loop_under_a_run_is_not_followed(tmp_path):
    write_log(tmp_path / "run", HEADER + GOOD)
    (tmp_path / "run" / "logs" / "loop").symlink_to(tmp_path / "run", target_is_directory=True)
    assert plot(tmp_path / "run", "--out", tmp_path / "fig.png")[::2] == (0, "")


def test_an_unreadable_metrics_csv_is_one_error_line(tmp_path):
    csv = write_log(tmp_path / "run", HEADER + GOOD)
    csv.chmod(0)
    done = as_a_user([BIN / "mm-plot", tmp_path / "run", "--out", tmp_path / "fig.png"])
    assert_refused(done.returncode, done.stderr, str(csv), "cannot read it")


# ----------------------------------------------------------------- --out
@pytest.mark.parametrize("out, says", [
    (".", "is a folder"),
    ("fig.jpg", "must end in .png"),
    ("fig", "must end in .png"),
    ("", "is a folder"),
    ("log.csv/fig.png", "is not a folder"),
    ("/proc/mm-plot-test/fig.png", "cannot write the file"),  # read-only even for root
], ids=["a folder", ".jpg", "no suffix", "empty", "under a file", "read-only place"])
def test_an_out_that_cannot_be_the_png_is_one_error_line_before_any_work(tmp_path, monkeypatch, out, says):
    write_log(tmp_path / "run", HEADER + GOOD)
    (tmp_path / "log.csv").write_text("x")
    monkeypatch.chdir(tmp_path)
    status, stdout, err = plot("run", "--out", out)
    assert_refused(status, err, "--out", says)
    assert stdout == "" and leftovers(tmp_path) == [] and (tmp_path / "log.csv").read_text() == "x"


def test_an_out_in_a_read_only_folder_is_one_error_line_and_leaves_nothing(tmp_path):
    write_log(tmp_path / "run", HEADER + GOOD)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    done = as_a_user([BIN / "mm-plot", tmp_path / "run", "--out", tmp_path / "ro" / "fig.png"])
    assert_refused(done.returncode, done.stderr, "--out", "cannot write the file")
    assert os.listdir(tmp_path / "ro") == []


# ----------------------------------------------------------------- any bytes
def assert_png_or_one_error_line(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_log(folder / "run", data)
        status, out, err = plot(folder / "run", "--out", folder / "fig.png")
        assert "Traceback" not in err and "internal error" not in err, err
        if status == 0:
            assert_png(folder / "fig.png")
            assert all(line.startswith(SKIP_LINE) for line in err.splitlines()), err
            assert len(err.splitlines()) <= 1
        else:
            assert_refused(status, err, str(folder / "run"))
            assert leftovers(folder) == []


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_any_bytes_as_metrics_csv_give_a_png_or_one_error_line(data):
    assert_png_or_one_error_line(data)


CELLS = st.one_of(
    st.sampled_from(["", "0", "1", "2.5", "-3", "1e-9", "1e99", "1e101", "1e308", "nan", "inf", "-inf", "x", "1,2",
                     '"', "0x10", "1_000", " 4 ", "\x00", "\u00e9"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 2**60).map(str),
)
ROW = st.lists(CELLS, min_size=3, max_size=6).map(lambda cells: ",".join(cells).encode("utf-8"))
LINE = st.one_of(ROW, ROW, ROW, st.binary(max_size=40))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=12))
def test_a_log_with_any_rows_gives_a_png_or_one_error_line(lines):
    assert_png_or_one_error_line(b"step,train/loss,lr/x,throughput/tokens_per_s\n" + b"\n".join(lines) + b"\n")
