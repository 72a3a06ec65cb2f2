"""mm-chat in the terminal, driven as scripts drive it (stdin not a terminal): answers equal `generate` on
`encode_prompt` of the same conversation, images by /image, /save writes training data, errors are one line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_model import tiny_model
from test_llava_chat_flow import photo

import mm
from data_prep.cli import main as prep_main
from data_prep.inspect_shards import iter_samples
from mm.chat import encode_prompt, stop_token_ids
from mm.chat_app.cli import main as chat_main
from mm.chat_app.session import ChatError, ChatSession, Sampling
from mm.generation import generate

MAX_NEW = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    model = tiny_model(seed=4)
    model.save_pretrained(root / "ckpt")
    for index in range(2):
        photo(60 + 20 * index, 40, seed=index).save(root / f"img{index}.png")
    return root


def reference_answers(model, messages: list[tuple[list[Path], str]]) -> list[str]:
    """Greedy answers turn by turn, each turn replaying the model's earlier answers."""
    transform, stops = model.make_image_transform(), stop_token_ids(model.tokenizer, model.config.chat_template)
    turns, images, answers = [], [], []
    for paths, text in messages:
        turns.append({"from": "human", "value": "<image>\n" * len(paths) + text})
        images += [transform(transform.open(path)) for path in paths]
        ids = torch.tensor([encode_prompt(turns, model.tokenizer, model.config.chat_template,
                                          tokens_per_image=model.tokens_per_image)])
        pixels = transform.normalize(torch.stack(images)) if images else None
        with torch.no_grad():
            row = generate(model, ids, torch.ones_like(ids), pixels, max_new_tokens=MAX_NEW, eos_token_id=stops)[0].tolist()
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        answers.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        turns.append({"from": "gpt", "value": answers[-1]})
    return answers


