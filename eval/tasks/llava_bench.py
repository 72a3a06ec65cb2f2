"""LLaVA-Bench (In-the-Wild; also COCO) scored by a judge: LLaVA's GPT review, relative score (model / GPT-4 * 100)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.judge import llava_bench as protocol
from eval.judge.options import JudgeOptions
from eval.tasks.base import (Question, TaskDataError, field_of, json_object, string_field, load_json, load_json_lines, option,
                             require_path)

DEFAULT_FILES = {"questions": "questions.jsonl", "context": "context.jsonl", "reference_answers": "answers_gpt4.jsonl",
                 "image_root": "images"}


@dataclass
class LLaVABenchOptions(JudgeOptions):
    """Data options of LLaVA-Bench (its judge options come from JudgeOptions)."""

    bench_root: str = option("folder with questions.jsonl, context.jsonl, answers_gpt4.jsonl and images/ "
                             "(each can be given on its own instead)", "", file_option=True)
    questions: str = option("questions JSONL: question_id, image, text, category (default BENCH_ROOT/questions.jsonl)",
                            "", file_option=True)
    context: str = option("context JSONL: image and caption (In-the-Wild) or captions and instances (COCO) "
                          "(default BENCH_ROOT/context.jsonl)", "", file_option=True)
    reference_answers: str = option("reference (GPT-4) answers JSONL: question_id, text "
                                    "(default BENCH_ROOT/answers_gpt4.jsonl)", "", file_option=True)
    image_root: str = option("folder with the images (default BENCH_ROOT/images)", "", file_option=True)
    rule_file: str = option("a rule.json to take the review prompts from (e.g. llava/eval/table/rule.json of a LLaVA "
                            "checkout); default: the verbatim copy shipped in eval/judge/llava_bench.py", "",
                            file_option=True)
    judge_parse_attempts: str = option("times a review is asked for when its first line has no two scores "
                                       "(attempt k is cached as attempt k); then counted in judge_unparsed", "3")


@dataclass(frozen=True)
class ReviewInput:
    """What the review request needs besides the model's answer."""

    category: str
    context: str
    question: str
    reference: str
    role: str
    prompt: str


def _path(options: LLaVABenchOptions, name: str) -> str:
    value = getattr(options, name)
    if value:
        return value
    if not options.bench_root:
        raise TaskDataError(f"llava_bench: give --bench-root or --{name.replace('_', '-')}")
    root = require_path(options.bench_root, "bench_root", directory=True)
    return str(root / DEFAULT_FILES[name])


def _option_of(options: LLaVABenchOptions, name: str) -> str:
    """The option a file came from, for error messages."""
    return name if getattr(options, name) else "bench_root"


def _rules(options: LLaVABenchOptions) -> dict:
    if not options.rule_file:
        return protocol.RULES
    rules = json_object(load_json(options.rule_file, "rule_file"), f"{options.rule_file} (--rule-file)")
    for key, rule in rules.items():
        where = f"{options.rule_file} rule {key!r}"
        json_object(rule, where)
        for name in ("role", "prompt"):
            if not isinstance(field_of(rule, name, where), str):
                raise TaskDataError(f"{where}: {name} must be a string")
    return rules


def _context(record: dict, where: str) -> str:
    if "caption" in record:
        caption = record["caption"]
        if not (isinstance(caption, str) or (isinstance(caption, list) and all(isinstance(c, str) for c in caption))):
            raise TaskDataError(f"{where}: caption must be a string or a list of strings")
    else:
        captions = field_of(record, "captions", where)
        instances = field_of(record, "instances", where)
        if not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
            raise TaskDataError(f"{where}: captions must be a list of strings")
        if not (isinstance(instances, list) and all(isinstance(i, dict) and "category" in i and "bbox" in i
                                                    for i in instances)):
            raise TaskDataError(f"{where}: instances must be a list of objects with category and bbox")
    return protocol.context_text(record)



