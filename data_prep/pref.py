"""Preference pairs (prompt, chosen, rejected) -> preference shards for DPO (`mm-prep pref`).

A preference sample is an mm-prep sample whose `conversations` end with a human turn (the prompt) and
whose shard record adds `"chosen"` and `"rejected"`, the two candidate assistant replies (`Sample.fields`).
Training encodes `conversations + [{"from": "gpt", "value": chosen}]` and the same with `rejected`, so
`check_pair` checks exactly those two conversations with mm.chat's rules (and the prompt alone).

Input formats (`--format`), read from a JSON list, JSON lines (`.jsonl`) or, for the Hugging Face
releases, `.parquet` (images embedded as `{"bytes", "path"}`):

    llava       {"id", "image": path | [paths] (absent: text-only), "conversations": [... human],
                 "chosen": str, "rejected": str}; other fields kept in meta.record_extra
    rlhf-v      openbmb/RLHF-V-Dataset: `text` = JSON string {"question", "chosen", "rejected"} (RLAIF-V:
                the three as columns), `image` = {"bytes", "path"} or a path under --image-root,
                `image_path`, `ds_name`, `origin_dataset`, `origin_split`, `idx` (kept in meta.record_extra)
    vlfeedback  MMInstruction/VLFeedback (vlfeedback_80k.jsonl): {"id", "prompt", "models", "completions":
                [{"model", "response", "annotations": {aspect: {"Rating": "1".."5", "Rationale"}}}]}; the
                image is `{id}.jpg` under --image-root (merged_images/) unless the record embeds `image`.
                The pair is the best- against the worst-rated completion, a completion's rating being the
                mean of its numeric ratings over VLFEEDBACK_ASPECTS (Silkie's average); ties are rejected.

A prompt without an `<image>` placeholder (rlhf-v, vlfeedback) gets one line `<image>` before it.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from data_prep.llava import _image_paths, iter_annotations
from data_prep.records import (
    IMAGE_TOKEN, MALFORMED_RECORD, MAX_RECORD_DEPTH, MISSING_IMAGE, ImageRef, RecordError, Rejection, Sample,
    check_conversation, check_depth, check_text, image_path,
)  # fmt: skip

# Rejection reasons of preference records (besides the records module's and mm.chat's).
EMPTY_RESPONSE = "empty_response"
IDENTICAL_RESPONSES = "identical_responses"
TIED_RATINGS = "tied_ratings"
TOO_FEW_COMPLETIONS = "too_few_completions"
PREF_REASONS = (EMPTY_RESPONSE, IDENTICAL_RESPONSES, TIED_RATINGS, TOO_FEW_COMPLETIONS)

FORMATS = ("llava", "rlhf-v", "vlfeedback")
VLFEEDBACK_ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
VLFEEDBACK_RATING = "mean of the numeric Rating over " + ", ".join(VLFEEDBACK_ASPECTS)


def check_pair(conversations: Any, chosen: Any, rejected: Any, num_images: int) -> None:
    """Raise `RecordError` unless training can encode the prompt followed by either reply."""
    check_text(conversations, "conversations")
    check_conversation(conversations, num_images, prompt=True)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise RecordError(MALFORMED_RECORD, f"'{name}' is a {type(value).__name__}, not a string")
        check_text(value, name)
        if not value.strip():
            raise RecordError(EMPTY_RESPONSE, f"'{name}' is empty")
    if chosen.strip() == rejected.strip():
        raise RecordError(IDENTICAL_RESPONSES, "'chosen' and 'rejected' are the same text")
    for value in (chosen, rejected):
        check_conversation([*conversations, {"from": "gpt", "value": value}], num_images)


def pair_sample(index: int, record_id: Any, source: str, conversations: list[dict], chosen: str, rejected: str,
                images: list[ImageRef], meta: dict, original: Any = None) -> Sample:  # fmt: skip
    """A checked preference sample (raises `RecordError`)."""
    check_pair(conversations, chosen, rejected, len(images))
    return Sample(index, record_id, source, conversations, images, meta, original=original,
                  fields={"chosen": chosen, "rejected": rejected})  # fmt: skip


def check_pair_sample(sample: Sample) -> None:
    """`check_pair` of a built sample (generators: a failure is a bug)."""
    check_pair(sample.conversations, sample.fields.get("chosen"), sample.fields.get("rejected"), len(sample.images))


# ----------------------------------------------------------------------------- reading


def iter_records(path: str | Path) -> Iterator[tuple[Any, str, RecordError | None]]:
    """`(record, where, error)` in file order: `.parquet` rows, else as `data_prep.llava.iter_annotations`."""
    if Path(path).suffix != ".parquet":
        yield from iter_annotations(path)
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading .parquet needs pyarrow (pip install pyarrow)") from None
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        file = pq.ParquetFile(path)
    except pa.ArrowException as error:
        raise ValueError(f"{path}: not a parquet file ({error})") from None
    row = 0
    for batch in file.iter_batches(batch_size=64):
        for record in batch.to_pylist():
            yield record, f"row {row}", None
            row += 1


def printable(value: Any) -> Any:
    """`value` with bytes (embedded images) replaced by `"<N bytes>"`, for rejected.jsonl."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {key: printable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [printable(item) for item in value]
    return value


