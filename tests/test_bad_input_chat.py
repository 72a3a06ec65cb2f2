"""Bad input to `mm-chat` (issue 20, items 6 and 7, and the rest of the class): every option's invalid values,
checkpoints that are missing, empty, truncated or describe no model, stdin that is not UTF-8, /image paths
that are missing, folders, not images or decompression bombs, messages over the model's context, and the web
UI's uploads. Each is one line and status 2 (or, inside a chat, one line and the chat goes on), never a
traceback; any bytes on stdin are answered or refused that way (hypothesis)."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from cli_checks import assert_refused, run_installed
from helpers_model import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_llava_chat_flow import photo

import mm
from mm.chat_app.cli import main as chat_main
from mm.chat_app.session import ChatError, ChatSession, Sampling
from mm.chat_app.terminal import run_terminal

GREEDY = ["--device", "cpu", "--temperature", "0", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A good checkpoint (`ckpt`), an image, and a broken copy of the checkpoint per corruption."""
    root = tmp_path_factory.mktemp("bad_chat")
    tiny_model(seed=4).save_pretrained(root / "ckpt")
    photo().save(root / "photo.png")
    return root


@pytest.fixture(scope="module")
def model(folder):
    return mm.load_pretrained(folder / "ckpt").eval()


def broken_copy(folder: Path, name: str, damage) -> Path:
    """A copy of the good checkpoint with `damage(copy)` done to it."""
    copy = folder / name
    if not copy.exists():
        shutil.copytree(folder / "ckpt", copy)
        damage(copy)
    return copy


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def chat(argv: list[str], stdin: bytes, capsys, monkeypatch) -> tuple[int, str, str]:
    """`mm-chat` in process, with `stdin` as the bytes a pipe would give (a text stream with a buffer)."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    try:
        code = chat_main(argv)
    except SystemExit as exit_:  # a bad option: the parser's own one line and status
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- item 6: checkpoints
def test_truncated_weights_are_one_line_naming_the_file(folder):
    broken = broken_copy(folder, "truncated", lambda copy: truncate(copy / "model.safetensors"))
    done = run_installed("mm-chat", broken, *GREEDY, input=b"hi\n")
    assert_refused(done.returncode, done.stderr, "mm-chat: error:", str(broken / "model.safetensors"),
                   "not a valid safetensors file (truncated or corrupt?)")


def _write(name: str, data: bytes):
    return lambda copy: (copy / name).write_bytes(data)


def _weights_dir(copy: Path) -> None:
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors").mkdir()


def _config(change):
    def damage(copy: Path) -> None:
        config = json.loads((copy / "mm_config.json").read_text())
        change(config)
        (copy / "mm_config.json").write_text(json.dumps(config))
    return damage


def _other_weights(copy: Path) -> None:  # a model of another shape, same file names
    tiny_model(seed=1, projector="linear").save_pretrained(copy / "other")
    shutil.move(copy / "other" / "model.safetensors", copy / "model.safetensors")


CHECKPOINTS = {  # name: (damage, what the line says)
    "weights_empty": (_write("model.safetensors", b""), "model.safetensors: weights file is empty"),
    "weights_a_folder": (_weights_dir, "model.safetensors: is not a regular file"),
    "weights_missing": (lambda copy: (copy / "model.safetensors").unlink(), "model.safetensors: weights file missing"),
    "weights_header_only": (lambda copy: truncate(copy / "model.safetensors", 0.001),
                            "model.safetensors: not a valid safetensors file"),
    "weights_not_safetensors": (_write("model.safetensors", b"\x00" * 64), "not a valid safetensors file"),
    "weights_of_another_model": (_other_weights, "weights do not match the model"),
    "config_not_json": (_write("mm_config.json", b"{not json"), "mm_config.json: not a usable config"),
    "config_binary": (_write("mm_config.json", b"\xff\xfe\x00garbage"), "mm_config.json: not a usable config"),
    "config_a_list": (_write("mm_config.json", b"[1, 2]"), "mm_config.json: not a usable config"),
    "config_deeply_nested": (_write("mm_config.json", b"[" * 100_000 + b"]" * 100_000), "mm_config.json"),
    "config_wrong_version": (_config(lambda c: c.update(format_version=99)), "format_version 99"),
    "config_wrong_type": (_config(lambda c: c.update(llm="a string")), "mm_config.json: not a usable config"),
    "config_bad_value": (_config(lambda c: c.update(image_transform="zoom")), "image_transform='zoom'"),
    "config_bad_architecture": (_config(lambda c: c["llm"]["model_config"].update(hidden_size="wide")),
                                "mm_config.json: not a usable config"),
    "tokenizer_not_json": (_write("tokenizer.json", b'{"version": '), "not a usable tokenizer"),
}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_a_broken_checkpoint_is_one_line_naming_it(folder, capsys, monkeypatch, name):
    damage, says = CHECKPOINTS[name]
    broken = broken_copy(folder, name, damage)
    code, out, err = chat([str(broken), *GREEDY], b"hi\n", capsys, monkeypatch)
    assert_refused(code, err, f"mm-chat: error: cannot load {broken}", says)
    assert out == ""


def test_a_broken_llava_hf_directory_is_one_line_naming_the_file(folder, model, tmp_path, capsys, monkeypatch):
    mm.llava.export_llava_hf(model, tmp_path / "hf")
    capsys.readouterr()  # the export's progress bar
    truncate(tmp_path / "hf" / "model.safetensors")
    code, _, err = chat([str(tmp_path / "hf"), *GREEDY], b"hi\n", capsys, monkeypatch)
    assert_refused(code, err, str(tmp_path / "hf" / "model.safetensors"), "truncated or corrupt")
    (tmp_path / "hf" / "config.json").write_bytes(b'{"model_type": "llava", ')
    code, _, err = chat([str(tmp_path / "hf"), *GREEDY], b"hi\n", capsys, monkeypatch)
    assert_refused(code, err, str(tmp_path / "hf" / "config.json"), "not a usable config")


@pytest.mark.parametrize("path", ["./nowhere", "ckpt/mm_config.json", "photo.png", "./a/b/c"])
def test_a_checkpoint_that_is_no_folder_is_one_line(folder, capsys, monkeypatch, path):
    monkeypatch.chdir(folder)
    code, _, err = chat([path, *GREEDY], b"hi\n", capsys, monkeypatch)
    assert_refused(code, err, f"cannot load {path}")


# ----------------------------------------------------------------------------- item 7: options
BAD_OPTIONS = [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"), ("--temperature", "1e-30"),
    ("--temperature", "warm"), ("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"), ("--top-p", "inf"),
    ("--max-new-tokens", "0"), ("--max-new-tokens", "-5"), ("--max-new-tokens", "1.5"), ("--seed", "-1"),
    ("--seed", str(2**64)), ("--port", "0"), ("--port", "65536"), ("--port", "http"), ("--dtype", "int8"),
]


@pytest.mark.parametrize("option, value", BAD_OPTIONS)
def test_an_invalid_option_value_is_one_line_naming_it_before_loading(capsys, monkeypatch, option, value):
    code, _, err = chat(["/nonexistent/ckpt", option, value], b"", capsys, monkeypatch)
    assert_refused(code, err, "mm-chat: error:", option, value)  # the checkpoint is not even looked at


def test_temperature_nan_through_the_installed_command(folder):
    done = run_installed("mm-chat", folder / "ckpt", "--temperature", "nan", input=b"hi\n")
    assert_refused(done.returncode, done.stderr, "--temperature", "'nan'")


@pytest.mark.parametrize("argv, says", [
    ([], "the following arguments are required: checkpoint"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--device", "gpu"], "--device 'gpu'"),
    (["--max-new-tokens", "100000"], "--max-new-tokens 100000 leaves no room"),
    (["--compare", "x"], "--compare needs --web"),
])  # fmt: skip
def test_other_bad_invocations_are_one_line(folder, capsys, monkeypatch, argv, says):
    checkpoint = [str(folder / "ckpt")] if argv != [] else []
    code, _, err = chat([*checkpoint, "--device", "cpu", *argv], b"", capsys, monkeypatch)
    assert_refused(code, err, says)


# ----------------------------------------------------------------------------- item 7: stdin and messages
def test_stdin_that_is_not_utf8_is_one_line_naming_the_line(folder):
    done = run_installed("mm-chat", folder / "ckpt", *GREEDY, input=b"hello\n\xff\xfe\x00binary\x80\n")
    line = assert_refused(done.returncode, done.stderr, "stdin line 2 is not UTF-8", "0xff")
    assert len(done.stdout.decode().splitlines()) == 1  # the first line was answered
    assert "mm-chat" in line


@pytest.mark.parametrize("data, says", [
    (b"caf\xe9\n", "stdin line 1 is not UTF-8"),  # Latin-1
    (b"\xef\xbb\xbfhi\n\xc3\n", "stdin line 2 is not UTF-8"),  # a BOM is fine; a cut-off character is not
    (b"\xed\xa0\x80\n", "stdin line 1 is not UTF-8"),  # a surrogate encoded as UTF-8
    (b"/image \xff.png\n", "stdin line 1 is not UTF-8"),
])  # fmt: skip
def test_undecodable_stdin_lines(folder, capsys, monkeypatch, data, says):
    code, _, err = chat([str(folder / "ckpt"), *GREEDY], data, capsys, monkeypatch)
    assert_refused(code, err, says)


def test_a_huge_message_is_refused_at_once_without_tokenizing_it(folder, capsys, monkeypatch):
    started = time.monotonic()
    code, out, err = chat([str(folder / "ckpt"), *GREEDY], b"a" * 3_000_000 + b"\n", capsys, monkeypatch)
    assert_refused(code, err, "the message is too long", "3,000,000 characters", "context of 2,048 tokens")
    assert out == "" and time.monotonic() - started < 60  # the load; the refusal itself is instant


def test_a_message_over_the_context_is_one_line_not_a_warning(folder, capsys, monkeypatch):
    words = " ".join(f"word{i}" for i in range(1500)).encode()  # short enough in characters, ~6k tokens
    code, out, err = chat([str(folder / "ckpt"), *GREEDY], b"hi\n" + words + b"\n", capsys, monkeypatch)
    line = assert_refused(code, err, "the conversation is", "over the model's context of 2,048 tokens")
    assert "/reset" in line and len(out.splitlines()) == 1


def test_a_refused_long_message_leaves_the_conversation_as_it_was(model):
    session = ChatSession(model, Sampling(temperature=0, max_new_tokens=2))
    session.answer("hi")
    before = list(session.turns)
    with pytest.raises(ChatError, match="over the model's context"):
        session.answer(" ".join(f"w{i}" for i in range(3000)))
    assert session.turns == before
    session.sampling.max_new_tokens = 2040  # the conversation + the answer's room must fit
    with pytest.raises(ChatError, match="max_new_tokens 2,040"):
        session.answer("and now?")
    assert session.turns == before


def test_a_message_that_is_no_unicode_text_is_refused(model):
    session = ChatSession(model, Sampling(temperature=0, max_new_tokens=2))
    with pytest.raises(ChatError, match="not valid Unicode text"):
        session.answer("hi \udcff there")  # a lone surrogate, as JSON or surrogateescape can carry
    assert session.turns == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 1e-9])
def test_sampling_settings_from_the_web_controls_are_checked_too(model, value):
    with pytest.raises(ChatError, match="temperature"):
        ChatSession(model, Sampling(temperature=value)).answer("hi")
    with pytest.raises(ChatError, match="seed"):
        ChatSession(model, Sampling(seed=-1)).answer("hi")


# ----------------------------------------------------------------------------- item 7: images
def bomb(path: Path, monkeypatch, size=(100, 100), limit=1000) -> Path:
    """A small image over PIL's pixel limit, lowered for the test (as a 20,000 x 20,000 one is at the real
    limit): more than twice the limit is PIL's DecompressionBombError, more than once its warning."""
    Image.new("RGB", size).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    return path


