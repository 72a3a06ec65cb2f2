"""The judge-scored tasks' shared machinery: checking the judge options, making the judge, and the cached,
concurrent loop over judge requests."""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from eval.judge.cache import CACHE_FILE, JudgeCache, request_key
from eval.judge.client import MAX_BACKOFF_S, HFJudge, OpenAIJudge, parse_judge_spec
from eval.judge.options import JudgeOptions
from eval.tasks.base import TaskDataError, flag

log = logging.getLogger(__name__)


# Upper bounds where a larger value breaks something rather than just waiting longer: a socket timeout past
# about 1e9 s overflows the platform's time_t, a thread per request in flight, and a retry or parse attempt
# count that would keep a dead server busy for days.
LIMITS = {"judge_concurrency": 256, "judge_max_retries": 100, "judge_backoff": MAX_BACKOFF_S,
          "judge_timeout": 86400.0, "judge_parse_attempts": 100}


def _number(options, name: str, kind: type, minimum: float):
    """The option as a number in [minimum, LIMITS[name]]; "inf", "nan" or a word is one error naming it."""
    value = getattr(options, name)
    maximum = LIMITS[name]
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or not minimum <= number <= maximum:
        shown = repr(value) if len(str(value)) <= 40 else f"{str(value)[:40]!r}..."
        raise TaskDataError(f"{flag(name)} {shown}: expected a{'n integer' if kind is int else ' number'} "
                            f"from {minimum} to {maximum}")
    return number


def check_judge_options(options: JudgeOptions, parse_attempts_name: str | None = None) -> None:
    """Validate the judge options before any model is loaded or request made."""
    parse_judge_spec(options.judge)
    _number(options, "judge_concurrency", int, 1)
    _number(options, "judge_max_retries", int, 0)
    _number(options, "judge_backoff", float, 0)
    _number(options, "judge_timeout", float, 0.001)
    if parse_attempts_name:
        _number(options, parse_attempts_name, int, 1)
    if not options.judge_api_key_env.strip():
        raise TaskDataError("--judge-api-key-env must name an environment variable")


def make_judge(options: JudgeOptions):
    spec = parse_judge_spec(options.judge)
    if spec.kind == "hf":
        return HFJudge(spec.target)
    return OpenAIJudge(spec.target, options.judge_base_url, options.judge_api_key_env,
                       timeout_s=_number(options, "judge_timeout", float, 0.001),
                       max_retries=_number(options, "judge_max_retries", int, 0),
                       backoff_s=_number(options, "judge_backoff", float, 0))


@dataclass(frozen=True)
class JudgeItem:
    """One thing to grade: the request variants (attempt k sends variants[min(k, len - 1)]) and the parser
    of a reply (None = unparseable)."""

    name: str
    variants: Sequence[list[dict]]
    parse: Callable[[str], Any]


@dataclass(frozen=True)
class JudgeOutcome:
    value: Any  # the parsed reply, or None when no attempt could be parsed
    replies: tuple[str, ...]  # every reply, in attempt order

    @property
    def parsed(self) -> bool:
        return self.value is not None


@dataclass
class JudgeStats:
    calls: int = 0
    cache_hits: int = 0
    served_by: set | None = None


def judge_items(judge, items: Sequence[JudgeItem], params: dict, *, attempts: int, concurrency: int,
                out_dir: Path) -> tuple[list[JudgeOutcome], dict]:
    """Grade every item (cached in out_dir/judge_cache.jsonl); returns the outcomes and the judge record
    for metrics.json (identity, parameters, calls made, cache hits)."""
    cache = JudgeCache(Path(out_dir) / CACHE_FILE)
    identity = judge.cache_identity()
    stats = JudgeStats(served_by=set())
    lock = threading.Lock()

    stop = threading.Event()  # set by the first failure: items not yet started are not asked

    def one(item: JudgeItem) -> JudgeOutcome | None:
        try:
            return ask(item)
        except BaseException:
            stop.set()
            raise

    def ask(item: JudgeItem) -> JudgeOutcome | None:
        replies = []
        for attempt in range(attempts):
            if stop.is_set():
                return None
            messages = item.variants[min(attempt, len(item.variants) - 1)]
            key = request_key(identity, messages, params, attempt)
            record = cache.get(key)
            fresh = record is None
            if fresh:
                reply = judge.complete(messages, params)
                record = {"key": key, "item": item.name, "attempt": attempt, "reply": reply.text,
                          "served_by": reply.served_by, "judge": identity, "params": params, "messages": messages}
                cache.put(record)
                with lock:
                    stats.calls += 1
            else:
                with lock:
                    stats.cache_hits += 1
            if record.get("served_by"):
                with lock:
                    stats.served_by.add(record["served_by"])
            replies.append(record["reply"])
            value = item.parse(record["reply"])
            if value is not None:
                return JudgeOutcome(value, tuple(replies))
            log.log(logging.WARNING if fresh else logging.DEBUG, "judge reply for %s (attempt %d) not parsed: %r",
                    item.name, attempt + 1, record["reply"][:80])
        return JudgeOutcome(None, tuple(replies))

    outcomes: list[JudgeOutcome | None] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(one, item): index for index, item in enumerate(items)}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            error = future.exception()
            if error is not None:
                wait(pending)  # calls in flight finish, so their replies land in the cache
                raise error
            outcomes[futures[future]] = future.result()
    record = {**judge.identity(), "params": params, "parse_attempts": attempts, "concurrency": concurrency,
              "calls": stats.calls, "cache_hits": stats.cache_hits, "served_by": sorted(stats.served_by),
              "cache_file": CACHE_FILE}
    return outcomes, record  # type: ignore[return-value]
