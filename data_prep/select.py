"""`mm-prep select SHARDS --scores SCORES.jsonl --out DIR`: a curated subset of a shard set, chosen by the
per-sample scores `mm-prep score` writes, copied into new shards.

Steps, in this order (each sees only the samples the previous ones kept):

1. `--where EXPR`: a condition over the scalar score columns (parsed with `ast`, never evaluated as Python;
   allowed: column names, numbers, `< <= > >= == !=` (chained too), `and or not`, `+ - * /`, parentheses).
   Limits: at most 1000 characters, parts nested at most 32 deep, number literals finite floats.
   A sample with null (or NaN) in any column the expression names fails it, reason `null_<column>` (the
   first such column in the expression); one that evaluates false (or divides by zero, or overflows a
   float) fails with `where`.
2. `--dedup phash:D,minhash:T` (either or both): two samples are near duplicates if some pair of their
   images has perceptual hashes within Hamming distance D, or their text MinHash signatures agree in a
   fraction >= T of positions (datasketch's Jaccard estimate). Samples are visited in priority order
   (shard order; with `--by M`, best M first: highest, or lowest with `--ascending`, nulls last, ties in
   shard order); one that duplicates an already *kept* sample is dropped as `duplicate_of:<that key>`
   (the earliest such kept sample in priority order), so a chain a~b~c with a!~c keeps a and c.
   The search is exact, not probabilistic: candidates come from banded indexes chosen by the pigeonhole
   principle (a 64-bit phash cut into D+1 chunks: two hashes within distance D agree on a whole chunk;
   a signature of P values cut into floor(P(1-T))+1 bands: two signatures agreeing in >= T*P positions
   agree on a whole band), and every candidate is checked with the exact distance/estimate. A sample
   without image hashes (text-only, undecodable: null) or without words (null, or datasketch's empty
   signature, every value 2**32-1) is not compared on that signal.
3. `--per-source-quota coco=0.5,ocr=1000`: per source (the record's `source`), a fraction of its samples
   (a number with a `.`, in (0, 1]) or a count (an integer); sources not named are not limited. Which
   samples: with `--by`, the best by M (nulls last, ties by key), else a seeded random draw (`--seed`).
   Reason `quota:<source>`.
4. `--top F --by M [--ascending]`: keep round(F*N) (halves up) of the N samples reaching this step,
   those with the highest M (lowest with `--ascending`), ties broken by key; samples with null M are
   never ranked (`null_<M>`). Or `--random F --seed S`: the same number, round(F*N), drawn with
   `random.Random(S)` from the samples in shard order: the equal-size baseline of `--top F` (exclusive).

Output: kept samples in their parents' order, their tar members copied byte for byte (same names, the
deterministic headers `mm-prep` writes), cut into shards of at most `--samples-per-shard` samples and
`--max-shard-bytes` bytes; `manifest.json` and `sizes.json` as every `mm-prep` conversion writes them (so
`mm-train` and `mm-prep inspect` read the selection as any shard set), the manifest also recording the
rule, the scores file (path, sha256), the parent directory and shards, and kept/dropped counts per reason
(`rejected_by_reason` = the dropped counts, `duplicate_of:*` counted as `duplicate_of`);
`dropped.jsonl`: one line per dropped sample in shard order: `{"key", "id", "source", "reason", ...}`.
Each file is written as a temporary file and renamed; the manifest last. `mm-select.json`, written first,
lists these files: `--overwrite` replaces an earlier selection by removing exactly them, and refuses a
folder holding anything select did not write (another command's shards, say).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import operator
import os
import random
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np

from data_prep.convert import FORMAT, OutputDirError
from data_prep.inspect_shards import ShardReadError, shard_paths
from data_prep.shards import PROGRESS_DIR, TarStream
from mm.atomic import write_json_atomic, write_jsonl_atomic
from mm.data.shards import has_end_of_archive, load_shard_sizes, sample_key

RESERVED = ("key", "id", "source")
"""Score columns that identify the sample, never metrics."""


EMPTY_MINHASH = (1 << 32) - 1
"""Every value of datasketch's MinHash of an empty shingle set (a text without words)."""


class SelectError(ValueError):
    """The selection cannot be made as asked (bad rule, scores that do not fit the shards)."""


# ----------------------------------------------------------------------------------------------- scores


