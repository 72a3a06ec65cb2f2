"""Judge-scored tasks (llava_bench, mmvet) against a stub OpenAI-compatible server on 127.0.0.1: request
text, reply parsing, aggregation by hand, the cache (a re-score makes no request), retries, the concurrency
limit, the API key (a Bearer header, in no written file), unparsed replies counted and left out."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval.cli import main
from eval.judge import llava_bench as lb
from eval.judge import mmvet as mv
from eval.judge.cache import JudgeCache

SECRET = "sk-test-7f3a-DO-NOT-WRITE"
KEY_ENV = "MM_TEST_JUDGE_KEY"


class StubJudge:
    """A loopback chat-completions server: `responder(body, nth)` -> (status, reply text or body dict), where
    nth counts earlier requests with the same body. Records every request and the most requests in flight."""

    def __init__(self, responder, delay: float = 0.0):
        self.responder = responder
        self.delay = delay
        self.requests: list[tuple[dict, dict]] = []
        self.seen: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append((dict(self.headers), body))
                    canonical = json.dumps(body, sort_keys=True)
                    nth = stub.seen[canonical]
                    stub.seen[canonical] += 1
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    time.sleep(stub.delay)
                    status, reply = stub.responder(body, nth)
                    if isinstance(reply, str):
                        reply = {"id": "x", "object": "chat.completion", "model": f"{body['model']}-0613",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                              "finish_reason": "stop"}]}
                    data = json.dumps(reply).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory():
    stubs = []

    def make(responder, delay=0.0):
        stubs.append(StubJudge(responder, delay))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def judge_args(stub, *extra) -> list[str]:
    return ["--judge", "openai:stub", "--judge-base-url", stub.url, "--judge-api-key-env", KEY_ENV,
            "--judge-backoff", "0.01", *extra]


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# ---------------------------------------------------------------- LLaVA-Bench In-the-Wild

WILD_QUESTIONS = [  # (question_id, image, text, category, model answer or None)
    (0, "a.jpg", "What is in the picture?", "conv", "good answer"),
    (1, "a.jpg", "Describe the image in detail.", "detail", "ok answer"),
    (2, "b.jpg", "Why is this funny?", "complex", "flaky answer"),
    (3, "b.jpg", "What colour is the car?", "conv", "hopeless answer"),
    (4, "b.jpg", "What might happen next?", "complex", None),
    (5, "a.jpg", "Describe the lighting.", "detail", "server answer"),
]


def write_wild_bench(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    write_jsonl(root / "questions.jsonl", [{"question_id": q, "image": i, "text": t, "category": c}
                                           for q, i, t, c, _ in WILD_QUESTIONS])
    write_jsonl(root / "context.jsonl", [{"id": "a", "image": "a.jpg", "caption": "A cat on a mat."},
                                         {"id": "b", "image": "b.jpg", "caption": ["A red car.", "A street."]}])
    write_jsonl(root / "answers_gpt4.jsonl", [{"question_id": q, "text": f"reference {q}", "answer_id": f"r{q}",
                                               "model_id": "gpt-4-0314"} for q, *_ in WILD_QUESTIONS])
    return root


def write_wild_predictions(path: Path) -> str:
    return write_jsonl(path, [{"question_id": q, "prompt": t, "text": a, "model_id": "m", "metadata": {}}
                              for q, _, t, _, a in WILD_QUESTIONS if a is not None])


def wild_responder(body, nth):
    answer = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", body["messages"][1]["content"], re.S)[1]
    if answer == "good answer":
        return 200, "8 9\nAssistant 2 is better."
    if answer == "ok answer":
        return 200, "8,6\nBoth fine."  # a comma between the scores is LLaVA's separator too
    if answer == "flaky answer":
        return 200, ("Scores: 7 and 5" if nth == 0 else "7 5\nexplanation")
    if answer == "hopeless answer":
        return 200, "I cannot rate these answers."
    if answer == "":  # the missing prediction, reviewed as an empty answer
        return 200, "9 1\nAssistant 2 said nothing."
    if answer == "server answer":
        return (500, {"error": "overloaded"}) if nth == 0 else (200, "10 4\n")
    raise AssertionError(answer)


def score_wild(bench, predictions, out, stub, *extra) -> int:
    return main(["score", "--task", "llava_bench", "--predictions", predictions, "--out", str(out),
                 "--bench-root", str(bench), *judge_args(stub, *extra)])


def test_llava_bench_review_parse_aggregate_cache_and_key(tmp_path, stub_factory, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, SECRET)
    bench = write_wild_bench(tmp_path / "bench")
    predictions = write_wild_predictions(tmp_path / "answers.jsonl")
    stub = stub_factory(wild_responder)
    out = tmp_path / "out"
    assert score_wild(bench, predictions, out, stub) == 0

    # the exact request of question 0: LLaVA's system prompt, the review text, temperature 0, 1024 tokens
    first = next(body for _, body in stub.requests if "good answer" in body["messages"][1]["content"])
    rule = lb.RULES["llava_bench_conv"]
    assert first["messages"][0] == {"role": "system", "content":
                                    "You are a helpful and precise assistant for checking the quality of the answer."}
    assert first["messages"][1]["content"] == (
        "[Context]\nA cat on a mat.\n\n[Question]\nWhat is in the picture?\n\n"
        "[Assistant 1]\nreference 0\n\n[End of Assistant 1]\n\n[Assistant 2]\ngood answer\n\n[End of Assistant 2]\n\n"
        f"[System]\n{rule['prompt']}\n\n")
    assert first["model"] == "stub" and first["temperature"] == 0 and first["max_tokens"] == 1024
    # a list caption is joined by newlines
    assert any("[Context]\nA red car.\nA street.\n\n" in b["messages"][1]["content"] for _, b in stub.requests)

    metrics = json.loads((out / "metrics.json").read_text())
    # by hand, question 3 (never parsed) left out: conv (8,9); detail (8,6) (10,4); complex (7,5) (9,1)
    assert metrics["per_category"] == {
        "complex": {"relative": 37.5, "reference_score": 80.0, "model_score": 30.0, "count": 2},
        "conv": {"relative": 112.5, "reference_score": 80.0, "model_score": 90.0, "count": 1},
        "detail": {"relative": 55.6, "reference_score": 90.0, "model_score": 50.0, "count": 2}}
    # all: means 8.4 and 5.0 -> 5.0 / 8.4 * 100 = 59.52 -> 59.5
    assert metrics["overall"] == 59.5 and metrics["reference_score"] == 84.0 and metrics["model_score"] == 50.0
    assert metrics["judge_unparsed"] == 1 and metrics["reviewed"] == 5
    assert metrics["missing"] == 1 and metrics["num_questions"] == 6
    # requests: one each for 0, 1, 4; two for the flaky one; three (every attempt) for the hopeless one;
    # the 500 and its retry for 5. Calls = replies cached = 9.
    assert len(stub.requests) == 10
    judge = metrics["judge"]
    assert judge["kind"] == "openai" and judge["model"] == "stub" and judge["base_url"] == stub.url
    assert judge["calls"] == 9 and judge["cache_hits"] == 0 and judge["served_by"] == ["stub-0613"]
    assert judge["params"] == {"temperature": 0, "max_tokens": 1024} and judge["api_key_env"] == KEY_ENV
    reviews = [json.loads(line) for line in (out / "judge_reviews.jsonl").read_text().splitlines()]
    assert reviews[3]["tuple"] is None and reviews[3]["replies"] == ["I cannot rate these answers."] * 3
    assert reviews[2]["tuple"] == [7.0, 5.0] and reviews[4]["answer_missing"] is True
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == 9

    # the API key: a Bearer header on every request, in no file written
    assert all(headers.get("Authorization") == f"Bearer {SECRET}" for headers, _ in stub.requests)
    for path in [*out.rglob("*"), Path(predictions)]:
        if path.is_file():
            assert SECRET not in path.read_text(), path

    # re-scoring: every reply from the cache, no request, the same metrics
    before = len(stub.requests)
    assert score_wild(bench, predictions, out, stub) == 0
    assert len(stub.requests) == before
    again = json.loads((out / "metrics.json").read_text())
    assert again["judge"]["calls"] == 0 and again["judge"]["cache_hits"] == 9
    assert {k: v for k, v in again.items() if k != "judge"} == {k: v for k, v in metrics.items() if k != "judge"}
    assert "llava_bench: overall 59.5" in capsys.readouterr().out


def test_llava_bench_torn_cache_line_asked_again(tmp_path, stub_factory, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    bench = write_wild_bench(tmp_path / "bench")
    predictions = write_wild_predictions(tmp_path / "answers.jsonl")
    stub = stub_factory(wild_responder)
    out = tmp_path / "out"
    assert score_wild(bench, predictions, out, stub, "--judge-concurrency", "1") == 0
    cache = out / "judge_cache.jsonl"
    data = cache.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    cache.write_bytes(data[: last_start + 40])  # a crash in the middle of the last record
    before = len(stub.requests)
    assert score_wild(bench, predictions, out, stub, "--judge-concurrency", "1") == 0
    assert len(stub.requests) == before + 1
    assert len(cache.read_text().splitlines()) == 9 and cache.read_bytes().endswith(b"\n")


def test_llava_bench_coco_layout_and_rule_file(tmp_path):
    from eval.tasks.llava_bench import LLaVABenchOptions, read_llava_bench

    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    write_jsonl(root / "questions.jsonl", [{"question_id": 0, "image": "1.jpg", "text": "What is it?",
                                            "category": "conv"}])
    write_jsonl(root / "context.jsonl", [{"id": "1", "image": "1.jpg", "captions": ["A dog.", "A brown dog."],
                                          "instances": [{"category": "dog", "bbox": [0.1, 0.25, 0.5, 1.0]}]}])
    write_jsonl(root / "answers_gpt4.jsonl", [{"question_id": 0, "text": "A dog.", "category": "conv"}])
    options = LLaVABenchOptions(judge="openai:gpt-4-0314", bench_root=str(root))
    [question] = read_llava_bench(options)
    truth = question.truth
    assert question.prompt == "What is it?" and question.images == (root / "images" / "1.jpg",)
    # eval_gpt_review_visual.py: captions, a blank line, `category: [boxes]`; the "conv" rule (not llava_bench_conv)
    assert truth.context == "A dog.\nA brown dog.\n\ndog: [0.1, 0.25, 0.5, 1.0]"
    assert truth.prompt == lb.RULES["conv"]["prompt"] and "bounding box" in truth.prompt
    # --rule-file replaces the shipped rules
    (tmp_path / "rule.json").write_text(json.dumps({"conv": {"role": "Reviewer", "prompt": "Rate them."}}))
    options = LLaVABenchOptions(judge="openai:x", bench_root=str(root), rule_file=str(tmp_path / "rule.json"))
    [question] = read_llava_bench(options)
    assert (question.truth.role, question.truth.prompt) == ("Reviewer", "Rate them.")


def test_shipped_protocol_text_is_the_official_text():
    """sha256 of the strings in LLaVA's rule.json (181a2f81) and MM-Vet's mm-vet_evaluator.py (acde843e),
    computed from those files: an edit of the shipped copies fails here."""
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    for category in ("conv", "detail", "complex"):
        assert digest(lb.RULES[f"llava_bench_{category}"]["prompt"]) == \
            "2ce22b562d6008864970ea863ac8a4d385ea6f2e64ab1313a23f825202a9529d"
        assert digest(lb.RULES[category]["prompt"]) == \
            "a73b4b7bb781472c8997cc44cfe058aa2701a624ddb3ee22f4ff18ce02700dff"
        assert lb.RULES[category]["role"] == lb.RULES[f"llava_bench_{category}"]["role"] == "Assistant"
    assert digest(mv.GRADER_PROMPT) == "d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f"


@pytest.mark.parametrize("review, expected", [
    ("8 9\nexplanation", (8.0, 9.0)),
    ("8,9", (8.0, 9.0)),
    ("7.5 6", (7.5, 6.0)),
    ("8, 9", None),  # ", " becomes two spaces: three parts, as in LLaVA
    ("8  9", None),
    ("Assistant 1: 8\n", None),
    ("8 9 10", None),
    ("", None),
    ("nan 5", None),
    ("\n8 9", None),  # only the first line counts
])
def test_llava_parse_score(review, expected):
    assert lb.parse_score(review) == expected


@pytest.mark.parametrize("reply, expected", [
    ("0.5", 0.5), ("1.0", 1.0), ("0.0", 0.0), ("0.7\n", 0.7), ("0.3 because", 0.3), ("1", 1.0),
    ("1.5", None), ("-0.1", None), (" 0.5", None), ("The", None), ("", None), ("nan", None),
])
def test_mmvet_parse_grade(reply, expected):
    assert mv.parse_grade(reply) == expected


def test_llava_summary_rounds_means_before_the_ratio():
    # means 7.3333 and 6.6667 -> 7.333 and 6.667 (3 decimals) -> 6.667 / 7.333 * 100 = 90.92 -> 90.9
    summary = lb.summarize([(8.0, 7.0), (7.0, 6.0), (7.0, 7.0)])
    assert summary == {"relative": 90.9, "reference_score": 73.3, "model_score": 66.7, "count": 3}


# ---------------------------------------------------------------- MM-Vet

MMVET = {  # key: (capabilities, answer, model prediction or None)
    "v1_0": (["rec", "ocr"], "-1<AND>-5", "x = -1"),
    "v1_1": (["rec"], "cat", "a cat"),
    "v1_2": (["ocr", "math"], "42", "forty-two"),
    "v1_3": (["rec", "know"], "Paris", "blah"),
    "v1_4": (["ocr", "rec"], "stop", None),
    "v1_5": (["rec"], "dog", "a dog"),
}


def write_mmvet(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    data = {key: {"imagename": f"{key}.png", "question": f"Question {key}?", "answer": answer, "capability": caps}
            for key, (caps, answer, _) in MMVET.items()}
    (root / "mm-vet.json").write_text(json.dumps(data, indent=2))
    return root


def write_mmvet_predictions(path: Path) -> str:
    # LLaVA's answer file: integer ids 0..217 for v1_0..v1_217
    return write_jsonl(path, [{"question_id": int(key[3:]), "prompt": "", "text": pred, "model_id": "m",
                               "metadata": {}} for key, (_, _, pred) in MMVET.items() if pred is not None])


def mmvet_responder(body, nth):
    content = body["messages"][0]["content"]
    row = content.split("\n")[-1] if not content.endswith(mv.RETRY_SUFFIX) else content.split("\n")[-2]
    retry = content.endswith(mv.RETRY_SUFFIX)
    prediction = row.split(" | ")[2]
    replies = {"x = -1": "0.5", "a cat": "1.0", "forty-two": "0.8" if retry else "The",
               "blah": "N/A", "a dog": "0.0" if retry else "1.5"}
    return 200, replies[prediction]


def score_mmvet(root, predictions, out, stub, *extra) -> int:
    return main(["score", "--task", "mmvet", "--predictions", predictions, "--out", str(out),
                 "--mmvet-root", str(root), *judge_args(stub, *extra)])


def test_mmvet_grader_request_retry_variant_and_aggregation(tmp_path, stub_factory, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    root = write_mmvet(tmp_path / "mm-vet")
    predictions = write_mmvet_predictions(tmp_path / "answers.jsonl")
    stub = stub_factory(mmvet_responder)
    out = tmp_path / "out"
    assert score_mmvet(root, predictions, out, stub) == 0
    bodies = [body for _, body in stub.requests]
    # the grader's few-shot examples hold "x = -1" too: the request is the one whose own row ends with it
    first = next(b for b in bodies if b["messages"][0]["content"].endswith("| x = -1 | "))
    assert first["messages"] == [{"role": "user", "content":
                                  mv.GRADER_PROMPT + "\nQuestion v1_0? | -1 <AND> -5 | x = -1 | "}]
    assert first["temperature"] == 0 and first["max_tokens"] == 3
    retried = [b["messages"][0]["content"] for b in bodies if "forty-two" in b["messages"][0]["content"]]
    assert retried == [mv.GRADER_PROMPT + "\nQuestion v1_2? | 42 | forty-two | ",
                       mv.GRADER_PROMPT + "\nQuestion v1_2? | 42 | forty-two | "
                       "\nPredict the correctness of the answer (digit): "]
    # v1_3 asked 5 times (grader prompt, then the retry prompt 4 times), never parsed; v1_4 has no prediction
    assert sum("blah" in b["messages"][0]["content"] for b in bodies) == 5
    assert not any("Question v1_4?" in b["messages"][0]["content"] for b in bodies)
    assert len(bodies) == 1 + 1 + 2 + 5 + 2

    metrics = json.loads((out / "metrics.json").read_text())
    # graded: v1_0 0.5 (rec, ocr), v1_1 1.0 (rec), v1_2 0.8 (ocr, math), v1_4 0.0 missing (ocr, rec),
    # v1_5 0.0 (rec); v1_3 unparsed, left out. total 2.3 / 5 * 100 = 46.0
    assert metrics["overall"] == 46.0 and metrics["graded"] == 5 and metrics["judge_unparsed"] == 1
    assert metrics["missing"] == 1 and metrics["answered"] == 5 and metrics["unknown_ids"] == 0
    assert metrics["per_capability"] == {"rec": {"score": 37.5, "count": 4}, "ocr": {"score": 43.3, "count": 3},
                                         "math": {"score": 80.0, "count": 1}}
    assert list(metrics["per_capability_integration"].items()) == [
        ("ocr_rec", {"score": 25.0, "count": 2}), ("rec", {"score": 50.0, "count": 2}),
        ("math_ocr", {"score": 80.0, "count": 1})]
    assert metrics["judge"]["calls"] == 11 and metrics["judge"]["params"] == {"temperature": 0, "max_tokens": 3}
    reviews = {r["question_id"]: r for r in map(json.loads, (out / "judge_reviews.jsonl").read_text().splitlines())}
    assert reviews["v1_3"]["score"] is None and reviews["v1_3"]["replies"] == ["N/A"] * 5
    assert reviews["v1_4"] == {"question_id": "v1_4", "capability": ["ocr", "rec"], "answer_missing": True,
                               "score": 0.0, "replies": []}
    assert "## per_capability" in (out / "metrics.md").read_text()

    before = len(stub.requests)
    assert score_mmvet(root, predictions, out, stub) == 0
    assert len(stub.requests) == before
    assert json.loads((out / "metrics.json").read_text())["judge"]["cache_hits"] == 11


def test_mmvet_llava_question_file(tmp_path):
    from eval.tasks.mmvet import MMVetOptions, read_mmvet

    root = write_mmvet(tmp_path / "mm-vet")
    questions = write_jsonl(tmp_path / "llava-mm-vet.jsonl", [
        {"question_id": 1, "image": "v1_1.png", "text": "Question v1_1?"},
        {"question_id": 0, "image": "v1_0.png", "text": "Question v1_0?"}])
    read = read_mmvet(MMVetOptions(judge="openai:x", mmvet_root=str(root), questions=questions))
    assert [q.question_id for q in read] == ["v1_1", "v1_0"]
    assert read[0].truth.capabilities == ("rec",) and read[0].images == (root / "images" / "v1_1.png",)
    assert [q.question_id for q in read_mmvet(MMVetOptions(judge="openai:x", mmvet_root=str(root)))] == list(MMVET)


def test_concurrency_limit(tmp_path, stub_factory, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    root = tmp_path / "mm-vet"
    (root / "images").mkdir(parents=True)
    (root / "mm-vet.json").write_text(json.dumps({f"v1_{i}": {"imagename": f"v1_{i}.png", "question": f"Q{i}",
                                                               "answer": "a", "capability": ["rec"]}
                                                  for i in range(9)}))
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"question_id": f"v1_{i}", "text": f"p{i}"} for i in range(9)])
    stub = stub_factory(lambda body, nth: (200, "1.0"), delay=0.15)
    assert score_mmvet(root, predictions, tmp_path / "out", stub, "--judge-concurrency", "3") == 0
    assert len(stub.requests) == 9 and stub.max_in_flight == 3
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["overall"] == 100.0


def test_http_errors_retried_then_one_error_line_and_resume(tmp_path, stub_factory, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, SECRET)
    root = write_mmvet(tmp_path / "mm-vet")
    predictions = write_mmvet_predictions(tmp_path / "answers.jsonl")
    broken = {"on": True}

    def responder(body, nth):
        if broken["on"] and "a cat" in body["messages"][0]["content"]:
            return 503, {"error": "unavailable"}
        return mmvet_responder(body, nth)

    stub = stub_factory(responder)
    out = tmp_path / "out"
    code = score_mmvet(root, predictions, out, stub, "--judge-concurrency", "1", "--judge-max-retries", "2")
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no reply after 3 tries" in err and "HTTP 503" in err and SECRET not in err
    assert sum("a cat" in b["messages"][0]["content"] for _, b in stub.requests) == 3
    assert not (out / "metrics.json").exists()
    cached = len(JudgeCache(out / "judge_cache.jsonl"))
    assert cached == 1  # v1_0, graded before v1_1 failed; later items were not started
    broken["on"] = False
    before = len(stub.requests)
    assert score_mmvet(root, predictions, out, stub, "--judge-concurrency", "1") == 0
    assert len(stub.requests) - before == 11 - cached
    assert json.loads((out / "metrics.json").read_text())["overall"] == 46.0


def test_http_401_is_not_retried(tmp_path, stub_factory, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    root = write_mmvet(tmp_path / "mm-vet")
    predictions = write_mmvet_predictions(tmp_path / "answers.jsonl")
    stub = stub_factory(lambda body, nth: (401, {"error": "no key"}))
    assert score_mmvet(root, predictions, tmp_path / "out", stub, "--judge-concurrency", "1") == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and f"${KEY_ENV}" in err
    assert len(stub.requests) == 1 and "Authorization" not in stub.requests[0][0]


def test_bad_input_is_one_error_line(tmp_path, stub_factory, capsys):
    bench = write_wild_bench(tmp_path / "bench")
    predictions = write_wild_predictions(tmp_path / "answers.jsonl")
    stub = stub_factory(wild_responder)

    def run(*args) -> str:
        assert main(["score", "--task", "llava_bench", "--predictions", predictions, "--out", str(tmp_path / "o"),
                     *args]) == 2
        return capsys.readouterr().err

    assert "--judge 'gpt-4'" in run("--bench-root", str(bench), "--judge", "gpt-4")
    assert "--judge-concurrency '0'" in run("--bench-root", str(bench), *judge_args(stub, "--judge-concurrency", "0"))
    assert "give --bench-root or --questions" in run(*judge_args(stub))
    lines = (bench / "answers_gpt4.jsonl").read_text().splitlines()
    (bench / "answers_gpt4.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    err = run("--bench-root", str(bench), *judge_args(stub))
    assert "question 5: no reference answer" in err and "answers_gpt4.jsonl" in err
    write_jsonl(bench / "questions.jsonl", [{"question_id": 0, "image": "a.jpg", "text": "?", "category": "poem"}])
    assert "no rule 'llava_bench_poem'" in run("--bench-root", str(bench), *judge_args(stub))
    assert not stub.requests