def _record_id(record: dict, default: Any = None) -> Any:
    record_id = record.get("id", default)
    if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
        raise RecordError(MALFORMED_RECORD, "record has no string or integer 'id'")
    return record_id


def _image(value: Any, image_root: str, allow_outside_root: bool, default_name: str) -> ImageRef:
    """An image given as a path under the root, or as a Hugging Face image `{"bytes", "path"}`
    (bytes raw, or base64 text in JSON)."""
    if isinstance(value, str) and value.strip():
        return ImageRef(value, image_path(image_root, value, allow_outside_root))
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if isinstance(data, str) and data:
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise RecordError(MALFORMED_RECORD, "image 'bytes' is text but not base64") from None
        name = name if isinstance(name, str) and name.strip() else None
        if isinstance(data, (bytes, bytearray)) and data:
            return ImageRef(name or default_name, data=bytes(data))
        if name:
            return ImageRef(name, image_path(image_root, name, allow_outside_root))
    if value is None or value == "" or value == {} or (isinstance(value, dict) and not any(value.values())):
        raise RecordError(MISSING_IMAGE, "record has no image")
    raise RecordError(MALFORMED_RECORD, f"image must be a path or {{'bytes', 'path'}}, got {type(value).__name__}")


def _given_image(record: dict, fallback: Any) -> Any:
    """The record's `image`, or `fallback` when it has none (absent, empty, or `{"bytes": None, "path": None}`)."""
    value = record.get("image")
    empty = not value or (isinstance(value, dict) and not value.get("bytes") and not value.get("path"))
    return fallback if empty else value


def _prompt(question: Any, num_images: int) -> list[dict]:
    if not isinstance(question, str):
        raise RecordError(MALFORMED_RECORD, f"the prompt is a {type(question).__name__}, not a string")
    if num_images == 1 and IMAGE_TOKEN not in question:
        question = f"{IMAGE_TOKEN}\n{question}"
    return [{"from": "human", "value": question}]


def _extra(record: dict, known: tuple[str, ...]) -> dict:
    return {key: printable(value) for key, value in record.items() if key not in known}


def _meta(index: int, images: list[ImageRef], record: dict, known: tuple[str, ...], **more) -> dict:
    meta = {"index": index, "image_paths": [ref.name for ref in images], **more}
    extra = _extra(record, known)
    if extra:
        meta["record_extra"] = extra
    return meta


Parser = Callable[[dict, int, str, str, bool], Sample]


def parse_llava(record: dict, index: int, image_root: str, source: str, allow_outside_root: bool) -> Sample:
    known = ("id", "image", "conversations", "chosen", "rejected")
    if "conversations" not in record:
        raise RecordError(MALFORMED_RECORD, "record has no 'conversations'")
    record_id = _record_id(record)
    images = [ImageRef(p, image_path(image_root, p, allow_outside_root)) for p in _image_paths(record)]
    meta = _meta(index, images, record, known)
    return pair_sample(index, record_id, source, record["conversations"], record.get("chosen"), record.get("rejected"),
                       images, meta, printable(record))  # fmt: skip


def parse_rlhf_v(record: dict, index: int, image_root: str, source: str, allow_outside_root: bool) -> Sample:
    known = ("id", "image", "text", "question", "chosen", "rejected")
    record_id = _record_id(record, index)
    pair = record.get("text", record)
    if isinstance(pair, str):
        try:
            pair = json.loads(pair)
        except json.JSONDecodeError as error:
            raise RecordError(MALFORMED_RECORD, f"'text' is not JSON: {error}") from None
        except RecursionError:
            raise RecordError(MALFORMED_RECORD, f"'text' is nested deeper than {MAX_RECORD_DEPTH} levels") from None
        check_depth(pair, "'text'")
    if not isinstance(pair, dict) or not {"question", "chosen", "rejected"} <= pair.keys():
        raise RecordError(MALFORMED_RECORD, "need 'text' = {'question', 'chosen', 'rejected'} (or those columns)")
    images = [_image(_given_image(record, record.get("image_path")), image_root, allow_outside_root, f"{record_id}.jpg")]
    meta = _meta(index, images, record, known)
    return pair_sample(index, record_id, source, _prompt(pair["question"], 1), pair["chosen"], pair["rejected"],
                       images, meta, printable(record))  # fmt: skip


