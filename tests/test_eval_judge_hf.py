"""`--judge hf:PATH` with a tiny randomly initialised transformers causal LM (its replies are garbage, so they
count as unparsed: the honest check that the local path works end to end), and an `mm-eval run` smoke of
llava_bench through the tiny mm checkpoint with the stub judge."""

from __future__ import annotations

import json

import pytest
import torch

from eval.cli import main
from test_eval_judge import KEY_ENV, SECRET, judge_args, write_jsonl, write_mmvet, write_mmvet_predictions


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mm.tiny import TOKENIZER_DIR

    path = tmp_path_factory.mktemp("judge") / "tiny-judge"
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    assert tokenizer.chat_template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_judge_replies_cached_and_counted(tmp_path, tiny_judge, monkeypatch):
    import eval.judge.client as client

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = write_mmvet(tmp_path / "mm-vet")
        predictions = write_mmvet_predictions(tmp_path / "answers.jsonl")
        out = tmp_path / "out"
        argv = ["score", "--task", "mmvet", "--predictions", predictions, "--out", str(out), "--mmvet-root", str(root),
                "--judge", f"hf:{tiny_judge}", "--judge-parse-attempts", "2"]
        assert main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        judge = metrics["judge"]
        assert judge["kind"] == "hf" and judge["path"] == str(tiny_judge.resolve()) and judge["device"] in ("cpu", "cuda")
        records = [json.loads(line) for line in (out / "judge_cache.jsonl").read_text().splitlines()]
        # 5 answered questions, each asked once or twice (the second time only if the first reply did not parse)
        assert judge["calls"] == len(records) and 5 <= len(records) <= 10
        reviews = [json.loads(line) for line in (out / "judge_reviews.jsonl").read_text().splitlines()]
        unparsed = [r for r in reviews if r["score"] is None]
        assert metrics["judge_unparsed"] == len(unparsed) and all(len(r["replies"]) == 2 for r in unparsed)
        assert metrics["graded"] == 6 - len(unparsed)
        assert all(isinstance(r["reply"], str) for r in records)
        assert records[0]["judge"]["kind"] == "hf" and "config.json" in records[0]["judge"]["files"]

        # re-scoring generates nothing
        monkeypatch.setattr(client.HFJudge, "complete", lambda *a: pytest.fail("the model was asked again"))
        assert main(argv) == 0
        again = json.loads((out / "metrics.json").read_text())
        assert again["judge"]["calls"] == 0 and again["judge"]["cache_hits"] == len(records)
        assert again["overall"] == metrics["overall"]
    finally:
        torch.set_num_threads(threads)


def test_hf_judge_without_chat_template_is_an_error(tmp_path, tiny_judge, capsys):
    import shutil

    judge = tmp_path / "no-template"
    shutil.copytree(tiny_judge, judge)
    for name in ("chat_template.jinja",):
        (judge / name).unlink(missing_ok=True)
    config = json.loads((judge / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (judge / "tokenizer_config.json").write_text(json.dumps(config))
    root = write_mmvet(tmp_path / "mm-vet")
    predictions = write_mmvet_predictions(tmp_path / "answers.jsonl")
    assert main(["score", "--task", "mmvet", "--predictions", predictions, "--out", str(tmp_path / "o"),
                 "--mmvet-root", str(root), "--judge", f"hf:{judge}"]) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_run_llava_bench_with_tiny_checkpoint(tmp_path, stub_factory, monkeypatch):
    import mm
    from mm.tiny import tiny_vlm_config
    from PIL import Image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setenv(KEY_ENV, SECRET)
        torch.manual_seed(0)
        mm.build_vlm(tiny_vlm_config()).save_pretrained(tmp_path / "ckpt")
        bench = tmp_path / "bench"
        (bench / "images").mkdir(parents=True)
        for name, colour in (("a.jpg", (200, 30, 30)), ("b.jpg", (30, 30, 200))):
            Image.new("RGB", (48, 40), colour).save(bench / "images" / name)
        questions = [{"question_id": i, "image": "ab"[i % 2] + ".jpg", "text": f"Describe picture {i}.",
                      "category": ("conv", "detail", "complex")[i % 3]} for i in range(3)]
        write_jsonl(bench / "questions.jsonl", questions)
        write_jsonl(bench / "context.jsonl", [{"image": "a.jpg", "caption": "Red."}, {"image": "b.jpg", "caption": "Blue."}])
        write_jsonl(bench / "answers_gpt4.jsonl", [{"question_id": i, "text": f"ref {i}"} for i in range(3)])
        stub = stub_factory(lambda body, nth: (200, "7 3\nok"))
        out = tmp_path / "run"
        argv = ["run", "--checkpoint", str(tmp_path / "ckpt"), "--task", "llava_bench", "--out", str(out),
                "--device", "cpu", "--max-new-tokens", "4", "--image-workers", "1", "--bench-root", str(bench),
                *judge_args(stub)]
        assert main(argv) == 0
        predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert sorted(p["question_id"] for p in predictions) == [0, 1, 2]
        assert {p["prompt"] for p in predictions} == {q["text"] for q in questions}  # the question as is
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["overall"] == round(3 / 7 * 100, 1) and metrics["judge"]["calls"] == 3
        run = json.loads((out / "run.json").read_text())
        assert run["data"]["judge"] == "openai:stub" and run["data"]["judge_api_key_env"] == KEY_ENV
        assert run["metrics_overall"] == metrics["overall"]
        for path in out.rglob("*"):
            assert SECRET not in path.read_text()
        # the model's answers reach the judge as assistant 2
        texts = [body["messages"][1]["content"] for _, body in stub.requests]
        assert all(any(f"[Assistant 2]\n{p['text']}\n\n[End of Assistant 2]" in t for t in texts) for p in predictions)
    finally:
        torch.set_num_threads(threads)


from test_eval_judge import stub_factory  # noqa: E402,F401  (the fixture, shared)