@dataclass
class Scores:
    """The score file: one row per sample, in file order."""

    path: Path
    rows: list[dict]
    columns: list[str]
    """Scalar columns: every value a number or null (in file order of first appearance)."""
    sha256: str

    def value(self, row: dict, column: str) -> float | None:
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return value

    def require_column(self, column: str, option: str) -> None:
        if column not in self.columns:
            raise SelectError(f"{option}: unknown metric {column!r}; the scores in {self.path} have "
                              f"{', '.join(self.columns) or 'no scalar columns'}")  # fmt: skip


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_scores(path: str | Path) -> Scores:
    """Read a scores JSONL file; duplicate keys and malformed lines are errors naming the line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"scores file {path} not found") from None
    except IsADirectoryError:
        raise SelectError(f"scores file {path} is a directory") from None
    rows, first_line, duplicates = [], {}, []
    kinds: dict[str, bool] = {}  # column -> every value so far a number or null
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
            raise SelectError(f"{path} line {number}: not JSON ({error})") from None
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            raise SelectError(f"{path} line {number}: not a JSON object with a string `key`")
        if row["key"] in first_line:
            duplicates.append((row["key"], first_line[row["key"]], number))
            continue
        first_line[row["key"]] = number
        rows.append(row)
        for column, value in row.items():
            if column not in RESERVED:
                kinds[column] = kinds.get(column, True) and (value is None or _is_number(value))
    if duplicates:
        key, first, again = duplicates[0]
        raise SelectError(f"{path}: {len(duplicates)} duplicate keys, e.g. {key!r} on lines {first} and {again}")
    columns = [column for column, scalar in kinds.items() if scalar]
    return Scores(path, rows, columns, hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------------------------------ --where


_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}  # fmt: skip
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


MAX_WHERE_CHARS = 1000
MAX_WHERE_DEPTH = 32
"""Limits of a `--where` expression (ample for any real condition): its length, and how deeply its parts nest
(`not not x`, `-(-x)`, parentheses), so neither parsing nor evaluating it can exhaust Python's stack."""
WHERE_LIMITS = (f"at most {MAX_WHERE_CHARS} characters, nested at most {MAX_WHERE_DEPTH} deep, "
                "numbers finite floats (|x| < 1.8e308)")  # fmt: skip


@dataclass
class Where:
    """A compiled `--where` condition: `names` it reads (in order of appearance) and a predicate."""

    text: str
    names: list[str]
    predicate: Callable[[dict], bool]


def _shown(text: str, limit: int = 80) -> str:
    """`text` quoted for an error line, cut short if long (an expression may be 1000 characters)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _expression_depth(tree: ast.AST) -> int:
    """How deeply expression nodes nest in `tree`, counted without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))
    return deepest


