"""LLaVA-Bench (In-the-Wild and COCO): the GPT review prompt, its score parsing and the summary.

Protocol text shipped verbatim from haotian-liu/LLaVA `llava/eval/table/rule.json` at commit
181a2f811f1eb0b794c25e87204491d812c05f8d (its last change; unchanged at c121f04 of 2024-05-12):
the entries `llava_bench_conv` / `llava_bench_detail` / `llava_bench_complex` (In-the-Wild; the three are
identical) and `conv` / `detail` / `complex` (COCO; identical too), all with role "Assistant". The
request is built as `llava/eval/eval_gpt_review_bench.py` (In-the-Wild, context = the caption) and
`llava/eval/eval_gpt_review_visual.py` (COCO, context = captions and boxes) build it at commit
ce1aa08d129bd7df931a7067bcb79cf3cb3a1af5; `parse_score` and the summary follow those files and
`llava/eval/summarize_gpt_review.py`. `--rule-file` reads a rule.json instead (e.g. from a LLaVA checkout).
"""

from __future__ import annotations

import math

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
MAX_TOKENS = 1024  # eval_gpt_review_bench.py --max-tokens default
SCORE_SCALE_MAX = 10.0  # "an overall score on a scale of 1 to 10"

# rule.json "llava_bench_*" prompt (sha256 2ce22b56...9529d)
_WILD_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your reference, "
    "the visual content in the image is represented with a few sentences describing the image. \nPlease "
    "rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\nPlease first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
    "ensuring that the order in which the responses were presented does not affect your judgment."
)
# rule.json "conv"/"detail"/"complex" prompt (sha256 a73b4b7b...00dff)
_COCO_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your reference, "
    "the visual content in the image is represented with five descriptive sentences describing the same "
    "image and the bounding box coordinates of each object in the scene. These coordinates are in the "
    "form of bounding boxes, represented as (x1, y1, x2, y2) with floating numbers ranging from 0 to 1. "
    "These values correspond to the top left x, top left y, bottom right x, and bottom right y. \nPlease "
    "rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\nPlease first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
    "ensuring that the order in which the responses were presented does not affect your judgment."
)
RULES = {
    **{f"llava_bench_{c}": {"role": "Assistant", "prompt": _WILD_PROMPT} for c in ("conv", "detail", "complex")},
    **{c: {"role": "Assistant", "prompt": _COCO_PROMPT} for c in ("conv", "detail", "complex")},
}


def rule_key(category: str, coco_context: bool) -> str:
    """eval_gpt_review_bench.py looks up "llava_bench_" + category; eval_gpt_review_visual.py the category."""
    return category if coco_context else f"llava_bench_{category}"


def context_text(record: dict) -> str:
    """In-the-Wild: `caption` (a list is joined by newlines); COCO: `captions` joined by newlines, a blank
    line, then one `category: [x1, y1, x2, y2]` line per instance (Python's list repr, as the f-string)."""
    if "caption" in record:
        caption = record["caption"]
        return "\n".join(caption) if isinstance(caption, list) else caption
    captions = "\n".join(record["captions"])
    boxes = "\n".join(f'{instance["category"]}: {instance["bbox"]}' for instance in record["instances"])
    return f"{captions}\n\n{boxes}"


def review_content(context: str, question: str, reference: str, answer: str, role: str, prompt: str) -> str:
    """The user message: the reference (GPT-4) answer is assistant 1, the model's answer assistant 2."""
    return (f"[Context]\n{context}\n\n"
            f"[Question]\n{question}\n\n"
            f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
            f"[System]\n{prompt}\n\n")


def review_messages(content: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def parse_score(review: str) -> tuple[float, float] | None:
    """LLaVA's parse_score: the first line, commas as spaces, split on single spaces; exactly two parts,
    each a float -> (reference score, model score). LLaVA returns [-1, -1] otherwise; here None (unparsed).
    Scores off the prompt's 1-to-10 scale are unparsed too (LLaVA takes any float): "nan", "inf" and "1e308"
    would make the means, hence metrics.json, NaN or Infinity. 0 is let through, as a judge's "no merit"."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        scores = (float(parts[0]), float(parts[1]))
    except ValueError:
        return None
    return scores if all(math.isfinite(s) and 0 <= s <= SCORE_SCALE_MAX for s in scores) else None


def summarize(tuples: list[tuple[float, float]]) -> dict:
    """summarize_gpt_review.py for one group: the mean of each score (numpy, rounded to 3 decimals), then
    relative = round(model / reference * 100, 1) and both means * 10 rounded to 1 decimal."""
    import numpy as np

    if not tuples:
        return {"relative": None, "reference_score": None, "model_score": None, "count": 0}
    stats = [round(x, 3) for x in np.asarray(tuples, dtype=float).mean(0).tolist()]
    relative = round(stats[1] / stats[0] * 100, 1) if stats[0] else None
    return {"relative": relative, "reference_score": round(stats[0] * 10, 1), "model_score": round(stats[1] * 10, 1),
            "count": len(tuples)}
