"""MM-Vet: the GPT grader's few-shot prompt, its score parsing and the capability aggregation.

Protocol text shipped verbatim from yuweihao/MM-Vet `mm-vet_evaluator.py` (module-level `prompt`; the
notebook `mm-vet_evaluator.ipynb` holds the same string) at commit acde843e02dae30047bb456ee4a8ab28dee7e0ae
(2025-01-19; the file last changed in c7ff270d86fb79c42346214366f4192c0e08b042). The request, the retry
variant ("Predict the correctness of the answer (digit): "), the reply parsing and the per capability /
capability integration / total scores follow `runs()` and `export_result()` of that file.
"""

from __future__ import annotations

import math

MAX_TOKENS = 3  # the grader's max_tokens
# sha256 d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f (2290 characters)
GRADER_PROMPT = (
    "Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.\n"
    "\n"
    "Question | Ground truth | Prediction | Correctness\n"
    "--- | --- | --- | ---\n"
    "What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0\n"
    "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4\n"
    "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0\n"
)
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "


def grader_content(question: str, answer: str, prediction: str, *, retry: bool = False) -> str:
    """prompt + "\\n" + " | ".join([question, answer with spaced <AND>/<OR>, prediction, ""]) (+ the suffix
    of the grader's retries)."""
    row = " | ".join([question, answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "), prediction, ""])
    return GRADER_PROMPT + "\n" + row + (RETRY_SUFFIX if retry else "")


def grader_messages(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def parse_grade(content: str) -> float | None:
    """The grader's parsing: the text before the first space, stripped, as a float in [0, 1]; else None
    (the grader asks again). Not finite values ("nan", which the grader's check lets through) are None."""
    try:
        score = float(content.split(" ")[0].strip())
    except ValueError:
        return None
    if not math.isfinite(score) or score > 1.0 or score < 0.0:
        return None
    return score


def _round(value: float, places: int = 1) -> float:
    """`round(numpy_float64, 1)` as the grader rounds (numpy's rint(x * 10) / 10, not Python's decimal rule)."""
    import numpy as np

    return float(np.round(np.float64(value), places))


def capability_name(capabilities) -> str:
    """A capability combination's name: the grader joins a Python set (hash order, differs between runs);
    here the capabilities sorted by name, joined by "_"."""
    return "_".join(sorted(set(capabilities)))


def aggregate(graded: list[tuple[tuple[str, ...], float]]) -> dict:
    """export_result() with one run: per capability and per capability combination, sum of scores / count
    * 100, rounded to 1 decimal; total likewise over every graded question. Columns in the grader's order:
    capabilities by count (most common first; ties in first-seen order, by name within a question), combinations by count."""
    from collections import Counter

    counter: Counter = Counter()
    sets: dict[str, int] = {}
    sums: dict[str, float] = {}
    set_sums: dict[str, float] = {}
    total = 0.0
    for capabilities, score in graded:
        caps = set(capabilities)
        counter.update(sorted(caps))
        name = capability_name(caps)
        sets[name] = sets.get(name, 0) + 1
        for cap in caps:
            sums[cap] = sums.get(cap, 0.0) + score
        set_sums[name] = set_sums.get(name, 0.0) + score
        total += score
    per_capability = {cap: {"score": _round(sums[cap] / count * 100), "count": count}
                      for cap, count in counter.most_common()}
    ordered_sets = sorted(sets.items(), key=lambda item: -item[1])  # stable: ties keep first-seen order
    per_combination = {name: {"score": _round(set_sums[name] / count * 100), "count": count}
                       for name, count in ordered_sets}
    overall = _round(total / len(graded) * 100) if graded else None
    return {"overall": overall, "per_capability": per_capability, "per_capability_integration": per_combination}