def _parse_expression(text: str) -> ast.Expression:
    """The syntax tree of a `--where` EXPR within WHERE_LIMITS, or a `SelectError` saying which limit."""
    if len(text) > MAX_WHERE_CHARS:
        raise SelectError(f"--where {_shown(text)}: {len(text)} characters; the limit is {MAX_WHERE_CHARS}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:  # "too many nested parentheses" is one
        raise SelectError(f"--where {_shown(text)}: not an expression ({error.msg})") from None
    except ValueError as error:  # a NUL character
        raise SelectError(f"--where {_shown(text)}: not an expression ({error})") from None
    except (RecursionError, MemoryError):
        raise SelectError(f"--where {_shown(text)}: nested deeper than {MAX_WHERE_DEPTH} levels") from None
    if _expression_depth(tree.body) > MAX_WHERE_DEPTH:
        raise SelectError(f"--where {_shown(text)}: nested deeper than {MAX_WHERE_DEPTH} levels")
    return tree


def _finite(node: ast.Constant, text: str) -> float:
    """A number literal as the float it is compared as; one no float can hold (1e999, 400 digits) is an error."""
    try:
        value = float(node.value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        literal = ast.get_source_segment(text.strip(), node) or ast.unparse(node)
        raise SelectError(f"--where {_shown(text)}: the number {_shown(literal, 40)} is not a finite "
                          "float (|x| < 1.8e308)")  # fmt: skip
    return value


def parse_where(text: str, columns: list[str]) -> Where:
    """Compile EXPR into a predicate over {column: number}; anything outside the grammar, or beyond
    WHERE_LIMITS, is an error."""
    tree = _parse_expression(text)
    names: list[str] = []

    def bad(node, what: str) -> SelectError:
        return SelectError(f"--where {_shown(text)}: {what} ({_shown(ast.unparse(node), 60)}); allowed: metric names, "
                           "numbers, comparisons, and/or/not, + - * /, parentheses")  # fmt: skip

    def condition(node) -> Callable[[dict], bool]:
        if isinstance(node, ast.BoolOp):
            parts = [condition(value) for value in node.values]
            if isinstance(node.op, ast.And):
                return lambda row: all(part(row) for part in parts)
            return lambda row: any(part(row) for part in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = condition(node.operand)
            return lambda row: not inner(row)
        if isinstance(node, ast.Compare):
            if not all(type(op) in _COMPARE for op in node.ops):
                raise bad(node, "comparison operator not allowed")
            operands = [number(node.left), *(number(c) for c in node.comparators)]
            ops = [_COMPARE[type(op)] for op in node.ops]

            def compare(row):
                left = operands[0](row)
                for op, operand in zip(ops, operands[1:]):
                    right = operand(row)
                    if not op(left, right):
                        return False
                    left = right
                return True

            return compare
        raise bad(node, "a condition must be a comparison, and/or/not of comparisons")

    def number(node) -> Callable[[dict], float]:
        if isinstance(node, ast.Constant) and _is_number(node.value):
            value = _finite(node, text)
            return lambda row: value
        if isinstance(node, ast.Name):
            if node.id not in columns:
                raise SelectError(f"--where {_shown(text)}: unknown metric {node.id!r}; the scores have "
                                  f"{', '.join(columns) or 'no scalar columns'}")  # fmt: skip
            if node.id not in names:
                names.append(node.id)
            name = node.id
            return lambda row: row[name]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = number(node.operand)
            return (lambda row: -inner(row)) if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            left, right, op = number(node.left), number(node.right), _ARITH[type(node.op)]
            return lambda row: op(left(row), right(row))
        raise bad(node, "not a number, metric or + - * / of them")

    return Where(text, names, condition(tree.body))


# ------------------------------------------------------------------------------------------ options


def _parse_fraction(value, option: str) -> Fraction:
    """F in (0, 1]; exact (0.3 is 3/10), so round(F*N) has no float surprises."""
    try:
        fraction = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise SelectError(f"{option}: {value!r} is not a number") from None
    if not 0 < fraction <= 1:
        raise SelectError(f"{option}: the fraction must be in (0, 1], got {value}")
    return fraction


def round_half_up(fraction: Fraction, count: int) -> int:
    """round(F * N), halves up: 0.5 of 3 is 2, 0.3 of 10 is 3."""
    return math.floor(fraction * count + Fraction(1, 2))


def parse_dedup(spec: str) -> tuple[int | None, float | None]:
    """`phash:4,minhash:0.8` -> (4, 0.8); either may be left out."""
    phash = minhash = None
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition(":")
        try:
            if name == "phash" and phash is None:
                phash = int(value)
                if not 0 <= phash <= 63:
                    raise ValueError
            elif name == "minhash" and minhash is None:
                minhash = float(value)
                if not 0 < minhash <= 1:
                    raise ValueError
            else:
                raise SelectError(f"--dedup {spec!r}: {name!r} is not phash or minhash (or given twice)")
        except ValueError as error:
            if isinstance(error, SelectError):
                raise
            raise SelectError(f"--dedup {spec!r}: phash:D needs a whole distance 0..63, "
                              f"minhash:T a Jaccard threshold in (0, 1]; got {part!r}") from None  # fmt: skip
    if phash is None and minhash is None:
        raise SelectError(f"--dedup {spec!r}: give phash:D and/or minhash:T")
    return phash, minhash


def parse_quota(spec: str) -> dict[str, Fraction | int]:
    """`coco=0.5,ocr=1000` -> {coco: Fraction(1, 2), ocr: 1000}: a number with a `.` is a fraction, an integer a count."""
    quota: dict[str, Fraction | int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        source, equals, value = part.rpartition("=")
        if not equals or not source or source in quota:
            raise SelectError(f"--per-source-quota {spec!r}: {part!r} is not SOURCE=FRACTION or SOURCE=COUNT "
                              "(each source once)")  # fmt: skip
        if value.strip().isdigit():
            quota[source] = int(value)
        else:
            quota[source] = _parse_fraction(value, f"--per-source-quota {source}")
    if not quota:
        raise SelectError(f"--per-source-quota {spec!r}: no SOURCE=LIMIT")
    return quota


@dataclass
class SelectRule:
    """Everything that decides what is kept (recorded in the manifest)."""

    where: str | None = None
    dedup: str | None = None
    top: float | None = None
    by: str | None = None
    ascending: bool = False
    per_source_quota: str | None = None
    random: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top is not None:
            _parse_fraction(self.top, "--top")
            if self.by is None:
                raise SelectError("--top needs --by METRIC")
        if self.random is not None:
            _parse_fraction(self.random, "--random")
        if self.top is not None and self.random is not None:
            raise SelectError("--top and --random exclude each other (--random F is the baseline of --top F)")
        if self.ascending and self.by is None:
            raise SelectError("--ascending needs --by METRIC")
        if self.dedup is not None:
            parse_dedup(self.dedup)
        if self.per_source_quota is not None:
            parse_quota(self.per_source_quota)


# ------------------------------------------------------------------------------------------ shards


@dataclass
class ParentSample:
    """A sample of the parent shards: where it is and what identifies it."""

    position: int
    shard: str
    key: str
    id: object
    source: object
    num_images: int
    num_records: int
    num_bytes: int
    """Bytes of its tar members (headers and padding included)."""


def _tar_bytes(size: int) -> int:
    return 512 + -(-size // 512) * 512


def _iter_members(path: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isfile():
                    yield tar, member
            if not has_end_of_archive(tar):
                raise ValueError("no end-of-archive blocks after its last readable member")
    except (tarfile.TarError, OSError, ValueError) as error:
        raise ShardReadError(f"{path}: cannot read the shard, truncated or corrupt? ({error})") from None


def scan_parent(directory: Path) -> list[ParentSample]:
    """Every sample of the parent shard set in order (tar headers and `.json` members only)."""
    counts = load_shard_sizes(str(directory / "manifest.json")) if (directory / "manifest.json").exists() else {}
    samples: list[ParentSample] = []
    for path in shard_paths(directory):
        start, current = len(samples), None
        for tar, member in _iter_members(path):
            key, suffix = sample_key(member.name)
            if current is None or key != current.key:
                current = ParentSample(len(samples), path.name, key, None, None, 0, 1, 0)
                samples.append(current)
            current.num_bytes += _tar_bytes(member.size)
            if suffix == "json":
                try:
                    record = json.loads(tar.extractfile(member).read())
                except ValueError as error:
                    raise ShardReadError(f"{path}: sample {key!r}: its .json is not JSON ({error})") from None
                if isinstance(record, dict):
                    current.id, current.source = record.get("id"), record.get("source")
                    current.num_images = len(record.get("images") or [])
                    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
                    current.num_records = max(1, len(meta.get("question_ids") or []))  # vqa --group-by-image
        if path.name in counts and len(samples) - start != counts[path.name]:
            raise ShardReadError(f"{path}: {len(samples) - start} samples, but manifest.json says {counts[path.name]}; truncated?")
    return samples


def _example(items: list, limit: int = 3) -> str:
    return ", ".join(repr(item) for item in items[:limit]) + (", ..." if len(items) > limit else "")


def match_scores(parent: list[ParentSample], scores: Scores, directory: Path) -> dict[str, dict]:
    """{key: score row}; every shard sample needs exactly one score line and every line a shard sample."""
    seen, repeated = set(), []
    for sample in parent:
        if sample.key in seen:
            repeated.append(sample.key)
        seen.add(sample.key)
    if repeated:
        raise SelectError(f"{directory}: {len(repeated)} sample keys occur more than once in the shards, e.g. {_example(repeated)}")
    by_key = {row["key"]: row for row in scores.rows}
    unscored = [s.key for s in parent if s.key not in by_key]
    unknown = [row["key"] for row in scores.rows if row["key"] not in seen]
    problems = []
    if unscored:
        problems.append(f"{len(unscored)} of the {len(parent)} shard samples have no score line (e.g. {_example(unscored)})")
    if unknown:
        problems.append(f"{len(unknown)} score keys are not in the shards (e.g. {_example(unknown)})")
    mismatched = [s.key for s in parent if s.key in by_key and "id" in by_key[s.key] and by_key[s.key]["id"] != s.id]
    if mismatched:
        problems.append(f"{len(mismatched)} score lines name another record id than the shard sample of their key "
                        f"(e.g. {_example(mismatched)})")  # fmt: skip
    if problems:
        raise SelectError(f"the scores in {scores.path} do not match the shards in {directory}: " + "; ".join(problems))
    return by_key


# ------------------------------------------------------------------------------------------ dedup


def _phash_values(row: dict, key: str) -> list[int]:
    values = row.get("phash") or []
    if not isinstance(values, list):
        raise SelectError(f"scores of {key!r}: `phash` is not a list of 16-hex-digit strings")
    parsed = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str) or len(value) != 16:
            raise SelectError(f"scores of {key!r}: phash {value!r} is not 16 hex digits")
        try:
            parsed.append(int(value, 16))
        except ValueError:
            raise SelectError(f"scores of {key!r}: phash {value!r} is not 16 hex digits") from None
    return parsed


def _chunks(total: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, stop) ranges covering range(total), sizes differing by at most one."""
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return list(pairwise(bounds))


@dataclass
class _DuplicateIndex:
    """Kept samples' signatures in banded buckets (see the module docstring for why the search is exact)."""

    phash_distance: int | None
    minhash_threshold: float | None
    phash_bits: list[tuple[int, int]] = field(default_factory=list)
    bands: list[tuple[int, int]] | None = None
    num_perm: int | None = None
    buckets: dict = field(default_factory=dict)
    kept: list[tuple[str, list[int], np.ndarray | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.phash_distance is not None:
            self.phash_bits = _chunks(64, self.phash_distance + 1)

    def _minhash(self, row: dict, key: str) -> np.ndarray | None:
        if self.minhash_threshold is None:
            return None
        values = row.get("minhash")
        if values is None or values == []:
            return None
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise SelectError(f"scores of {key!r}: `minhash` is not a list of integers")
        signature = np.asarray(values, dtype=np.uint64)
        if bool(np.all(signature == EMPTY_MINHASH)):  # datasketch's signature of no shingles: no text to compare
            return None
        if self.num_perm is None:
            self.num_perm = len(values)
            self.bands = _chunks(self.num_perm, min(self.num_perm, math.floor(self.num_perm * (1 - self.minhash_threshold) + 1e-9) + 1))
        elif len(values) != self.num_perm:
            raise SelectError(f"scores of {key!r}: a MinHash of {len(values)} values, others have {self.num_perm}")
        return signature

    def _bucket_keys(self, phashes: list[int], signature: np.ndarray | None) -> Iterator[tuple]:
        for value in phashes:
            for number, (start, stop) in enumerate(self.phash_bits):
                yield "p", number, (value >> start) & ((1 << (stop - start)) - 1)
        if signature is not None:
            for number, (start, stop) in enumerate(self.bands):
                yield "m", number, signature[start:stop].tobytes()

    def find(self, key: str, row: dict) -> tuple[str, dict] | None:
        """The earliest kept sample this one duplicates (and how), or None after adding it to the kept."""
        phashes = _phash_values(row, key) if self.phash_distance is not None else []
        signature = self._minhash(row, key)
        bucket_keys = list(self._bucket_keys(phashes, signature))
        candidates = sorted({index for bucket in bucket_keys for index in self.buckets.get(bucket, ())})
        for index in candidates:
            other_key, other_phashes, other_signature = self.kept[index]
            if phashes and other_phashes:
                distance = min((a ^ b).bit_count() for a in phashes for b in other_phashes)
                if distance <= self.phash_distance:
                    return other_key, {"duplicate_by": "phash", "phash_distance": distance}
            if signature is not None and other_signature is not None:
                matches = int(np.count_nonzero(signature == other_signature))
                if matches >= self.minhash_threshold * self.num_perm - 1e-9:
                    return other_key, {"duplicate_by": "minhash", "jaccard": round(matches / self.num_perm, 4)}
        index = len(self.kept)
        self.kept.append((key, phashes, signature))
        for bucket in bucket_keys:
            self.buckets.setdefault(bucket, []).append(index)
        return None


# ------------------------------------------------------------------------------------------ selection


@dataclass
class Decision:
    kept: list[ParentSample]
    dropped: list[dict]
    """{key, id, source, reason, ...} in shard order."""
    steps: list[dict]
    """Per step: {step, in, kept}."""


def _ranked(pool: list[ParentSample], rows: dict[str, dict], scores: Scores, by: str, ascending: bool) -> list[ParentSample]:
    """Non-null first, best first (highest, or lowest if ascending), ties by key; nulls last, by key."""
    return sorted(pool, key=lambda s: (*_ranked_key(scores.value(rows[s.key], by), ascending), s.key))


def decide(parent: list[ParentSample], rows: dict[str, dict], scores: Scores, rule: SelectRule) -> Decision:
    """Apply where -> dedup -> quota -> top/random; returns kept samples (shard order) and the dropped."""
    reasons: dict[int, dict] = {}
    steps = []
    pool = list(parent)

    def drop(sample: ParentSample, reason: str, **extra) -> None:
        reasons[sample.position] = {"key": sample.key, "id": sample.id, "source": sample.source, "reason": reason, **extra}

    def step(name: str, kept: list[ParentSample]) -> list[ParentSample]:
        steps.append({"step": name, "in": len(pool), "kept": len(kept)})
        return kept

    if rule.by is not None:
        scores.require_column(rule.by, "--by")
    if rule.where is not None:
        where = parse_where(rule.where, scores.columns)
        kept = []
        for sample in pool:
            values = {name: scores.value(rows[sample.key], name) for name in where.names}
            null = next((name for name in where.names if values[name] is None), None)
            if null is not None:
                drop(sample, f"null_{null}")
                continue
            try:
                passed = where.predicate(values)
            except (ZeroDivisionError, OverflowError):  # x / 0; a score integer too large for a float
                passed = False
            if passed:
                kept.append(sample)
            else:
                drop(sample, "where")
        pool = step("where", kept)
    if rule.dedup is not None:
        phash, minhash = parse_dedup(rule.dedup)
        for column, wanted in (("phash", phash), ("minhash", minhash)):
            if wanted is not None and not any(column in rows[s.key] for s in parent):
                raise SelectError(f"--dedup {column}: the scores in {scores.path} have no `{column}` column")
        index = _DuplicateIndex(phash, minhash)
        order = pool  # shard order; with --by best first, nulls last, ties in shard order
        if rule.by:
            order = sorted(pool, key=lambda s: (_ranked_key(scores.value(rows[s.key], rule.by), rule.ascending), s.position))
        duplicates = set()
        for sample in order:
            found = index.find(sample.key, rows[sample.key])
            if found is not None:
                drop(sample, f"duplicate_of:{found[0]}", **found[1])
                duplicates.add(sample.position)
        pool = step("dedup", [s for s in pool if s.position not in duplicates])
    if rule.per_source_quota is not None:
        quota = parse_quota(rule.per_source_quota)
        present = Counter(str(s.source) for s in parent)
        unknown = [source for source in quota if source not in present]
        if unknown:
            raise SelectError(f"--per-source-quota: no samples of source {_example(unknown)}; the shards have "
                              f"{', '.join(f'{s} ({n})' for s, n in sorted(present.items()))}")  # fmt: skip
        chosen = set()
        rng = random.Random(rule.seed)
        for source in sorted({str(s.source) for s in pool}):
            members = [s for s in pool if str(s.source) == source]
            if source not in quota:
                chosen.update(s.position for s in members)
                continue
            limit = quota[source]
            count = min(limit, len(members)) if isinstance(limit, int) else round_half_up(limit, len(members))
            if rule.by:
                picked = _ranked(members, rows, scores, rule.by, rule.ascending)[:count]
            else:
                picked = rng.sample(members, count)
            chosen.update(s.position for s in picked)
            for sample in members:
                if sample.position not in chosen:
                    drop(sample, f"quota:{source}")
        pool = step("quota", [s for s in pool if s.position in chosen])
    if rule.top is not None:
        count = round_half_up(_parse_fraction(rule.top, "--top"), len(pool))
        ranked = _ranked(pool, rows, scores, rule.by, rule.ascending)
        chosen = {s.position for s in ranked[:count] if scores.value(rows[s.key], rule.by) is not None}
        for sample in pool:
            if sample.position not in chosen:
                drop(sample, f"null_{rule.by}" if scores.value(rows[sample.key], rule.by) is None else "top")
        pool = step("top", [s for s in pool if s.position in chosen])
    elif rule.random is not None:
        count = round_half_up(_parse_fraction(rule.random, "--random"), len(pool))
        chosen = {s.position for s in random.Random(rule.seed).sample(pool, count)}
        for sample in pool:
            if sample.position not in chosen:
                drop(sample, "random")
        pool = step("random", [s for s in pool if s.position in chosen])
    dropped = [reasons[position] for position in sorted(reasons)]
    return Decision(pool, dropped, steps)


def _ranked_key(value, ascending: bool) -> tuple:
    return (value is None, 0 if value is None else (value if ascending else -value))


# ------------------------------------------------------------------------------------------ writing


def reason_class(reason: str) -> str:
    """`duplicate_of:KEY` counts as `duplicate_of`; other reasons (`quota:coco`, `null_ifd`) as they are."""
    return "duplicate_of" if reason.startswith("duplicate_of:") else reason


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


SELECTION_MARKER = "mm-select.json"
"""Written into --out before anything else: that the folder holds a selection, and the files select writes
there. `--overwrite` removes those files and nothing else."""
_SELECTION_FILES = ("dropped.jsonl", "sizes.json", "manifest.json")


def _shard_names(count: int) -> list[str]:
    return [f"shard-{number:06d}.tar" for number in range(count)]


def _earlier_selection(out: Path) -> list[str] | None:
    """The files an earlier `mm-prep select` wrote in `out` (its marker's list; for a selection written before
    the marker existed, its manifest's shards and files), or None if nothing shows that select wrote them."""
    try:
        marker = json.loads((out / SELECTION_MARKER).read_text(encoding="utf-8"))
        if marker.get("written_by") == "mm-prep select" and all(isinstance(f, str) for f in marker["files"]):
            return [name for name in marker["files"] if Path(name).name == name]  # names in `out`, nothing else
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        if isinstance(manifest.get("selection"), dict):
            shards = [entry["name"] for entry in manifest["shards"]]
            if all(isinstance(name, str) and name.startswith("shard-") and Path(name).name == name for name in shards):
                return [*shards, *_SELECTION_FILES]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _looks_like_shards(name: str) -> bool:
    """A name a shard reader would take for part of the selection, so it must not sit beside one."""
    return name.startswith("shard-") or ".tar" in name or name in (*_SELECTION_FILES, "rejected.jsonl", PROGRESS_DIR)


def _prepare_out(out: Path, parent: Path, overwrite: bool, files: list[str]) -> None:
    """Make `out` ready for a selection of `files`: empty, or (with `overwrite`) holding an earlier selection,
    whose files alone are removed. Anything select did not write is never removed: a folder holding other
    files is refused, with or without `overwrite`."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out} exists and is not a directory")
    if out.resolve() == parent.resolve():
        raise OutputDirError(f"--out {out} is the shard directory being selected from")
    entries = sorted(path.name for path in out.iterdir()) if out.exists() else []
    if entries and not overwrite:
        raise OutputDirError(f"--out {out} is not empty ({len(entries)} entries); use another --out or pass --overwrite "
                             "(it replaces an earlier selection only)")  # fmt: skip
    if entries:
        _remove_earlier_selection(out, entries)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"--out {out} is not writable")
    write_json_atomic(out / SELECTION_MARKER, {"written_by": "mm-prep select", "files": [*files, SELECTION_MARKER]})


def _remove_earlier_selection(out: Path, entries: list[str]) -> None:
    earlier = _earlier_selection(out)
    if earlier is None:
        raise OutputDirError(f"--out {out} holds files mm-prep select did not write (no {SELECTION_MARKER} or selection "
                             "manifest); it replaces only an earlier selection, even with --overwrite: use another --out")
    ours = {*earlier, *(name + ".tmp" for name in earlier), SELECTION_MARKER}
    foreign = [name for name in entries if name not in ours and _looks_like_shards(name)]
    if foreign:
        raise OutputDirError(f"--out {out}: {_example(foreign)} beside an earlier selection were not written by "
                             "mm-prep select; move them away or use another --out")  # fmt: skip
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"--out {out} is not writable")
    # the manifest first: a reader never sees the old manifest over missing shards
    for name in sorted(ours & set(entries), key=lambda name: (name != "manifest.json", name == SELECTION_MARKER, name)):
        if name != SELECTION_MARKER and (out / name).is_file():
            (out / name).unlink()


def _plan_output(kept: list[ParentSample], samples_per_shard: int, max_shard_bytes: int) -> list[list[ParentSample]]:
    shards, current, size = [], [], 0
    for sample in kept:
        if current and (len(current) == samples_per_shard or size + sample.num_bytes > max_shard_bytes):
            shards.append(current)
            current, size = [], 0
        current.append(sample)
        size += sample.num_bytes
    if current:
        shards.append(current)
    return shards


def _iter_raw(directory: Path, shard: str) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(member name, bytes)]) of one parent shard, in tar order."""
    current, members = None, []
    for tar, member in _iter_members(directory / shard):
        key, _ = sample_key(member.name)
        if current is not None and key != current:
            yield current, members
            members = []
        current = key
        members.append((member.name, tar.extractfile(member).read()))
    if current is not None:
        yield current, members


def write_selection(directory: Path, out: Path, plan: list[list[ParentSample]]) -> list[dict]:
    """Copy the planned samples' members into new shards (`plan`: the samples of each, in parent order);
    returns their manifest entries."""
    kept = [sample for shard in plan for sample in shard]
    target = {s.position: (number, s) for number, shard in enumerate(plan) for s in shard}
    wanted = {(s.shard, s.key): s.position for s in kept}
    entries, writers = [], {}
    names = _shard_names(len(plan))

    def close(number: int) -> None:
        file, stream, shard = writers.pop(number)
        stream.close()
        file.flush()
        os.fsync(file.fileno())
        file.close()
        (out / (names[number] + ".tmp")).replace(out / names[number])
        entries.append({"name": names[number], "num_samples": len(shard), "num_records": sum(s.num_records for s in shard),
                        "num_images": sum(s.num_images for s in shard), "num_bytes": stream.size,
                        "crc32": f"{stream.crc32:08x}"})  # fmt: skip

    remaining = Counter(number for number, _ in target.values())
    for shard_name in dict.fromkeys(s.shard for s in kept):  # parents in order; kept samples are in order
        for key, members in _iter_raw(directory, shard_name):
            position = wanted.get((shard_name, key))
            if position is None:
                continue
            number, _ = target[position]
            if number not in writers:
                file = open(out / (names[number] + ".tmp"), "wb")
                writers[number] = (file, TarStream(file), plan[number])
            for name, data in members:
                writers[number][1].add(name, data)
            remaining[number] -= 1
            if remaining[number] == 0:
                close(number)
    if writers:
        raise ShardReadError(f"{directory}: shards changed while being copied")
    entries.sort(key=lambda entry: entry["name"])
    return entries


def select(directory: str | Path, scores_path: str | Path, out: str | Path, rule: SelectRule, *,
           samples_per_shard: int = 1000, max_shard_bytes: int = 1_000_000_000, overwrite: bool = False,
           command: list[str] | None = None) -> dict:  # fmt: skip
    """Choose, copy, and write manifest.json, sizes.json, dropped.jsonl; returns the manifest."""
    from mm import __version__

    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    if samples_per_shard < 1 or max_shard_bytes < 1:
        raise SelectError("--samples-per-shard and --max-shard-bytes must be >= 1")
    scores = load_scores(scores_path)
    parent = scan_parent(directory)
    rows = match_scores(parent, scores, directory)
    decision = decide(parent, rows, scores, rule)
    plan = _plan_output(decision.kept, samples_per_shard, max_shard_bytes)
    _prepare_out(out, directory, overwrite, [*_shard_names(len(plan)), *_SELECTION_FILES])
    entries = write_selection(directory, out, plan)
    parent_manifest = {}
    if (directory / "manifest.json").exists():
        parent_manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    dropped_by_reason = dict(sorted(Counter(reason_class(row["reason"]) for row in decision.dropped).items()))
    manifest = {
        "format": FORMAT,
        "mm_version": __version__,
        "command": list(command if command is not None else sys.argv),
        "source": parent_manifest.get("source"),
        "input": {"selected_from": str(directory.resolve()), "parent_shards": [p.name for p in shard_paths(directory)],
                  "parent_manifest_sha256": _file_sha256(directory / "manifest.json"), "parent_input": parent_manifest.get("input")},
        "options": {"samples_per_shard": samples_per_shard, "max_shard_bytes": max_shard_bytes},
        "selection": {
            "rule": asdict(rule),
            "order": ["where", "dedup", "quota", "top|random"],
            "scores": {"path": str(Path(scores_path).resolve()), "sha256": scores.sha256},
            "num_parent_samples": len(parent),
            "num_kept": len(decision.kept),
            "num_dropped": len(decision.dropped),
            "dropped_by_reason": dropped_by_reason,
            "duplicates_by": dict(sorted(Counter(r["duplicate_by"] for r in decision.dropped if "duplicate_by" in r).items())),
            "kept_by_source": dict(Counter(str(s.source) for s in decision.kept).most_common()),
            "steps": decision.steps,
        },
        "num_input_records": sum(s.num_records for s in parent),
        "num_records_written": sum(e["num_records"] for e in entries),
        "num_samples": sum(e["num_samples"] for e in entries),
        "num_images": sum(e["num_images"] for e in entries),
        "num_bytes": sum(e["num_bytes"] for e in entries),
        "num_shards": len(entries),
        "num_rejected": len(decision.dropped),
        "rejected_by_reason": dropped_by_reason,
        "shards": entries,
    }
    write_jsonl_atomic(out / "dropped.jsonl", decision.dropped)
    write_json_atomic(out / "sizes.json", {e["name"]: e["num_samples"] for e in entries})
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


# ------------------------------------------------------------------------------------------ CLI


def add_select_command(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("select", help="a curated subset of a shard set, chosen by `mm-prep score` scores")
    parser.add_argument("shards", help="shard directory the scores were computed on")
    parser.add_argument("--scores", required=True, help="SCORES.jsonl from `mm-prep score`")
    parser.add_argument("--out", required=True, help="output directory (new shards, manifest.json, dropped.jsonl)")
    parser.add_argument("--where", default=None, help='condition over score columns, e.g. "ifd < 1.0 and image_reliance '
                        f'> 0.05" ({WHERE_LIMITS})')
    parser.add_argument("--dedup", default=None, metavar="phash:D,minhash:T",
                        help="drop near duplicates: image pHash Hamming distance <= D, or text MinHash Jaccard >= T")
    parser.add_argument("--top", default=None, metavar="F", help="keep the fraction F with the best --by")
    parser.add_argument("--by", default=None, metavar="METRIC", help="ranking metric of --top (and dedup / quota priority)")
    parser.add_argument("--ascending", action="store_true", help="lower --by is better")
    parser.add_argument("--per-source-quota", default=None, metavar="SRC=F|N,...",
                        help="per source: a fraction (0.5) or a count (1000); sources not named are not limited")
    parser.add_argument("--random", default=None, metavar="F", help="keep a seeded random fraction F (baseline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random and of quota draws without --by")
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="most samples per output shard")
    parser.add_argument("--max-shard-bytes", type=int, default=1_000_000_000, help="most bytes per output shard")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier selection in --out (the files its {SELECTION_MARKER} lists; a folder "
                             "holding anything else is refused)")
    parser.set_defaults(run=cmd_select)
    return parser


def cmd_select(args: argparse.Namespace) -> None:
    top, fraction = (None if value is None else float(_parse_fraction(value, option))
                     for value, option in ((args.top, "--top"), (args.random, "--random")))  # one error line, not usage
    rule = SelectRule(where=args.where, dedup=args.dedup, top=top, by=args.by, ascending=args.ascending,
                      per_source_quota=args.per_source_quota, random=fraction, seed=args.seed)  # fmt: skip
    manifest = select(args.shards, args.scores, args.out, rule, samples_per_shard=args.samples_per_shard,
                      max_shard_bytes=args.max_shard_bytes, overwrite=args.overwrite, command=args.command_line)  # fmt: skip
    selection = manifest["selection"]
    print(f"{selection['num_parent_samples']} samples: {selection['num_kept']} kept in {manifest['num_shards']} shards, "
          f"{selection['num_dropped']} dropped -> {args.out}")  # fmt: skip
    for reason, count in selection["dropped_by_reason"].items():
        print(f"  dropped {reason}: {count}")
    if selection["num_dropped"]:
        print(f"  (details in {Path(args.out) / 'dropped.jsonl'})")
