"""End to end on the tiny model: batching parity, resume after a crash, run record, scoring."""

import contextlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

from eval.cli import main
from eval.predictions import read_predictions
from eval.tiny_bench import write_tiny_vqa_benchmark

MAX_NEW = "6"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import mm
    from mm.tiny import tiny_vlm_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; tiny shapes gain nothing from more
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval_run")
    mm.build_vlm(tiny_vlm_config()).save_pretrained(root / "ckpt")
    options = write_tiny_vqa_benchmark(root / "bench", num_images=6, questions_per_image=2)
    yield root, options
    torch.set_num_threads(threads)


def _run(setup, out, *extra):
    root, options = setup
    argv = ["run", "--checkpoint", str(root / "ckpt"), "--task", "vqav2", "--out", str(out), "--device", "cpu",
            "--max-new-tokens", MAX_NEW, "--image-workers", "1",
            "--questions", options["questions"], "--annotations", options["annotations"],
            "--image-root", options["image_root"], *extra]
    assert main(argv) == 0


def _answers(out) -> dict:
    lines = (Path(out) / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    ids = [r["question_id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate predictions"
    return {r["question_id"]: r["text"] for r in records}


@pytest.fixture(scope="module")
def reference(setup):
    out = setup[0] / "batch8"
    _run(setup, out, "--batch-size", "8")
    return out, _answers(out)


def test_batch_1_and_8_identical(setup, reference):
    out1 = setup[0] / "batch1"
    _run(setup, out1, "--batch-size", "1")
    assert _answers(out1) == reference[1]
    assert len(reference[1]) == 12


def test_outputs_and_run_record(setup, reference):
    out, answers = reference
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert set(record) == {"question_id", "prompt", "text", "model_id", "metadata"}
    assert record["prompt"].endswith("\nAnswer the question using a single word or phrase.")
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "vqav2" and run["prompt_template"] == "vicuna_v1"
    assert run["generation"]["batch_size"] == 8 and run["generation"]["max_new_tokens"] == 6
    assert run["generation"]["dtype"] == "float32" and run["mm_version"]
    assert run["model"]["config"]["chat_template"] == "vicuna_v1"
    assert set(run["data_files"]) == {"questions", "annotations", "image_root"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_questions"] == 12 and metrics["missing"] == 0
    assert metrics["overall"] == run["metrics_overall"]
    assert (out / "metrics.md").read_text().startswith("# vqav2")


def test_resume_from_partial_file_with_torn_line(setup, reference):
    out = setup[0] / "resume"
    out.mkdir()
    kept = list(reference[1])[:3]
    # Pre-written answers (deliberately not what the model says) must be kept, not redone.
    lines = [json.dumps({"question_id": q, "prompt": "", "text": "KEPT", "model_id": "x", "metadata": {}}) for q in kept]
    torn = '{"question_id": %d, "prompt": "", "te' % list(reference[1])[3]
    (out / "predictions.jsonl").write_text("\n".join(lines) + "\n" + torn)
    _run(setup, out, "--batch-size", "4")
    answers = _answers(out)
    assert set(answers) == set(reference[1])
    assert all(answers[q] == "KEPT" for q in kept)
    assert all(answers[q] == reference[1][q] for q in answers if q not in kept)


def test_single_process_resume_merges_parts_of_a_multi_rank_run(setup, reference):
    out = setup[0] / "parts"
    out.mkdir()
    first, second = list(reference[1])[:2]
    for rank, qid in enumerate((first, second)):
        line = json.dumps({"question_id": qid, "prompt": "", "text": f"rank{rank}", "model_id": "x", "metadata": {}})
        (out / f"predictions.rank{rank}.jsonl").write_text(line + "\n")
    _run(setup, out, "--batch-size", "8")
    answers = _answers(out)
    assert set(answers) == set(reference[1])
    assert (answers[first], answers[second]) == ("rank0", "rank1")
    assert not list(out.glob("predictions.rank*.jsonl"))


def test_resume_after_crash_mid_run(setup, reference, monkeypatch):
    from eval import runner

    out = setup[0] / "crash"
    real = runner.Generator.answer
    calls = {"n": 0}

    def crash_on_third_batch(self, batch, pixels, *rest):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(self, batch, pixels, *rest)

    monkeypatch.setattr(runner.Generator, "answer", crash_on_third_batch)
    monkeypatch.setenv("MM_DEBUG", "1")  # the simulated crash raised as it is, not turned into one line
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(setup, out, "--batch-size", "2")
    monkeypatch.delenv("MM_DEBUG")
    assert len(_answers(out)) == 4  # two batches landed before the crash
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    monkeypatch.setattr(runner.Generator, "answer", real)
    root, options = setup
    other = ["run", "--checkpoint", str(root / "ckpt"), "--task", "vqav2", "--out", str(out), "--device", "cpu",
             "--max-new-tokens", "9", "--questions", options["questions"], "--annotations", options["annotations"],
             "--image-root", options["image_root"]]
    assert main(other) == 2  # the crashed run's settings are on record: no mixing
    _run(setup, out, "--batch-size", "2")
    assert _answers(out) == reference[1]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_resume_refuses_other_settings(setup, reference):
    root, options = setup
    argv = ["run", "--checkpoint", str(root / "ckpt"), "--task", "vqav2", "--out", str(reference[0]),
            "--device", "cpu", "--max-new-tokens", "9", "--questions", options["questions"],
            "--annotations", options["annotations"], "--image-root", options["image_root"]]
    assert main(argv) == 2


def test_missing_image_is_a_clear_error(setup, tmp_path, capsys):
    root, options = setup
    argv = ["run", "--checkpoint", str(root / "ckpt"), "--task", "vqav2", "--out", str(tmp_path / "o"),
            "--device", "cpu", "--questions", options["questions"], "--annotations", options["annotations"],
            "--image-root", str(tmp_path / "nowhere")]
    assert main(argv) == 2
    assert "image not found" in capsys.readouterr().err


def test_resume_skips_blank_lines_as_score_does(setup, reference):
    out = setup[0] / "blank"
    out.mkdir()
    kept = list(reference[1])[:2]
    lines = [json.dumps({"question_id": q, "prompt": "", "text": "KEPT", "model_id": "x", "metadata": {}}) for q in kept]
    (out / "predictions.jsonl").write_text(lines[0] + "\n\n" + lines[1] + "\n\n")
    _run(setup, out, "--batch-size", "8")
    answers = {r["question_id"]: r["text"] for r in read_predictions(out / "predictions.jsonl")}
    assert set(answers) == set(reference[1]) and all(answers[q] == "KEPT" for q in kept)


def _run_error(setup, out, image_root=None) -> tuple[int, str]:
    """rc and stderr of a run that should fail; a traceback fails the test."""
    root, options = setup
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = main(["run", "--checkpoint", str(root / "ckpt"), "--task", "vqav2", "--out", str(out), "--device", "cpu",
                   "--max-new-tokens", MAX_NEW, "--questions", options["questions"],
                   "--annotations", options["annotations"], "--image-root", image_root or options["image_root"]])
    return rc, stderr.getvalue()


def test_run_refuses_an_out_that_is_a_file(setup, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("")
    assert _run_error(setup, out) == (2, f"mm-eval: error: --out {out} is a file, not a folder\n")


@pytest.mark.parametrize("content, error", [
    (b'{"resume": {"task": "vqav2"', ": not a readable run record (Expecting ',' delimiter: line 1 column 28 (char 27))"),
    (b'{"resume": 5}', " (run record) resume: expected a JSON object, got 5"),
])  # fmt: skip
def test_resume_names_a_damaged_run_record(setup, tmp_path, content, error):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_bytes(content)
    assert _run_error(setup, out) == (2, f"mm-eval: error: {out / 'run.json'}{error}\n")


def test_decompression_bomb_image_is_a_clear_error(setup, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(setup[1]["image_root"], images)
    bomb = images / "COCO_val2014_000000000003.jpg"
    # A PNG header declaring 30000 x 30000 pixels: PIL refuses it before decoding anything.
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    rc, err = _run_error(setup, tmp_path / "out", str(images))
    assert rc == 2 and err.startswith(f"mm-eval: error: cannot decode {bomb}: ") and len(err.splitlines()) == 1
    assert "decompression bomb" in err


def test_score_and_compare(setup, reference, tmp_path, capsys):
    root, options = setup
    out, answers = reference
    assert main(["score", "--task", "vqav2", "--predictions", str(out / "predictions.jsonl"), "--out", str(tmp_path / "s"),
                 "--questions", options["questions"], "--annotations", options["annotations"]]) == 0
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["overall"] == \
        json.loads((out / "metrics.json").read_text())["overall"]
    capsys.readouterr()
    assert main(["compare", str(out), str(tmp_path / "s")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| run | vqav2 |" and len(table) == 4


def test_two_process_gloo_run_gathers_every_id_once(setup, reference):
    import os
    import socket
    import subprocess
    import sys

    root, options = setup
    out = root / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "eval.cli", "run", "--checkpoint", str(root / "ckpt"), "--task", "vqav2",
           "--out", str(out), "--device", "cpu", "--max-new-tokens", MAX_NEW, "--batch-size", "4",
           "--image-workers", "1", "--questions", options["questions"], "--annotations", options["annotations"],
           "--image-root", options["image_root"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _answers(out) == reference[1]
    assert not list(out.glob("predictions.rank*.jsonl"))
    assert json.loads((out / "run.json").read_text())["generation"]["world_size"] == 2


def test_suite_runs_synth_tasks_and_writes_summary(setup, tmp_path):
    root, _ = setup
    synth = Path(__file__).parent / "fixtures" / "eval" / "synth"
    suite = Path(__file__).parents[1] / "eval" / "suites" / "synth.yaml"
    argv = ["suite", "--config", str(suite), "--data", str(synth), "--checkpoint", str(root / "ckpt"),
            "--out", str(tmp_path / "s"), "--device", "cpu", "--max-new-tokens", "3", "--image-workers", "1"]
    assert main(argv) == 0
    for name, count in (("synth_vqa", 3), ("synth_pope", 6), ("synth_mc", 2), ("ifeval_mm", 3)):
        metrics = json.loads((tmp_path / "s" / name / "metrics.json").read_text())
        assert metrics["num_questions"] == count and metrics["missing"] == 0
        assert json.loads((tmp_path / "s" / name / "run.json").read_text())["task"] == name
    summary = (tmp_path / "s" / "summary.md").read_text().splitlines()
    assert summary[0] == "| run | ifeval_mm | synth_mc | synth_pope | synth_vqa |"


def test_sampling_is_seeded_recorded_and_guarded_on_resume(setup, reference, tmp_path):
    """--temperature > 0 samples: the same seed gives the same answers, another seed others (some question at
    least), run.json records it, and a greedy rerun into the folder is refused."""
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        _run(setup, tmp_path / name, "--batch-size", "8", "--temperature", "1.5", "--seed", seed)
        runs[name] = _answers(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"] and runs["a"] != reference[1]
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["generation"]["sampling"] == {"temperature": 1.5, "top_p": 1.0, "seed": 1}
    assert record["generation"]["greedy"] is False
    root, options = setup
    code = main(["run", "--checkpoint", str(root / "ckpt"), "--task", "vqav2", "--out", str(tmp_path / "a"),
                 "--device", "cpu", "--max-new-tokens", MAX_NEW, "--questions", options["questions"],
                 "--annotations", options["annotations"], "--image-root", options["image_root"]])
    assert code == 2


def test_later_turns_replay_the_models_own_earlier_answers(setup):
    """A multi-turn question is asked after its earlier turns are answered, and its prompt holds those answers:
    the answer equals generating on the conversation built by hand from the turn-0 prediction."""
    from eval.runner import GenerationSettings, Generator, conversation, generate_predictions
    from eval.distributed import Ranks
    from eval.tasks.base import Question
    import mm

    root, options = setup
    model = mm.load_pretrained(root / "ckpt").eval()
    image = Path(options["image_root"]) / sorted(p.name for p in Path(options["image_root"]).iterdir())[0]
    first = Question("k/0", "What is shown?", (image,))
    second = Question("k/1", "And its colour?", (image,), history=(("k/0", "What is shown?"),))
    single = Question("s", "Anything else?", (image,))
    generator = Generator(model, GenerationSettings(batch_size=2, max_new_tokens=int(MAX_NEW), image_workers=1),
                          torch.float32)
    out = root / "multi_turn"
    out.mkdir()
    generate_predictions(generator, [second, first, single], out, Ranks(), "tiny", "test")
    answers = _answers(out)
    assert set(answers) == {"k/0", "k/1", "s"}
    turns = conversation(second, model.config.image_token, [answers["k/0"]])
    assert [t["from"] for t in turns] == ["human", "gpt", "human"] and turns[1]["value"] == answers["k/0"]
    assert turns[0]["value"].startswith(model.config.image_token)
    alone = Generator(model, GenerationSettings(batch_size=1, max_new_tokens=int(MAX_NEW)), torch.float32)
    assert alone.answer([second], alone.load_images([second]), {"k/0": answers["k/0"]}) == [answers["k/1"]]
    with pytest.raises(ValueError, match="earlier turns"):
        conversation(second, model.config.image_token, [])


def test_a_terminal_gets_a_progress_bar_and_a_log_none(setup, tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, name in ((Terminal(), "tty"), (io.StringIO(), "log")):
        monkeypatch.setattr(sys, "stderr", stream)
        _run(setup, tmp_path / name, "--batch-size", "4")
        monkeypatch.undo()
        shown = stream.getvalue()
        assert ("12/12" in shown and "question" in shown) == (name == "tty"), shown
