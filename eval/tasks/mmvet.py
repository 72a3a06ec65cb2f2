"""MM-Vet scored by a judge: the official few-shot GPT grader, 0.0-1.0 per answer, totals per capability."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.judge import mmvet as protocol
from eval.judge.options import JudgeOptions
from eval.tasks.base import (Question, TaskDataError, field_of, json_object, string_field, load_json, load_json_lines, option,
                             require_path)


@dataclass
class MMVetOptions(JudgeOptions):
    """Data options of MM-Vet (its judge options come from JudgeOptions)."""

    mmvet_root: str = option("folder with mm-vet.json and images/ (mm-vet.zip as released)", file_option=True)
    questions: str = option("LLaVA's llava-mm-vet.jsonl (question_id N, image, text): take prompts and images from "
                            "it, for ids v1_N of mm-vet.json (default: mm-vet.json's questions)", "",
                            file_option=True)
    judge_parse_attempts: str = option("times a grade is asked for when the reply is not a number in [0, 1]: the "
                                       "grader's prompt, then its retry prompt (cached per attempt); then counted "
                                       "in judge_unparsed", "5")


@dataclass(frozen=True)
class GradeInput:
    question: str  # mm-vet.json's question (what the grader sees)
    answer: str
    capabilities: tuple[str, ...]


def mmvet_prediction_id(record: dict):
    """LLaVA's MM-Vet answers number questions 0..217 (`convert_mmvet_for_eval.py` maps N to "v1_N")."""
    question_id = record["question_id"]
    if (isinstance(question_id, int) and not isinstance(question_id, bool)) or \
            (isinstance(question_id, str) and question_id.isdigit()):
        return f"v1_{question_id}"
    return question_id



def read_mmvet(options: MMVetOptions) -> list[Question]:
    """Questions in mm-vet.json order, ids its keys ("v1_0"); prompt = the question as is (LLaVA's model_vqa)."""
    from eval.judge.engine import check_judge_options

    check_judge_options(options, "judge_parse_attempts")
    root = require_path(options.mmvet_root, "mmvet_root", directory=True)
    path = root / "mm-vet.json"
    data = json_object(load_json(path, "mmvet_root"), f"{path} (--mmvet-root)")
    samples = {}
    for key, record in data.items():
        where = f"{path} sample {key}"
        json_object(record, where)
        capabilities = field_of(record, "capability", where)
        if not (isinstance(capabilities, list) and capabilities and all(isinstance(c, str) for c in capabilities)):
            raise TaskDataError(f"{where}: capability must be a non-empty list of strings")
        question = string_field(record, "question", where)
        truth = GradeInput(question, string_field(record, "answer", where), tuple(capabilities))
        samples[key] = (question, string_field(record, "imagename", where), truth)
    images = root / "images"
    if not options.questions:
        return [Question(key, question, (images / image,), truth) for key, (question, image, truth) in samples.items()]
    out = []
    for number, record in enumerate(load_json_lines(options.questions, "questions"), 1):
        where = f"{options.questions} record {number}"
        json_object(record, where)
        key = mmvet_prediction_id({"question_id": field_of(record, "question_id", where)})
        if key not in samples:
            raise TaskDataError(f"{where}: question_id {record['question_id']!r} ({key}) is not in {path}")
        out.append(Question(key, string_field(record, "text", where), (images / string_field(record, "image", where),),
                            samples[key][2]))
    return out


def score_mmvet(options: MMVetOptions, questions, answers, *, out_dir: Path) -> dict:
    """Each answer graded by the judge (0.0-1.0); a missing answer scores 0.0 without a request. A grade
    that is still not a number in [0, 1] after `--judge-parse-attempts` requests is left out of every sum and
    count (numerator and denominator) and counted in `judge_unparsed` (the grader would give it 0.0)."""
    from eval.judge.engine import JudgeItem, check_judge_options, judge_items, make_judge
    from eval.report import jsonl_text
    from mm.atomic import write_text_atomic

    check_judge_options(options, "judge_parse_attempts")
    items, asked = [], []
    for index, (question, answer) in enumerate(zip(questions, answers)):
        if answer is None:
            continue
        t: GradeInput = question.truth
        variants = [protocol.grader_messages(protocol.grader_content(t.question, t.answer, answer, retry=retry))
                    for retry in (False, True)]
        items.append(JudgeItem(str(question.question_id), variants, protocol.parse_grade))
        asked.append(index)
    outcomes, judge_record = judge_items(make_judge(options), items,
                                         {"temperature": 0, "max_tokens": protocol.MAX_TOKENS},
                                         attempts=int(options.judge_parse_attempts),
                                         concurrency=int(options.judge_concurrency), out_dir=out_dir)
    outcome_of = dict(zip(asked, outcomes))
    graded, reviews = [], []
    for index, question in enumerate(questions):
        outcome = outcome_of.get(index)
        score = 0.0 if outcome is None else outcome.value
        if score is not None:
            graded.append((question.truth.capabilities, score))
        reviews.append({"question_id": question.question_id, "capability": list(question.truth.capabilities),
                        "answer_missing": outcome is None, "score": score,
                        "replies": list(outcome.replies) if outcome else []})
    write_text_atomic(Path(out_dir) / "judge_reviews.jsonl", jsonl_text(reviews))
    metrics = protocol.aggregate(graded)
    return {"overall": metrics["overall"], "graded": len(graded),
            "judge_unparsed": sum(not o.parsed for o in outcomes),
            "per_capability": metrics["per_capability"],
            "per_capability_integration": metrics["per_capability_integration"], "judge": judge_record}
