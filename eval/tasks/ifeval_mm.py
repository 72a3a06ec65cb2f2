"""`ifeval_mm`: IFEval's verifiable instructions on image prompts, single-turn and multi-turn (MMMT-IF).

A record is IFEval's layout plus images: `{"key", "image" (a path, a list of paths or absent), "prompt",
"instruction_id_list", "kwargs"}`; a multi-turn record replaces the last three by `"turns": [{"prompt",
"instruction_id_list", "kwargs"}, ...]`. An instruction stays in force for the rest of its conversation; the
same id given again later replaces the earlier one's kwargs. Every turn is one prompt, checked against every
instruction in force at that turn (question id `{key}/{turn}`, 0-based; single-turn: `key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from eval.ifeval import INSTRUCTION_IDS, InstructionArgumentError, check_response, clean_kwargs
from eval.predictions import id_key, read_predictions
from eval.tasks.base import (Question, TaskDataError, field_of, json_object, load_json_lines, option,
                             require_path, string_field)


@dataclass
class IFEvalMMOptions:
    """Data options of `ifeval_mm`."""

    questions: str = option("JSON lines of IFEval records with images ({key, image, prompt, instruction_id_list, "
                            "kwargs}) and/or multi-turn records ({key, image, turns: [...]})", file_option=True)
    image_root: str = option("folder the image paths are relative to (default: the questions file's folder)", "",
                             file_option=True)
    pif_samples: str = option("comma-separated predictions files of more runs on the same questions (e.g. `mm-eval "
                              "run --temperature 1 --seed S`): with the scored predictions they are PIF-N-K's N "
                              "responses per turn", "")


@dataclass(frozen=True)
class Instruction:
    """One instruction in force: its id, its kwargs, and the prompt of the turn that gave it (which
    `combination:repeat_prompt`-style checks read)."""

    instruction_id: str
    kwargs: dict
    prompt: str


@dataclass(frozen=True)
class TurnTruth:
    """What scoring one response needs."""

    key: str
    turn: int
    multi_turn: bool
    in_force: tuple[Instruction, ...]
    unknown_ids: tuple[str, ...]
    """Ids given at this turn that no checker knows (counted, then ignored)."""


def _image_paths(value, root: Path, where: str) -> tuple[Path, ...]:
    names = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise TaskDataError(f"{where}: 'image' must be a path, a list of paths or absent, got {value!r}")
    return tuple(root / name for name in names)


def _turn_instructions(turn: dict, prompt: str, where: str) -> tuple[list[Instruction], list[str]]:
    """The known instructions a turn gives, validated, and the ids no checker knows."""
    ids = field_of(turn, "instruction_id_list", where)
    kwargs_list = turn.get("kwargs")
    kwargs_list = [{} for _ in ids] if kwargs_list is None else kwargs_list
    if not isinstance(ids, list) or not isinstance(kwargs_list, list) or len(ids) != len(kwargs_list):
        raise TaskDataError(f"{where}: instruction_id_list and kwargs must be lists of equal length")
    known, unknown = [], []
    for instruction_id, kwargs in zip(ids, kwargs_list):
        if instruction_id not in INSTRUCTION_IDS:
            unknown.append(str(instruction_id))
            continue
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TaskDataError(f"{where}: kwargs of {instruction_id} must be an object, got {kwargs!r}")
        instruction = Instruction(instruction_id, clean_kwargs(kwargs), prompt)
        try:  # the arguments are checked now, not after the model has answered
            check_response([instruction_id], [instruction.kwargs], prompt, "")
        except InstructionArgumentError as error:
            raise TaskDataError(f"{where}: {error}") from None
        known.append(instruction)
    return known, unknown


def _record_questions(record: dict, root: Path, where: str) -> list[Question]:
    key = field_of(record, "key", where)
    images = _image_paths(record.get("image"), root, where)
    multi_turn = "turns" in record
    turns = record["turns"] if multi_turn else [record]
    if not isinstance(turns, list) or not turns:
        raise TaskDataError(f"{where}: 'turns' must be a non-empty list")
    in_force: dict[str, Instruction] = {}
    questions, history = [], []
    for number, turn in enumerate(turns):
        turn_where = f"{where} turn {number}" if multi_turn else where
        prompt = string_field(json_object(turn, turn_where), "prompt", turn_where)
        known, unknown = _turn_instructions(turn, prompt, turn_where)
        in_force.update((instruction.instruction_id, instruction) for instruction in known)
        question_id = f"{key}/{number}" if multi_turn else key
        truth = TurnTruth(str(key), number, multi_turn, tuple(in_force.values()), tuple(unknown))
        questions.append(Question(question_id, prompt, images, truth, history=tuple(history)))
        history.append((question_id, prompt))
    return questions


def read_ifeval_mm(options: IFEvalMMOptions) -> list[Question]:
    path = require_path(options.questions, "questions")
    root = Path(options.image_root) if options.image_root else path.parent
    questions = []
    for number, record in enumerate(load_json_lines(path, "questions"), 1):
        questions += _record_questions(json_object(record, f"{path} record {number}"), root, f"{path} record {number}")
    return questions


@dataclass(frozen=True)
class Judged:
    """One response checked against the instructions in force: strict and loose verdict per instruction."""

    truth: TurnTruth
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]


def judge(truth: TurnTruth, response: str) -> Judged:
    strict, loose = [], []
    for instruction in truth.in_force:
        followed = check_response([instruction.instruction_id], [instruction.kwargs], instruction.prompt, response)
        strict.append(followed[0][0])
        loose.append(followed[1][0])
    return Judged(truth, tuple(strict), tuple(loose))


def _percent(numerator: float, denominator: int) -> float:
    return round(100.0 * numerator / denominator, 2) if denominator else 0.0


def _per_instruction(judged: Sequence[Judged]) -> dict:
    counts: dict[str, list[int]] = {}
    for item in judged:
        for instruction, strict, loose in zip(item.truth.in_force, item.strict, item.loose):
            tally = counts.setdefault(instruction.instruction_id, [0, 0, 0])
            tally[0], tally[1], tally[2] = tally[0] + 1, tally[1] + strict, tally[2] + loose
    return {name: {"n": n, "strict": _percent(s, n), "loose": _percent(lo, n)}
            for name, (n, s, lo) in sorted(counts.items())}


def _pif(item: Judged) -> float:
    """MMMT-IF's PIF of one response: the fraction of the instructions in force it follows (strict)."""
    return sum(item.strict) / len(item.strict)


