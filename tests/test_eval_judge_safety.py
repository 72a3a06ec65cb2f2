"""The judge client against hostile or broken servers on 127.0.0.1 (issue 20, items 2 and 8): a redirect never
takes the API key anywhere, the key is redacted from whatever a server echoes, a malformed reply is never
cached, grades that are not finite or off the scale are unparsed (metrics.json stays strict JSON), and every
judge option is checked (finite, in range) before anything runs."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli_checks import assert_refused, run_installed
from eval.cli import main
from eval.judge.cache import JudgeCache
from test_eval_judge import (KEY_ENV, MMVET, SECRET, judge_args, stub_factory,  # noqa: F401 (fixture)
                             write_jsonl, write_mmvet, write_mmvet_predictions, write_wild_bench,
                             write_wild_predictions)


class Loopback:
    """A server on 127.0.0.1 answering every request with `respond(handler) -> (status, headers, body)`;
    records (method, path, headers) of each request it gets."""

    def __init__(self, respond):
        self.requests: list[tuple[str, str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = respond(self)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = handle_any

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def loopback():
    servers = []

    def make(respond):
        servers.append(Loopback(respond))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def completion(content, model="judge-0613") -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


def strict_json(path: Path):
    """Parse as a strict JSON reader would: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def mmvet_score_argv(tmp_path: Path, base_url: str, *extra: str) -> list[str]:
    root = tmp_path / "mm-vet"
    if not root.exists():
        write_mmvet(root)
        # every question answered: no warning about missing answers beside the one error line
        write_jsonl(tmp_path / "answers.jsonl", [{"question_id": key, "text": f"answer {key}"} for key in MMVET])
    return ["score", "--task", "mmvet", "--predictions", str(tmp_path / "answers.jsonl"), "--out",
            str(tmp_path / "out"), "--mmvet-root", str(root), "--judge", "openai:judge", "--judge-base-url", base_url,
            "--judge-api-key-env", KEY_ENV, "--judge-backoff", "0.01", "--judge-concurrency", "1", *extra]


# ---------------------------------------------------------------- item 2: redirects and the API key

def redirect_to(trap: Loopback, code: int):
    return lambda handler: (code, {"Location": f"{trap.url}/chat/completions"}, b"moved")


def test_redirect_to_another_port_is_refused_without_sending_the_key(tmp_path, loopback):
    """The probe's case, through the installed mm-eval: a 302 to another port used to be followed as a GET
    carrying `Authorization: Bearer KEY`, and the trap's reply was scored."""
    trap = loopback(lambda handler: (200, {"Content-Type": "application/json"}, completion("1.0")))
    judge = loopback(redirect_to(trap, 302))
    done = run_installed("mm-eval", *mmvet_score_argv(tmp_path, judge.url), env={**os.environ, KEY_ENV: SECRET},
                         timeout=120)
    line = assert_refused(done.returncode, done.stderr, "HTTP 302 redirect", trap.url, judge.url, "--judge-base-url")
    assert SECRET not in line
    assert trap.requests == []  # nothing at all reached the redirect's target
    assert len(judge.requests) == 1 and judge.requests[0][0] == "POST"
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("code", [301, 303, 307, 308])
def test_every_redirect_of_the_judge_post_is_an_error(tmp_path, loopback, monkeypatch, capsys, code):
    monkeypatch.setenv(KEY_ENV, SECRET)
    trap = loopback(lambda handler: (200, {"Content-Type": "application/json"}, completion("1.0")))
    judge = loopback(redirect_to(trap, code))
    assert main(mmvet_score_argv(tmp_path, judge.url)) == 2
    err = capsys.readouterr().err
    assert f"HTTP {code} redirect to {trap.url}" in err and SECRET not in err
    assert trap.requests == [] and len(judge.requests) == 1


def test_same_origin_redirect_is_refused_too(tmp_path, loopback, monkeypatch, capsys):
    """Even a redirect to the judge's own host and port: a POST's body would be dropped on the way."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = loopback(lambda handler: (302, {"Location": "/v2/chat/completions"}, b""))
    assert main(mmvet_score_argv(tmp_path, judge.url)) == 2
    assert "HTTP 302 redirect to /v2/chat/completions" in capsys.readouterr().err
    assert [request[1] for request in judge.requests] == ["/v1/chat/completions"]


def echo_authorization(status: int):
    """A server that echoes the request's Authorization header in its body, as some error pages do."""
    def respond(handler):
        body = json.dumps({"error": f"bad header {handler.headers.get('Authorization')}"}).encode()
        return status, {"Content-Type": "application/json"}, body
    return respond