def vlfeedback_rating(completion: dict) -> float | None:
    """VLFEEDBACK_RATING of one completion, or None when it has no numeric rating."""
    annotations = completion.get("annotations")
    ratings = []
    for aspect in VLFEEDBACK_ASPECTS:
        rating = annotations.get(aspect) if isinstance(annotations, dict) else None
        try:
            ratings.append(float(rating.get("Rating") if isinstance(rating, dict) else rating))
        except (TypeError, ValueError):  # "N/A", missing
            continue
    return sum(ratings) / len(ratings) if ratings else None


def _completions(value: Any) -> list[dict]:
    if isinstance(value, dict):  # `datasets` reads a Sequence of structs as a struct of lists
        keys = list(value)
        if not all(isinstance(value[k], list) and len(value[k]) == len(value[keys[0]]) for k in keys):
            raise RecordError(MALFORMED_RECORD, "'completions' is a struct of lists of unequal lengths")
        value = [dict(zip(keys, row)) for row in zip(*(value[k] for k in keys))] if keys else []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise RecordError(MALFORMED_RECORD, "'completions' is not a list of objects")
    return value


def parse_vlfeedback(record: dict, index: int, image_root: str, source: str, allow_outside_root: bool) -> Sample:
    known = ("id", "prompt", "completions", "image")
    record_id = _record_id(record)
    completions = _completions(record.get("completions"))
    ratings = [vlfeedback_rating(c) for c in completions]
    rated = [(rating, position) for position, rating in enumerate(ratings)
             if rating is not None and isinstance(completions[position].get("response"), str)
             and completions[position]["response"].strip()]  # fmt: skip
    if len(rated) < 2:
        raise RecordError(TOO_FEW_COMPLETIONS, f"{len(rated)} of {len(completions)} completions have a reply and a rating")
    best = max(rated, key=lambda item: (item[0], -item[1]))  # the first of equals
    worst = min(rated, key=lambda item: (item[0], -item[1]))
    if best[0] == worst[0]:
        raise RecordError(TIED_RATINGS, f"every rated completion has rating {best[0]:g}")
    chosen, rejected = completions[best[1]], completions[worst[1]]
    images = [_image(_given_image(record, f"{record_id}.jpg"), image_root, allow_outside_root, f"{record_id}.jpg")]
    meta = _meta(index, images, record, known, rating=VLFEEDBACK_RATING, ratings=ratings,
                 chosen_model=chosen.get("model"), rejected_model=rejected.get("model"))  # fmt: skip
    return pair_sample(index, record_id, source, _prompt(record.get("prompt"), 1), chosen["response"],
                       rejected["response"], images, meta, printable(record))  # fmt: skip


PARSERS: dict[str, Parser] = {"llava": parse_llava, "rlhf-v": parse_rlhf_v, "vlfeedback": parse_vlfeedback}


def load_pref(annotations: str | Path, image_root: str | Path, source: str, fmt: str = "llava", *,
              allow_outside_root: bool = False) -> tuple[list[Sample], list[Rejection], int]:  # fmt: skip
    """All records of a preference file -> (samples, rejections, number of input records)."""
    if fmt not in PARSERS:
        raise ValueError(f"unknown preference format {fmt!r}; valid: {', '.join(PARSERS)}")
    parse = PARSERS[fmt]
    samples, rejections = [], []
    index = -1
    for index, (record, where, error) in enumerate(iter_records(annotations)):
        try:
            if error is not None:
                raise error
            check_depth(record, where)  # parquet rows: JSON records were checked as they were read
            check_text(record, where)
            if not isinstance(record, dict):
                raise RecordError(MALFORMED_RECORD, f"record is a {type(record).__name__}, not an object")
            samples.append(parse(record, index, str(image_root), source, allow_outside_root))
        except RecordError as bad:
            record_id = record.get("id", index if fmt == "rlhf-v" else None) if isinstance(record, dict) else None
            rejections.append(Rejection(index, printable(record_id), bad.reason, bad.detail, printable(record)))
    return samples, rejections, index + 1