def pif_metrics(judged: Sequence[Judged]) -> dict:
    """`pif`: mean PIF (percent) over the responses; `pif_per_turn`: the same per turn index."""
    by_turn: dict[int, list[float]] = {}
    for item in judged:
        by_turn.setdefault(item.truth.turn, []).append(_pif(item))
    every = [value for values in by_turn.values() for value in values]
    return {"pif": _percent(sum(every), len(every)),
            "pif_per_turn": {str(turn): _percent(sum(v), len(v)) for turn, v in sorted(by_turn.items())}}


def pif_n_k(samples: Sequence[Sequence[Judged]]) -> dict:
    """MMMT-IF's PIF-N-K: with N responses per turn (one list per run, aligned), the percent of turns for
    which at least K of the N responses follow every instruction in force, for K = 1..N."""
    n = len(samples)
    perfect = [sum(_pif(run[index]) == 1.0 for run in samples) for index in range(len(samples[0]))]
    return {"n": n, **{f"k{k}": _percent(sum(count >= k for count in perfect), len(perfect)) for k in range(1, n + 1)}}


def _sample_answers(options: IFEvalMMOptions, questions: Sequence[Question]) -> list[list[str]]:
    """Each --pif-samples file's answer per question (first line per id; missing: empty response)."""
    runs = []
    for name in (part.strip() for part in options.pif_samples.split(",") if part.strip()):
        answers: dict[str, str] = {}
        for record in read_predictions(name):
            answers.setdefault(id_key(record["question_id"]), record["text"])
        runs.append([answers.get(id_key(q.question_id), "") for q in questions])
    return runs


def score_ifeval_mm(options: IFEvalMMOptions, questions: Sequence[Question], answers: Sequence[str | None]) -> dict:
    """IFEval's four accuracies over every turn with a known instruction in force, per instruction id, and
    for multi-turn records MMMT-IF's PIF (and PIF-N-K with --pif-samples). A missing answer is an empty
    response (it follows nothing)."""
    checked = [(q, a) for q, a in zip(questions, answers) if q.truth.in_force]
    judged = [judge(q.truth, a or "") for q, a in checked]
    instructions = sum(len(item.strict) for item in judged)
    metrics = {
        "overall": _percent(sum(all(item.strict) for item in judged), len(judged)),
        "prompt_strict": _percent(sum(all(item.strict) for item in judged), len(judged)),
        "prompt_loose": _percent(sum(all(item.loose) for item in judged), len(judged)),
        "instruction_strict": _percent(sum(sum(item.strict) for item in judged), instructions),
        "instruction_loose": _percent(sum(sum(item.loose) for item in judged), instructions),
        "prompts": len(judged), "instructions": instructions,
        "prompts_without_instructions": len(questions) - len(checked),
        "unknown_instructions": sum(len(q.truth.unknown_ids) for q in questions),
        "unknown_instruction_ids": sorted({name for q in questions for name in q.truth.unknown_ids}),
        "per_instruction": _per_instruction(judged),
    }
    multi = [index for index, item in enumerate(judged) if item.truth.multi_turn]
    if multi:
        metrics.update(pif_metrics([judged[index] for index in multi]))
    runs = _sample_answers(options, [q for q, _ in checked])
    if runs:
        population = multi or list(range(len(judged)))
        samples = [[judged[i] for i in population]]
        samples += [[judge(checked[i][0].truth, run[i]) for i in population] for run in runs]
        metrics["pif_n_k"] = pif_n_k(samples)
    return metrics
