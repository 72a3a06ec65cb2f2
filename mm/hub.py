"""Names that are a local path or else a Hugging Face Hub id: one clear error when they are neither."""

from __future__ import annotations

import os
from contextlib import contextmanager

from mm.cli_errors import BadInput


class CheckpointNotFound(FileNotFoundError, BadInput):
    """No such local path, and not fetchable as a Hub id; the message says both. Bad input for every CLI
    (`run_cli`), and still the FileNotFoundError callers have always caught."""


def could_be_hub_id(name: str) -> bool:
    """`name` or `owner/name`; anything that starts like a path or has more parts can only be local."""
    return 0 < len(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~"))


def not_found(name: str, what: str, error: BaseException | None = None) -> CheckpointNotFound:
    if error is None:
        hub = "it is not a Hub id (owner/name) either"
    else:  # the Hub's messages run over several lines; the first says what failed
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        hub = f"as a Hub id it could not be fetched: {reason[:300]}"
    return CheckpointNotFound(f"{what} {name}: no such local path, and {hub}")


@contextmanager
def local_or_hub(name: str, what: str):
    """Around a `from_pretrained(name)`: a missing path that cannot be a Hub id fails at once (no network);
    a Hub fetch that fails for a name that is not a local path raises one error saying both."""
    if not os.path.exists(name) and not could_be_hub_id(name):
        raise not_found(name, what)
    try:
        yield
    except OSError as err:  # transformers reports every failed Hub fetch as an OSError
        if os.path.exists(name) or isinstance(err, CheckpointNotFound):
            raise
        raise not_found(name, what, err) from err
