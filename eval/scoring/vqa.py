"""VQA accuracy: the official VQA evaluation (VQAv2, OK-VQA), VizWiz's variant, and TextVQA's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from eval.scoring.common import grouped_mean_percent, percent
from eval.scoring.normalize import evalai_normalize, vqa_normalize_prediction, vqa_process_punctuation


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


def vqa_question_accuracy(gt_answers: Sequence[str], prediction: str, *, normalize_gt: bool = True) -> float:
    """Accuracy of one question as `vqaEval.py` computes it.

    The prediction is always normalised (punctuation, then digits/articles/contractions). The ground
    truths get only the punctuation step, and only when the human answers are not all identical
    (`normalize_gt=False` is VizWiz's variant, which never touches them).
    """
    if not gt_answers:
        raise ValueError("a VQA question needs at least one ground-truth answer")
    prediction = vqa_normalize_prediction(prediction)
    if normalize_gt and len(set(gt_answers)) > 1:
        gt_answers = [vqa_process_punctuation(answer) for answer in gt_answers]
    return leave_one_out_accuracy(gt_answers, prediction)


def vqa_metrics(items: Sequence[VQAItem], *, evalai_postprocess: bool = True, normalize_gt: bool = True) -> dict:
    """Overall / per answer type / per question type accuracy, rounded to 2 decimals as officially.

    `evalai_postprocess`: apply the EvalAI answer processor to predictions first, as LLaVA-1.5's
    submission converter does. A missing prediction scores 0.
    """
    scores = []
    for item in items:
        if item.prediction is None:
            scores.append(0.0)
            continue
        prediction = evalai_normalize(item.prediction) if evalai_postprocess else item.prediction
        scores.append(vqa_question_accuracy(item.answers, prediction, normalize_gt=normalize_gt))
    return {
        "overall": round(percent(sum(scores), len(scores)), 2),
        "per_answer_type": grouped_mean_percent((i.answer_type, s) for i, s in zip(items, scores)),
        "per_question_type": grouped_mean_percent((i.question_type, s) for i, s in zip(items, scores)),
    }


def textvqa_question_accuracy(gt_answers: Sequence[str], prediction: str) -> float:
    """TextVQA's evaluator: EvalAI-normalise everything, then the leave-one-out VQA accuracy."""
    return leave_one_out_accuracy([evalai_normalize(a) for a in gt_answers], evalai_normalize(prediction))


def textvqa_metrics(items: Sequence[VQAItem]) -> dict:
    """Mean accuracy as the TextVQA evaluator reports it (LLaVA prints it as a 2-decimal percentage)."""
    scores = [0.0 if i.prediction is None else textvqa_question_accuracy(i.answers, i.prediction) for i in items]
    return {"overall": round(percent(sum(scores), len(scores)), 2)}