def chat(checkpoint: Path, script: str, *extra: str, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(checkpoint)
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code = chat_main([str(checkpoint / "ckpt"), "--device", "cpu", "--temperature", "0",
                      "--max-new-tokens", str(MAX_NEW), *extra])
    out, err = capsys.readouterr()
    return code, out, err


SCRIPT = "/image img0.png\nWhat is it?\n\nAnd now?\n/image img1.png\nCompare the two.\n/save conv.json\n"
MESSAGES = [(["img0.png"], "What is it?"), ([], "And now?"), (["img1.png"], "Compare the two.")]


def test_answers_equal_generate_and_save_is_training_data(checkpoint, monkeypatch, capsys):
    code, out, err = chat(checkpoint, SCRIPT, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    expected = reference_answers(mm.load_pretrained(checkpoint / "ckpt").eval(), [
        ([checkpoint / p for p in paths], text) for paths, text in MESSAGES])  # fmt: skip
    assert out == "".join(f"{answer}\n" for answer in expected)  # only the answers, one per line

    (record,) = json.loads((checkpoint / "conv.json").read_text())
    assert record["image"] == ["img0.png", "img1.png"]
    assert [turn["value"] for turn in record["conversations"]] == [
        "<image>\nWhat is it?", expected[0], "And now?", expected[1], "<image>\nCompare the two.", expected[2]]
    assert prep_main(["llava", "--annotations", str(checkpoint / "conv.json"), "--image-root", str(checkpoint),
                      "--out", str(checkpoint / "shards"), "--no-progress"]) == 0  # fmt: skip
    (sample,) = iter_samples(checkpoint / "shards")
    assert sample.record["conversations"] == record["conversations"]
    assert sample.images == [(checkpoint / name).read_bytes() for name in record["image"]]


def test_reset_forgets_the_conversation(checkpoint, monkeypatch, capsys):
    code, out, _ = chat(checkpoint, "/image img0.png\nWhat is it?\n/reset\nWhat is it?\n", monkeypatch=monkeypatch,
                        capsys=capsys)
    assert code == 0
    model = mm.load_pretrained(checkpoint / "ckpt").eval()
    expected = reference_answers(model, [([checkpoint / "img0.png"], "What is it?")]) + reference_answers(
        model, [([], "What is it?")])
    assert out.splitlines() == expected


def test_sampling_is_seeded(checkpoint, monkeypatch, capsys):
    runs = [chat(checkpoint, "Tell me a story.\nMore.\n", "--temperature", "1.0", "--seed", seed,
                 monkeypatch=monkeypatch, capsys=capsys)[1] for seed in ("1", "1", "2")]
    assert runs[0] == runs[1] and runs[0].count("\n") == 2
    assert runs[0] != runs[2]  # 8 tokens from a random model's flat distribution: equal only by a fluke


@pytest.mark.parametrize("script, message", [
    ("/image missing.png\nHi\n", "mm-chat: cannot open image missing.png:"),
    ("/image img0.png\n<image>\nHi\n", "mm-chat: attach images with /image"),
    ("/frobnicate\n", "mm-chat: unknown command /frobnicate; /help lists them"),
    ("/save\n", "mm-chat: /save needs a path"),
    ("/save nothing.json\n", "mm-chat: nothing to save yet"),
])  # fmt: skip
def test_a_scripts_first_error_is_one_line_and_status_2(checkpoint, monkeypatch, capsys, script, message):
    code, out, err = chat(checkpoint, script, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_bad_options_and_checkpoints_are_one_line(checkpoint, monkeypatch, capsys):
    with pytest.raises(SystemExit) as refused:
        chat(checkpoint, "", "--top-p", "0", monkeypatch=monkeypatch, capsys=capsys)
    assert refused.value.code == 2 and capsys.readouterr().err == \
        "mm-chat: error: argument --top-p: '0' is not a number in (0, 1] (see mm-chat --help)\n"  # fmt: skip
    code, _, err = chat(checkpoint, "", "--compare", str(checkpoint / "ckpt"), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and err == "mm-chat: error: --compare needs --web (the terminal chat talks to one model)\n"
    assert chat_main([str(checkpoint / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"mm-chat: error: cannot load {checkpoint / 'nowhere'}:")


def test_a_failed_answer_leaves_the_conversation_as_it_was(checkpoint):
    session = ChatSession(mm.load_pretrained(checkpoint / "ckpt").eval(), Sampling(temperature=0, max_new_tokens=4))
    session.attach_image(checkpoint / "img0.png")
    session.sampling.top_p = 2.0
    with pytest.raises(ChatError):
        session.answer("Hi")
    session.sampling.top_p = 1.0
    stream = session.send("Hi")
    next(stream)
    stream.close()  # the reader stopped mid-answer (Ctrl-C, a closed browser tab)
    assert session.turns == [] and session.pending == 1  # the image still goes with the next message
    session.answer("Hi")
    assert session.turns[0]["value"] == "<image>\nHi" and len(session.turns) == 2


def test_mm_chat_runs_a_llava_hf_directory(checkpoint, tmp_path):
    mm.llava.export_llava_hf(mm.load_pretrained(checkpoint / "ckpt"), tmp_path / "hf")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mm-chat"), str(tmp_path / "hf"), "--device", "cpu", "--temperature", "0",
         "--max-new-tokens", str(MAX_NEW)],
        input=SCRIPT.replace("/save conv.json\n", ""), capture_output=True, text=True, cwd=checkpoint, env=env,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = reference_answers(mm.load_pretrained(checkpoint / "ckpt").eval(), [
        ([checkpoint / p for p in paths], text) for paths, text in MESSAGES])  # fmt: skip
    assert result.stdout == "".join(f"{answer}\n" for answer in expected)


def test_on_a_terminal_the_answer_streams_after_the_models_name(checkpoint, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    model = mm.load_pretrained(checkpoint / "ckpt").eval()
    session = ChatSession(model, Sampling(temperature=0, max_new_tokens=MAX_NEW), name="tiny")
    pieces = list(ChatSession(model, Sampling(temperature=0, max_new_tokens=MAX_NEW)).send("Hi"))
    assert len(pieces) > 1  # it does stream
    monkeypatch.setattr(sys, "stdin", Terminal("Hi\n/quit\n"))  # input() reads sys.stdin
    from mm.chat_app.terminal import run_terminal

    assert run_terminal(session) == 0
    out, err = capsys.readouterr()
    assert out == f"you> tiny> {''.join(pieces)}\nyou> " and "/help lists the commands" in err
    assert session.turns[-1]["value"] == "".join(pieces).strip()


def test_web_on_a_busy_port_is_one_line(checkpoint, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert chat_main([str(checkpoint / "ckpt"), "--web", "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mm-chat: ") and err.count("\n") == 1 and str(port) in err