def read_llava_bench(options: LLaVABenchOptions) -> list[Question]:
    """Questions in file order; prompt = the question text as is (LLaVA's model_vqa); ids as the file gives them.
    The reference answer is found by question_id, the context by image (LLaVA's review script pairs the
    question and answer files line by line instead; for the released files that is the same)."""
    from eval.judge.engine import check_judge_options
    from eval.predictions import id_key

    check_judge_options(options, "judge_parse_attempts")
    rules = _rules(options)
    questions_path, context_path, answers_path, image_root = (
        _path(options, name) for name in ("questions", "context", "reference_answers", "image_root"))
    contexts: dict[str, tuple[str, bool]] = {}  # image -> (context text, COCO layout)
    for number, record in enumerate(load_json_lines(context_path, _option_of(options, "context")), 1):
        where = f"{context_path} record {number}"
        json_object(record, where)
        # later records of an image win, as in LLaVA's dict
        contexts[string_field(record, "image", where)] = (_context(record, where), "caption" not in record)
    references: dict[str, str] = {}
    for number, record in enumerate(load_json_lines(answers_path, _option_of(options, "reference_answers")), 1):
        where = f"{answers_path} record {number}"
        json_object(record, where)
        references.setdefault(id_key(field_of(record, "question_id", where)), string_field(record, "text", where))
    out = []
    for number, record in enumerate(load_json_lines(questions_path, _option_of(options, "questions")), 1):
        where = f"{questions_path} record {number}"
        json_object(record, where)
        question_id = field_of(record, "question_id", where)
        where = f"{questions_path} question {question_id}"
        image, text, category = (string_field(record, key, where) for key in ("image", "text", "category"))
        if image not in contexts:
            raise TaskDataError(f"{where}: image {image!r} has no record in {context_path}")
        if id_key(question_id) not in references:
            raise TaskDataError(f"{where}: no reference answer in {answers_path}")
        record_context, coco = contexts[image]
        key = protocol.rule_key(category, coco)
        if key not in rules:
            raise TaskDataError(f"{where}: category {category!r}: no rule {key!r} in "
                                f"{options.rule_file or 'the shipped rule.json entries'}")
        truth = ReviewInput(category, record_context, text, references[id_key(question_id)], rules[key]["role"],
                            rules[key]["prompt"])
        out.append(Question(question_id, text, (Path(image_root) / image,), truth))
    return out


def score_llava_bench(options: LLaVABenchOptions, questions, answers, *, out_dir: Path) -> dict:
    """Each answer is reviewed against the reference answer (assistant 1 = reference, 2 = model); a
    missing answer is reviewed as an empty answer. Reviews whose first line has no two scores after
    `--judge-parse-attempts` tries are left out of every mean and counted in `judge_unparsed` (LLaVA
    would average them in as [-1, -1])."""
    from eval.judge.engine import JudgeItem, check_judge_options, judge_items, make_judge
    from eval.report import jsonl_text
    from mm.atomic import write_text_atomic

    check_judge_options(options, "judge_parse_attempts")
    items = []
    for question, answer in zip(questions, answers):
        t: ReviewInput = question.truth
        content = protocol.review_content(t.context, t.question, t.reference, answer if answer is not None else "",
                                          t.role, t.prompt)
        items.append(JudgeItem(str(question.question_id), [protocol.review_messages(content)], protocol.parse_score))
    outcomes, judge_record = judge_items(make_judge(options), items,
                                         {"temperature": 0, "max_tokens": protocol.MAX_TOKENS},
                                         attempts=int(options.judge_parse_attempts),
                                         concurrency=int(options.judge_concurrency), out_dir=out_dir)
    groups: dict[str, list] = {}
    reviews = []
    for question, answer, outcome in zip(questions, answers, outcomes):
        category = question.truth.category
        if outcome.parsed:
            groups.setdefault(category, []).append(outcome.value)
        reviews.append({"question_id": question.question_id, "category": category, "answer_missing": answer is None,
                        "tuple": list(outcome.value) if outcome.parsed else None, "replies": list(outcome.replies)})
    write_text_atomic(Path(out_dir) / "judge_reviews.jsonl", jsonl_text(reviews))
    every = [o.value for o in outcomes if o.parsed]
    summary = protocol.summarize(every)
    unparsed = sum(not o.parsed for o in outcomes)
    return {"overall": summary["relative"], "reference_score": summary["reference_score"],
            "model_score": summary["model_score"], "reviewed": summary["count"], "judge_unparsed": unparsed,
            "per_category": {category: protocol.summarize(groups[category]) for category in sorted(groups)},
            "judge": judge_record}
