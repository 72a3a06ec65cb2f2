"""The judge options of the judge-scored tasks (CLI flags of `mm-eval run|score` and suite keys).

This module imports nothing from `eval`: the task modules import it while `eval.tasks` is being set up.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any


def _option(help: str, default: Any = MISSING) -> Any:
    """As `eval.tasks.base.option` (a dataclass field whose help becomes the CLI help), not a file option."""
    return field(default=default, metadata={"help": help, "file": False})


@dataclass(kw_only=True)
class JudgeOptions:
    """Judge settings; keyword-only so that they follow each task's own (required) data options."""

    judge: str = _option("the judge: openai:MODEL (an OpenAI-compatible server, see --judge-base-url) or hf:PATH "
                         "(a local transformers causal LM folder; greedy, through its chat template)")
    judge_base_url: str = _option("base URL of the OpenAI-compatible server (POST {url}/chat/completions)",
                                  "https://api.openai.com/v1")
    judge_api_key_env: str = _option("environment variable holding the API key (sent as a Bearer header, "
                                     "never written to a file); unset: no key is sent", "OPENAI_API_KEY")
    judge_concurrency: str = _option("judge requests in flight at once", "4")
    judge_max_retries: str = _option("retries of a failed HTTP request (timeouts, 408/429/5xx), with exponential "
                                     "backoff", "5")
    judge_backoff: str = _option("seconds before the first retry; doubled each retry (at most 60)", "1.0")
    judge_timeout: str = _option("seconds to wait for one judge reply", "120")
