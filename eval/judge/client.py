"""Judges: an OpenAI-compatible chat-completions server (stdlib HTTP) or a local transformers causal LM.

A judge turns chat `messages` and `params` ({"temperature": 0, "max_tokens": N}) into one reply string.
`identity()` is what metrics.json records; `cache_identity()` is what the cache key hashes (never the
API key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eval.tasks.base import TaskDataError

log = logging.getLogger(__name__)

# HTTP statuses worth retrying: timeouts, conflicts, rate limits and server errors. Other 4xx (bad request,
# unauthorised, unknown model) will not change by asking again.
RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
MAX_BACKOFF_S = 60.0
REDACTED = "[API key redacted]"


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows a 301/302/303 of a POST as a GET to wherever Location points, Authorization header and
    all (another host gets the API key; the reply, to no question, would be scored). Following none makes
    every 3xx an HTTPError, which `complete` turns into one error line."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects())


class JudgeError(TaskDataError):
    """The judge cannot be reached or refuses the request (after the retries); mm-eval exits with one line."""


@dataclass(frozen=True)
class Reply:
    text: str
    served_by: str | None = None  # the model name the server reports (`model` of the response)


class OpenAIJudge:
    """POST {base_url}/chat/completions, temperature 0, retries with exponential backoff."""

    kind = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY", *, timeout_s: float = 120.0,
                 max_retries: int = 5, backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self._warned = False

    def identity(self) -> dict:
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url, "api_key_env": self.api_key_env}

    def cache_identity(self) -> dict:
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url}

    def _api_key(self) -> str:
        return os.environ.get(self.api_key_env, "")

    def redact(self, text: str) -> str:
        """`text` without the API key: servers echo request headers in error bodies and even in replies."""
        key = self._api_key()
        return text.replace(key, REDACTED) if key else text

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif not self._warned:
            self._warned = True
            log.warning("judge: $%s is not set; sending requests without an API key", self.api_key_env)
        return headers

    def complete(self, messages: list[dict], params: dict) -> Reply:
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=body, headers=self._headers(), method="POST")
            retry_after = None
            try:
                with _OPENER.open(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                return self._parse_response(raw)
            except urllib.error.HTTPError as error:
                detail = self.redact(error.read()[:300].decode("utf-8", "replace"))
                if 300 <= error.code < 400:
                    target = self.redact(str(error.headers.get("Location", "?") if error.headers else "?"))[:200]
                    raise JudgeError(f"judge {url}: HTTP {error.code} redirect to {target} not followed (it would "
                                     f"resend the API key and drop the request body); give the final address "
                                     f"as --judge-base-url") from None
                if error.code not in RETRY_STATUSES:
                    hint = f" (is ${self.api_key_env} set and valid?)" if error.code in (401, 403) else ""
                    raise JudgeError(f"judge {url}: HTTP {error.code}{hint}: {detail}") from None
                problem = f"HTTP {error.code}: {detail}"
                retry_after = _seconds(error.headers.get("Retry-After") if error.headers else None)
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as error:
                problem = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            except ValueError as error:  # a 200 whose body is not a chat completion
                problem = self.redact(str(error))
            if attempt == self.max_retries:
                raise JudgeError(f"judge {url}: no reply after {self.max_retries + 1} tries; last: {problem}")
            wait = min(MAX_BACKOFF_S, self.backoff_s * 2 ** min(attempt, 32))  # 2 ** 1024 overflows a float
            if retry_after is not None:
                wait = min(MAX_BACKOFF_S, max(wait, retry_after))
            log.warning("judge %s (try %d of %d); again in %.2fs", problem, attempt + 1, self.max_retries + 1, wait)
            self.sleep(wait)
        raise AssertionError("unreachable")

    def _parse_response(self, raw: bytes) -> Reply:
        """The reply text and serving model of a chat completion, checked before anything caches them: a
        field of the wrong type is a ValueError (retried, then an error), never a crash on a later re-score."""
        try:
            data = json.loads(raw.decode("utf-8"))
            message = data["choices"][0]["message"]
            if not isinstance(message, dict):
                raise TypeError("message is not an object")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError, RecursionError):
            raise ValueError(f"reply is not a chat completion: {raw[:200]!r}") from None
        served_by = data.get("model")
        content = message.get("content")
        for name, value in (("model", served_by), ("choices[0].message.content", content)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"reply is not a chat completion: {name} is {type(value).__name__}, "
                                 f"not a string: {raw[:200]!r}")
        # A refusal or tool call has no text: an empty reply, which no benchmark parses (counted as unparsed).
        return Reply(self.redact(content or ""), served_by)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class HFJudge:
    """A local transformers causal LM: the messages through its chat template, greedy decoding."""

    kind = "hf"

    def __init__(self, path: str | Path, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = str(Path(path).resolve())
        self.tokenizer = _loaded(path, lambda: AutoTokenizer.from_pretrained(self.path))
        if not getattr(self.tokenizer, "chat_template", None):
            raise JudgeError(f"--judge hf:{path}: the tokenizer has no chat template")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = _loaded(path, lambda: AutoModelForCausalLM.from_pretrained(self.path, dtype="auto")
                             .to(self.device).eval())
        self._lock = threading.Lock()  # one generate at a time; the thread pool only overlaps bookkeeping

    def identity(self) -> dict:
        return {"kind": self.kind, "path": self.path, "device": self.device}

    def cache_identity(self) -> dict:
        return {"kind": self.kind, "path": self.path, "files": _model_fingerprint(Path(self.path))}

    def complete(self, messages: list[dict], params: dict) -> Reply:
        import torch

        if params.get("temperature", 0) != 0:
            raise ValueError("the hf judge decodes greedily (temperature 0)")
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, do_sample=False, max_new_tokens=int(params["max_tokens"]),
                                         pad_token_id=pad)
        new = output[0, inputs["input_ids"].shape[1]:]
        return Reply(self.tokenizer.decode(new, skip_special_tokens=True), Path(self.path).name)


def _loaded(path, load: Callable):
    """`load()`, with what transformers raises for a folder that is no model (no weights, an unknown model
    type, a damaged file) as one error line naming --judge."""
    try:
        return load()
    except (OSError, ValueError, KeyError) as error:
        raise JudgeError(f"--judge hf:{path}: not a transformers causal LM folder ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]})") from None


def _model_fingerprint(path: Path) -> dict:
    """sha256 of the small JSON files (config, tokenizer, chat template) and the size of every weight file:
    a changed model under the same path gets new cache keys without hashing gigabytes of weights."""
    out = {}
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        if file.suffix in (".json", ".jinja", ".model", ".txt"):
            out[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
        elif file.suffix in (".safetensors", ".bin", ".pt"):
            out[file.name] = f"{file.stat().st_size} bytes"
    return out


@dataclass(frozen=True)
class JudgeSpec:
    kind: str  # "openai" or "hf"
    target: str  # model name or local path


def parse_judge_spec(value: str) -> JudgeSpec:
    kind, sep, target = value.partition(":")
    if not sep or kind not in ("openai", "hf") or not target.strip():
        raise TaskDataError(f"--judge {value!r}: expected openai:MODEL (with --judge-base-url) or hf:PATH "
                            f"(a local transformers model folder)")
    if kind == "hf" and not Path(target).is_dir():
        raise TaskDataError(f"--judge {value!r}: folder not found: {target}")
    return JudgeSpec(kind, target)
