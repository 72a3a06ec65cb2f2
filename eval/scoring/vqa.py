"""VQA accuracy: the official VQA evaluation (VQAv2, OK-VQA), VizWiz's copy of it, and TextVQA's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from eval.scoring.common import fraction_percent, grouped_mean_percent, percent
from eval.scoring.normalize import VIZWIZ_CONTRACTIONS, evalai_normalize, vqa_clean_whitespace, vqa_normalize
TEXTVQA_NUM_ANSWERS = 10


@dataclass(frozen=True)
class VQAItem:
    """One question's ground truth and prediction (None when the prediction is missing)."""

    answers: Sequence[str]
    prediction: str | None
    question_type: str = ""
    answer_type: str = ""


def leave_one_out_accuracy(gt_answers: Sequence[str], prediction: str) -> float:
    """Mean over each left-out GT record of min(1, matches among the other records / 3)."""
    matches = sum(answer == prediction for answer in gt_answers)
    total = 0.0
    for answer in gt_answers:
        others_matching = matches - (answer == prediction)
        total += min(1.0, others_matching / 3.0)
    return total / len(gt_answers)


def _bad_data(message: str) -> Exception:
    # Imported here: the task modules import these scorers. A TaskDataError reaches the user as a
    # one-line message instead of a traceback.
    from eval.tasks.base import TaskDataError

    return TaskDataError(message)


def _require_answers(gt_answers: Sequence[str]) -> None:
    if not gt_answers:
        raise _bad_data("a VQA question needs at least one ground-truth answer")
    if not all(isinstance(answer, str) for answer in gt_answers):
        raise _bad_data(f"ground-truth answers must be strings, got {list(gt_answers)!r}")


def vqa_question_accuracy(gt_answers: Sequence[str], prediction: str) -> float:
    """Accuracy of one question as GT-Vision-Lab's `vqaEval.py` (master, since its 2021 fix) computes it.

    Every answer has tabs/newlines turned into spaces and is stripped. Only when the ground truths then
    differ are they and the prediction fully normalised (punctuation, digits, articles, contractions);
    when all agree, the prediction must equal them as it is.
    """
    _require_answers(gt_answers)
    gt_answers = [vqa_clean_whitespace(answer) for answer in gt_answers]
    prediction = vqa_clean_whitespace(prediction)
    if len(set(gt_answers)) > 1:
        gt_answers = [vqa_normalize(answer) for answer in gt_answers]
        prediction = vqa_normalize(prediction)
    return leave_one_out_accuracy(gt_answers, prediction)


def vizwiz_question_accuracy(gt_answers: Sequence[str], prediction: str) -> float:
    """Accuracy of one question as VizWiz's `vqaEval.py` computes it: the prediction is always fully
    normalised (with VizWiz's contraction table), the ground truths are never touched."""
    _require_answers(gt_answers)
    return leave_one_out_accuracy(gt_answers, vqa_normalize(prediction, VIZWIZ_CONTRACTIONS))


def vqa_metrics(
    items: Sequence[VQAItem],
    *,
    evalai_postprocess: bool = True,
    question_accuracy: Callable[[Sequence[str], str], float] = vqa_question_accuracy,
) -> dict:
    """Overall / per answer type / per question type accuracy, rounded to 2 decimals as officially.

    `evalai_postprocess`: apply the EvalAI answer processor to predictions first, as LLaVA-1.5's
    submission converters do. `question_accuracy` is the benchmark's per-question rule
    (`vizwiz_question_accuracy` for VizWiz). A missing prediction scores 0.
    """
    scores = []
    for item in items:
        if item.prediction is None:
            scores.append(0.0)
            continue
        prediction = evalai_normalize(item.prediction) if evalai_postprocess else item.prediction
        scores.append(question_accuracy(item.answers, prediction))
    return {
        "overall": round(percent(sum(scores), len(scores)), 2),
        "per_answer_type": grouped_mean_percent((i.answer_type, s) for i, s in zip(items, scores)),
        "per_question_type": grouped_mean_percent((i.question_type, s) for i, s in zip(items, scores)),
    }


def textvqa_question_accuracy(gt_answers: Sequence[str], prediction: str) -> float:
    """TextVQA's evaluator: EvalAI-normalise everything, then the leave-one-out VQA accuracy (its
    per-unique-answer table gives the same numbers). It requires exactly ten answers."""
    _require_answers(gt_answers)
    if len(gt_answers) != TEXTVQA_NUM_ANSWERS:
        raise _bad_data(f"TextVQA's evaluator needs exactly {TEXTVQA_NUM_ANSWERS} ground-truth answers per "
                        f"question, got {len(gt_answers)}: {list(gt_answers)!r}")
    return leave_one_out_accuracy([evalai_normalize(a) for a in gt_answers], evalai_normalize(prediction))


def textvqa_metrics(items: Sequence[VQAItem]) -> dict:
    """Mean accuracy as LLaVA's `eval_textvqa.py` prints it: 100 * (sum / count), 2 decimals."""
    scores = [0.0 if i.prediction is None else textvqa_question_accuracy(i.answers, i.prediction) for i in items]
    return {"overall": round(fraction_percent(sum(scores), len(scores)), 2)}