@pytest.mark.parametrize("status", [401, 400, 503])
def test_error_body_echoing_the_key_is_redacted(tmp_path, loopback, monkeypatch, capsys, status):
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = loopback(echo_authorization(status))
    assert main(mmvet_score_argv(tmp_path, judge.url, "--judge-max-retries", "1")) == 2
    err = capsys.readouterr().err  # the error line and, for the retried 503, the warnings logged
    assert f"HTTP {status}" in err and "Bearer [API key redacted]" in err and SECRET not in err
    assert all(SECRET not in path.read_text() for path in (tmp_path / "out").rglob("*") if path.is_file())


def test_a_reply_echoing_the_key_is_stored_redacted(tmp_path, loopback, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = loopback(lambda handler: (200, {}, completion(f"1.0 {handler.headers['Authorization']}")))
    assert main(mmvet_score_argv(tmp_path, judge.url)) == 0
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"judge_cache.jsonl", "judge_reviews.jsonl", "metrics.json"}
    assert all(SECRET not in path.read_text() for path in files)
    assert "1.0 Bearer [API key redacted]" in (tmp_path / "out" / "judge_reviews.jsonl").read_text()


# ---------------------------------------------------------------- item 8: replies checked before caching

@pytest.mark.parametrize("reply", [
    completion("1.0", model=7),
    completion("1.0", model={"name": "gpt"}),
    completion(["1.0"]),
    json.dumps({"choices": [{"message": "1.0"}]}).encode(),
    json.dumps({"choices": []}).encode(),
    json.dumps([1, 2]).encode(),
    b"[" * 100_000,
    b"\xff\xfe not utf-8",
], ids=["model-int", "model-dict", "content-list", "message-string", "no-choices", "a-list", "deep", "bytes"])
def test_a_malformed_reply_is_an_error_and_never_cached(tmp_path, loopback, monkeypatch, capsys, reply):
    """A non-string `model` used to be cached and then crash every re-score (TypeError) until the cache was
    deleted: now the reply is refused before it is cached, and the corrected server scores normally."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    broken = {"on": True}
    judge = loopback(lambda handler: (200, {}, reply if broken["on"] else completion("1.0")))
    argv = mmvet_score_argv(tmp_path, judge.url, "--judge-max-retries", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "reply is not a chat completion" in err and "no reply after 2 tries" in err and "Traceback" not in err
    cache = tmp_path / "out" / "judge_cache.jsonl"
    assert not cache.exists() or len(JudgeCache(cache)) == 0
    broken["on"] = False
    assert main(argv) == 0
    assert strict_json(tmp_path / "out" / "metrics.json")["judge"]["served_by"] == ["judge-0613"]


def test_a_cached_reply_with_a_non_string_model_is_a_clear_error(tmp_path, loopback, monkeypatch, capsys):
    """A cache written before the check (served_by 7 in a record that is not the last) names the file."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = loopback(lambda handler: (200, {}, completion("1.0")))
    argv = mmvet_score_argv(tmp_path, judge.url)
    assert main(argv) == 0
    cache = tmp_path / "out" / "judge_cache.jsonl"
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    records[0]["served_by"] = 7
    cache.write_text("".join(json.dumps(record) + "\n" for record in records))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{cache}:1: damaged judge cache line" in err and "served_by" in err and err.count("\n") == 1


@pytest.mark.parametrize("grade", ["1e308", "inf", "-inf", "nan", "Infinity", "1.0000001", "-0.0001"])
def test_mmvet_grades_not_finite_or_off_the_scale_are_unparsed(tmp_path, loopback, monkeypatch, grade):
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = loopback(lambda handler: (200, {}, completion(grade)))
    assert main(mmvet_score_argv(tmp_path, judge.url, "--judge-parse-attempts", "1")) == 0
    metrics = strict_json(tmp_path / "out" / "metrics.json")
    assert metrics["judge_unparsed"] == metrics["answered"] == 6
    assert metrics["graded"] == 0 and metrics["overall"] is None
    strict_json_lines(tmp_path / "out" / "judge_reviews.jsonl")


