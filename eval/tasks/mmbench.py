"""MMBench-dev: TSV with base64 images, scored with circular evaluation.

The TSV is read as LLaVA (`llava/eval/model_vqa_mmbench.py`, `pd.read_table`) and VLMEvalKit (`load_tsv`,
`pd.read_csv(path, sep='\\t')`) read it: pandas' CSV quoting (`\"\"\"Stop\"\" sign\"` is `\"Stop\" sign`, a quoted
cell may hold a newline) and pandas' default missing values (empty, `nan`, `NA`, `None`, `N/A`, `null`, ...).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from eval.scoring.choice import CircularItem, mmbench_metrics
from eval.tasks.base import LETTER_ANSWER, Question, TaskDataError, format_options, option, read_text

# LLaVA's `all_options`: the prompt shows options A-D only, stopping at the first missing one.
PROMPT_LETTERS = ("A", "B", "C", "D")
# VLMEvalKit's `build_choices` takes every column A-Z whose cell is not missing (pd.isna).
CHOICE_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Rotated copies of a question carry index + k * 1e6 (MMBench's own circular TSVs use this too).
ROTATION_STRIDE = 1_000_000
REQUIRED_COLUMNS = ("index", "question", "answer", "image", "A", "B")


@dataclass
class MMBenchOptions:
    """Data options of MMBench."""

    tsv: str = option("MMBench dev TSV (e.g. mmbench_dev_20230712.tsv, base64 images)", file_option=True)


def is_missing(value) -> bool:
    """pandas' `pd.isna` on one cell as read (VLMEvalKit's test for options and hint): with every cell read as
    text, a cell is missing exactly when it is not a string (NaN, or pd.NA / None under other pandas settings)."""
    return not isinstance(value, str)


def llava_is_none(value) -> bool:
    """LLaVA's `is_none`: missing, or the text "nan" / "none" in any case."""
    return is_missing(value) or (isinstance(value, str) and value.lower() in ("nan", "none"))


def llava_options(row: dict) -> list[str]:
    """LLaVA's `get_options`: the cells A, B, C, D in order, up to the first that `is_none`."""
    options = []
    for letter in PROMPT_LETTERS:
        value = row.get(letter)
        if llava_is_none(value):
            break
        options.append(value)
    return options


def vlmevalkit_choices(row: dict) -> dict[str, str]:
    """VLMEvalKit's `build_choices`: {letter: text} for every column A-Z present and not missing."""
    return {letter: row[letter] for letter in CHOICE_LETTERS if letter in row and not is_missing(row[letter])}


def read_tsv_rows(path: str) -> list[dict]:
    """The TSV's rows as pandas reads them (all cells as text, missing cells as NaN); a file pandas cannot
    parse is an error naming it."""
    import pandas as pd

    text = read_text(path, "tsv")  # missing file / not UTF-8: an error naming file and line
    try:
        # dtype=str keeps every cell as written (an all-number column stays "3", not 3 or 3.0); the default
        # missing values still become NaN, as in the references.
        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str)
    except pd.errors.EmptyDataError:
        raise TaskDataError(f"{path} (--tsv): empty file (no header line)") from None
    except (pd.errors.ParserError, ValueError) as error:
        raise TaskDataError(f"{path} (--tsv): not a readable TSV: {error}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise TaskDataError(f"{path} (--tsv): missing columns {missing}")
    return frame.to_dict("records")


def _where(path: str, number: int, row: dict) -> str:
    return f"{path} (--tsv) data row {number} (index {row['index']!r})"


def _index(row: dict, number: int, path: str) -> int:
    value = row["index"]
    if is_missing(value) or not value.strip().isdigit():
        raise TaskDataError(f"{path} (--tsv) data row {number}: index {value!r} is not a whole number")
    return int(value)


def _image_bytes(row: dict, images_by_index: dict[str, str], where: str) -> bytes:
    value = row["image"]
    if is_missing(value):
        raise TaskDataError(f"{where}: no image")
    if value.isdigit():  # a rotated copy may point at its source row's image by index
        value = images_by_index.get(value, "")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TaskDataError(f"{where}: image is not valid base64") from None


def _text(value) -> str:
    return "" if is_missing(value) else value


def _question(row: dict, index: int, options: list[str], choices: dict[str, str], answer: str,
              image: bytes) -> Question:
    """LLaVA's prompt: hint (unless `is_none`) + "\\n" + question, then "\\nA. ..." per option, then the
    single-prediction instruction."""
    hint = row.get("hint")
    text = row["question"] if llava_is_none(hint) else f"{hint}\n{row['question']}"
    prompt = f"{text}\n{format_options(PROMPT_LETTERS, options)}\n{LETTER_ANSWER}"
    truth = CircularItem(index % ROTATION_STRIDE, answer, choices, None,
                         _text(row.get("category")), _text(row.get("l2-category")))
    return Question(index, prompt, (image,), truth)


def read_mmbench(options: MMBenchOptions) -> list[Question]:
    """All rotations of each question: taken from the TSV when it already holds them (indices >= 1e6),
    else generated by rotating the options as LLaVA's `--all-rounds` does (answer letter moves with its option).

    Prompt options follow LLaVA (`get_options`); the options an answer is matched against follow VLMEvalKit
    (`build_choices` on the row) for rows of the TSV, and are the rotated prompt options for generated rotations.
    """
    path = options.tsv
    rows = read_tsv_rows(path)
    indices = [_index(row, number, path) for number, row in enumerate(rows, 1)]
    images_by_index = {row["index"]: row["image"] for row in rows
                       if not is_missing(row["image"]) and not row["image"].isdigit()}
    has_rotations = any(index >= ROTATION_STRIDE for index in indices)
    out = []
    for number, (row, index) in enumerate(zip(rows, indices), 1):
        where = _where(path, number, row)
        if is_missing(row["question"]):
            raise TaskDataError(f"{where}: no question")
        opts = llava_options(row)
        answer = row["answer"]
        if answer not in PROMPT_LETTERS[: len(opts)]:
            raise TaskDataError(f"{where}: answer {answer!r} is not one of its options "
                                f"{list(PROMPT_LETTERS[: len(opts)])}")
        image = _image_bytes(row, images_by_index, where)
        if has_rotations:
            out.append(_question(row, index, opts, vlmevalkit_choices(row), answer, image))
            continue
        for r in range(len(opts)):
            rotated = opts[r:] + opts[:r]
            rotated_answer = PROMPT_LETTERS[(PROMPT_LETTERS.index(answer) - r) % len(opts)]
            choices = dict(zip(PROMPT_LETTERS, rotated))
            out.append(_question(row, index + r * ROTATION_STRIDE, rotated, choices, rotated_answer, image))
    return out


def mmbench_prediction_id(record: dict):
    """LLaVA's `--all-rounds` answers carry `round_id` beside the source index."""
    qid = record["question_id"]
    if "round_id" not in record:
        return qid
    try:
        return int(qid) + int(record["round_id"]) * ROTATION_STRIDE
    except (TypeError, ValueError):  # int() of a name, a list, ...: another layout, not a crash mid-scoring
        raise TaskDataError(f"--predictions: a prediction with question_id {qid!r} and round_id "
                            f"{record['round_id']!r}; with a round_id both must be whole numbers") from None


def score_mmbench(options, questions, answers) -> dict:
    items = [CircularItem(q.truth.source_index, q.truth.answer, q.truth.options, a, q.truth.category, q.truth.l2_category)
             for q, a in zip(questions, answers)]
    return mmbench_metrics(items)