@pytest.mark.parametrize("kind", ["missing", "a_folder", "not_an_image", "empty", "truncated", "bomb",
                                  "bomb_warning", "nul_byte"])
def test_a_bad_image_is_one_line_and_the_script_stops(folder, tmp_path, capsys, monkeypatch, kind):
    target = tmp_path / f"{kind}.png"
    if kind == "a_folder":
        target.mkdir()
    elif kind == "not_an_image":
        target.write_text("hello")
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        photo().save(target)
        truncate(target, 0.3)
    elif kind.startswith("bomb"):
        bomb(target, monkeypatch, limit=3000 if kind == "bomb" else 9000)
    name = f"{target}\x00.png" if kind == "nul_byte" else str(target)
    script = f"/image {name}\nWhat is it?\n".encode()
    code, out, err = chat([str(folder / "ckpt"), *GREEDY], script, capsys, monkeypatch)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"mm-chat: cannot open image {target}")


def test_save_to_a_bad_path_is_one_line(folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    for path in [tmp_path / "dir", tmp_path / "file" / "x.json", f"{tmp_path}/a\x00b.json"]:
        code, _, err = chat([str(folder / "ckpt"), *GREEDY], f"hi\n/save {path}\n".encode(), capsys, monkeypatch)
        assert code == 2 and err.startswith(f"mm-chat: cannot write {path}") and err.count("\n") == 1, err


def test_a_web_upload_that_is_a_bomb_is_a_warning_in_the_page(model, tmp_path, monkeypatch):
    import gradio as gr

    from mm.chat_app import web

    greedy = Sampling(temperature=0, max_new_tokens=2)
    message = {"text": "What is it?", "files": [str(bomb(tmp_path / "bomb.png", monkeypatch))]}
    with pytest.warns(UserWarning, match="cannot open image bomb.png: .*exceeds limit"):
        (box, visitor, panel), = web._respond(gr, [("tiny", model)], greedy, message, None, greedy)
    assert box == gr.skip() and panel == gr.skip() and not visitor.sessions[0].turns
    with pytest.warns(UserWarning, match="too long"):
        list(web._respond(gr, [("tiny", model)], greedy, {"text": "a" * 3_000_000, "files": []}, None, greedy))


# ----------------------------------------------------------------------------- any bytes on stdin
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.binary(max_size=120) | st.text(max_size=60).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_any_bytes_on_stdin_are_answered_or_refused_in_one_line(model, tmp_path, monkeypatch, data):
    # /save writes where it is told: generated paths land in the test's folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir(exist_ok=True)
    stdin = io.TextIOWrapper(io.BytesIO(data.replace(b"/save ", b"/save " + str(tmp_path / "x").encode() + b"/")))
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run_terminal(ChatSession(model, Sampling(temperature=0, max_new_tokens=1)), stdin, stdout, stderr)
    err = stderr.getvalue()
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("mm-chat: "), err
    else:
        assert code == 0 and (err == "" or err.startswith("commands:")), err  # /help's text