def strict_json_lines(path: Path) -> list:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("review", ["1e308 1e308", "8 inf", "nan nan", "Infinity 3", "8 11", "-1 -1"])
def test_llava_bench_scores_not_finite_or_off_the_scale_are_unparsed(tmp_path, stub_factory, monkeypatch, review):
    """`1e308 1e308` used to overflow the means to Infinity, and metrics.json held NaN (not JSON)."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    bench = write_wild_bench(tmp_path / "bench")
    predictions = write_wild_predictions(tmp_path / "answers.jsonl")
    stub = stub_factory(lambda body, nth: (200, review))
    out = tmp_path / "out"
    assert main(["score", "--task", "llava_bench", "--predictions", predictions, "--out", str(out),
                 "--bench-root", str(bench), *judge_args(stub, "--judge-parse-attempts", "1")]) == 0
    metrics = strict_json(out / "metrics.json")
    assert metrics["judge_unparsed"] == 6 and metrics["reviewed"] == 0 and metrics["overall"] is None
    strict_json_lines(out / "judge_reviews.jsonl")


def test_llava_bench_scale_ends_are_parsed(tmp_path, stub_factory, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    bench = write_wild_bench(tmp_path / "bench")
    predictions = write_wild_predictions(tmp_path / "answers.jsonl")
    stub = stub_factory(lambda body, nth: (200, "10 0\n"))
    out = tmp_path / "out"
    assert main(["score", "--task", "llava_bench", "--predictions", predictions, "--out", str(out),
                 "--bench-root", str(bench), *judge_args(stub)]) == 0
    assert strict_json(out / "metrics.json")["overall"] == 0.0


# ---------------------------------------------------------------- item 8: every judge option checked up front

BAD_JUDGE_OPTIONS = [
    ("--judge-timeout", "inf"), ("--judge-timeout", "nan"), ("--judge-timeout", "0"), ("--judge-timeout", "-5"),
    ("--judge-timeout", "1e10"), ("--judge-timeout", "soon"),
    ("--judge-concurrency", "0"), ("--judge-concurrency", "-1"), ("--judge-concurrency", "1.5"),
    ("--judge-concurrency", "inf"), ("--judge-concurrency", "100000"),
    ("--judge-max-retries", "-1"), ("--judge-max-retries", "nan"), ("--judge-max-retries", "5000"),
    ("--judge-backoff", "nan"), ("--judge-backoff", "-1"), ("--judge-backoff", "inf"), ("--judge-backoff", "1e400"),
    ("--judge-parse-attempts", "0"), ("--judge-parse-attempts", "inf"), ("--judge-parse-attempts", "9" * 5000),
]


@pytest.mark.parametrize("flag, value", BAD_JUDGE_OPTIONS)
@pytest.mark.parametrize("task", ["mmvet", "llava_bench"])
def test_bad_judge_option_is_one_line_naming_it(tmp_path, loopback, capsys, task, flag, value):
    judge = loopback(lambda handler: (200, {}, completion("1.0")))
    write_mmvet(tmp_path / "mm-vet")
    write_wild_bench(tmp_path / "bench")
    predictions = write_mmvet_predictions(tmp_path / "answers.jsonl")
    data = ["--mmvet-root", str(tmp_path / "mm-vet")] if task == "mmvet" else ["--bench-root", str(tmp_path / "bench")]
    status = main(["score", "--task", task, "--predictions", predictions, "--out", str(tmp_path / "out"), *data,
                   "--judge", "openai:judge", "--judge-base-url", judge.url, flag, value])
    line = assert_refused(status, capsys.readouterr().err, f"{flag} '{value[:20]}")
    assert "expected a" in line and len(line) < 300
    assert judge.requests == [] and not (tmp_path / "out").exists()


def test_judge_timeout_inf_through_the_installed_cli(tmp_path):
    """The probe's case: `--judge-timeout inf` was an OverflowError traceback from the socket."""
    argv = mmvet_score_argv(tmp_path, "http://127.0.0.1:9/v1", "--judge-timeout", "inf")
    done = run_installed("mm-eval", *argv, timeout=120)
    assert_refused(done.returncode, done.stderr, "--judge-timeout 'inf'")


def test_bad_judge_option_of_run_is_refused_before_the_model_loads(tmp_path, capsys):
    """`run` builds the task options before loading the checkpoint: a missing checkpoint is not what it reports."""
    write_mmvet(tmp_path / "mm-vet")
    status = main(["run", "--task", "mmvet", "--checkpoint", str(tmp_path / "no-such-model"), "--out",
                   str(tmp_path / "out"), "--mmvet-root", str(tmp_path / "mm-vet"), "--judge", "openai:x",
                   "--judge-timeout", "inf"])
    assert_refused(status, capsys.readouterr().err, "--judge-timeout 'inf'")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- beyond the list: the judge's own files

def test_hf_judge_folder_that_is_no_model_is_one_line(tmp_path, capsys):
    """transformers' ValueError/OSError for a folder without a tokenizer or weights was an internal error."""
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    argv = mmvet_score_argv(tmp_path, "http://127.0.0.1:9/v1")
    argv[argv.index("--judge") + 1] = f"hf:{folder}"
    line = assert_refused(main(argv), capsys.readouterr().err, f"--judge hf:{folder}: not a transformers causal LM")
    assert len(line) < 400


def test_judge_cache_that_is_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "out" / "judge_cache.jsonl").mkdir(parents=True)
    assert_refused(main(mmvet_score_argv(tmp_path, "http://127.0.0.1:9/v1")), capsys.readouterr().err,
                   "judge_cache.jsonl: cannot read the judge cache")
