"""Scorers against hand-derived golden values, including the reference implementations' quirks."""

import pytest

from eval.scoring.choice import (ChoiceItem, CircularItem, extract_choice, mmbench_metrics, scienceqa_metrics,
                                 scienceqa_parse, seed_metrics)
from eval.scoring.gqa import GQAItem, gqa_metrics
from eval.scoring.vqa import (VQAItem, leave_one_out_accuracy, textvqa_metrics, vizwiz_question_accuracy, vqa_metrics,
                              vqa_question_accuracy)
from eval.tasks.base import TaskDataError
from eval.scoring.yesno import MMEItem, YesNoItem, mme_metrics, mme_parse, pope_answer_is_yes, pope_metrics


def test_leave_one_out_matches_formula():
    # 3 of 10 say "2": left-out "2" -> 2 others -> 2/3; left-out other -> 3 -> 1. (3*2/3 + 7)/10 = 0.9
    assert leave_one_out_accuracy(["2"] * 3 + ["3"] * 7, "2") == pytest.approx(0.9)
    # 1 match: 9 * (1/3) / 10 = 0.3; 2 matches: (2*(1/3) + 8*(2/3)) / 10 = 0.6
    assert leave_one_out_accuracy(["cat"] + ["dog"] * 9, "cat") == pytest.approx(0.3)
    assert leave_one_out_accuracy(["cat"] * 2 + ["dog"] * 8, "cat") == pytest.approx(0.6)
    assert leave_one_out_accuracy(["dog"] * 10, "cat") == 0.0


# Golden cases that tell the VQA evaluation variants apart (hand-derived):
#   master = GT-Vision-Lab vqaEval.py since 2021 (ours for VQAv2/OK-VQA): whitespace-clean everything; only
#            when the ten GTs differ, fully normalise GTs and prediction; case-sensitive equality.
#   2016   = its 2016-2020 version: prediction always normalised, GTs punctuation-only when they differ.
#   lower  = master comparing .lower() of both (a third-party edit).
#   vizwiz = VizWiz's vqaEval.py: prediction always normalised (own contraction table), GTs never.
VARIANT_CASES = [
    # (gts, prediction, master, 2016 (for the record; not implemented), vizwiz)
    (["t-shirt"] * 10, "t-shirt", 1.0, 0.0, 0.0),   # unanimous: compared raw in master only
    (["2"] * 10, "Two", 0.0, 1.0, 1.0),             # unanimous: master leaves "Two" as is
    (["two"] * 9 + ["2"], "two", 1.0, 0.3, 0.3),    # differing: master maps every GT "two" to "2"
    (["Yes"] * 3 + ["no"] * 7, "yes", 0.9, 0.0, 0.0),  # differing: master lowercases the GTs
    (["red"] * 9 + ["red\n"], "Red", 0.0, 1.0, 1.0),   # GTs whitespace-cleaned first: unanimous
    (["don't"] * 3 + ["no"] * 7, "dont", 0.9, 0.9, 0.0),  # VizWiz restores "don\u2019t" (typographic)
]


@pytest.mark.parametrize("gts, prediction, master, _2016, vizwiz", VARIANT_CASES)
def test_vqa_and_vizwiz_rules_on_cases_where_variants_differ(gts, prediction, master, _2016, vizwiz):
    assert vqa_question_accuracy(gts, prediction) == pytest.approx(master)
    assert vizwiz_question_accuracy(gts, prediction) == pytest.approx(vizwiz)


def test_master_is_case_sensitive_when_ground_truths_agree():
    # The ".lower()" variant would give 1.0 here.
    assert vqa_question_accuracy(["Yes"] * 10, "yes") == 0.0


def test_evalai_postprocessed_predictions_through_each_rule():
    # LLaVA-1.5's path: EvalAI first ("Two" -> "2", "T-Shirt" -> "t shirt"), then the official rule.
    items = [VQAItem(["two"] * 9 + ["2"], "Two", "how many", "number"),
             VQAItem(["t-shirt"] * 10, "T-Shirt", "what is", "other")]
    # master: "2" vs ten "2" -> 1.0; "t shirt" vs ten raw "t-shirt" -> 0.  VizWiz: 0.3 and 0.
    assert vqa_metrics(items)["per_answer_type"] == {"number": 100.0, "other": 0.0}
    vizwiz = vqa_metrics(items, question_accuracy=vizwiz_question_accuracy)
    assert vizwiz["overall"] == 15.0 and vizwiz["per_answer_type"] == {"number": 30.0, "other": 0.0}


def test_vizwiz_unanswerable_is_an_ordinary_answer_with_its_own_type():
    items = [VQAItem(["unanswerable"] * 8 + ["blurry"] * 2, "Unanswerable.", "", "unanswerable"),
             VQAItem(["unanswerable"] * 2 + ["soup"] * 8, "unanswerable", "", "other")]
    # 8 matches -> 1.0; 2 matches -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    m = vqa_metrics(items, question_accuracy=vizwiz_question_accuracy)
    assert m["overall"] == 80.0 and m["per_answer_type"] == {"other": 60.0, "unanswerable": 100.0}


def test_vqa_metrics_rounding_and_breakdowns():
    items = [
        VQAItem(["yes"] * 10, "Yes.", "is this", "yes/no"),           # EvalAI -> "yes": 1.0
        VQAItem(["2"] * 10, "three", "how many", "number"),            # 0
        VQAItem(["red"] * 10, None, "what color", "other"),            # missing: 0
    ]
    metrics = vqa_metrics(items)
    assert metrics["overall"] == 33.33
    assert metrics["per_answer_type"] == {"number": 0.0, "other": 0.0, "yes/no": 100.0}
    assert metrics["per_question_type"]["is this"] == 100.0


def test_textvqa_normalises_ground_truth_always():
    items = [VQAItem(["Coca-Cola"] * 10, "coca cola"), VQAItem(["stop"] * 2 + ["go"] * 8, "STOP")]
    # first: both -> "coca cola": 1.0; second: 2 matches -> 0.6. mean 0.8
    assert textvqa_metrics(items) == {"overall": 80.0}
    # the VQAv2 path compares the unanimous "Coca-Cola" raw with EvalAI's "coca cola": 0 there
    assert vqa_metrics(items[:1])["overall"] == 0.0


def test_textvqa_is_leave_one_out_not_min_of_matches_over_three():
    # 3 of 10 say "stop": min(1, 3/3) would be 1.0; m4c averages over the left-out answers:
    # (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert textvqa_metrics([VQAItem(["stop"] * 3 + ["go"] * 7, "stop")]) == {"overall": 90.0}


def test_textvqa_requires_ten_answers():
    with pytest.raises(TaskDataError, match="exactly 10 ground-truth answers.*got 9"):
        textvqa_metrics([VQAItem(["stop"] * 9, "stop")])


@pytest.mark.parametrize("score", [vqa_question_accuracy, vizwiz_question_accuracy])
def test_malformed_ground_truths_are_clear_errors(score):
    with pytest.raises(TaskDataError, match="at least one ground-truth answer"):
        score([], "yes")
    with pytest.raises(TaskDataError, match="must be strings, got \\['2', 2\\]"):
        score(["2", 2], "2")


def test_percentages_use_each_references_order_of_operations():
    # 23/160*100 = 14.374999999999998 -> 14.37 (GQA, ScienceQA, SEED, TextVQA); 100*23/160 = 14.375 -> 14.38
    right, wrong = [GQAItem("yes", "yes", "verify")] * 23, [GQAItem("yes", "no", "verify")] * 137
    assert gqa_metrics(right + wrong)["overall"] == 14.37
    assert scienceqa_metrics([ChoiceItem("A", "A")] * 23 + [ChoiceItem("A", "B")] * 137)["overall"] == 14.37
    assert seed_metrics([ChoiceItem("A", "A")] * 23 + [ChoiceItem("A", "B")] * 137)["overall"] == 14.37
    textvqa = [VQAItem(["x"] * 10, "x")] * 23 + [VQAItem(["x"] * 10, "y")] * 137
    assert textvqa_metrics(textvqa)["overall"] == 14.37
    # The VQA evaluation computes 100 * sum / count.
    vqa = [VQAItem(["x"] * 10, "x")] * 23 + [VQAItem(["x"] * 10, "y")] * 137
    assert vqa_metrics(vqa)["overall"] == 14.38


@pytest.mark.parametrize("text, is_yes", [
    ("Yes, there is a dog.", True),
    ("No.", False),
    ("There is not a cat", False),
    ("no, it isn't", False),
    ("Yes. No.", True),          # only the first sentence counts
    ("NO", True),                # case-sensitive word match: not "No"/"no"
    ("Nope", True),
    ("No,there is none", True),  # commas are deleted, not spaced: "Nothere" is no "No" word
])
def test_pope_mapping(text, is_yes):
    assert pope_answer_is_yes(text) is is_yes


def test_pope_metrics():
    items = [
        YesNoItem(True, "Yes"),          # TP
        YesNoItem(True, "No"),           # FN
        YesNoItem(False, "Yes, it is."),  # FP
        YesNoItem(False, "There is not."),  # TN
        YesNoItem(False, "NO"),          # FP (maps to yes)
        YesNoItem(True, None),           # missing
    ]
    m = pope_metrics(items)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["missing"]) == (1, 2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(0.4)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.4)
    assert m["yes_ratio"] == pytest.approx(0.6)


@pytest.mark.parametrize("text, label", [
    ("Yes", "yes"), ("no", "no"), ("No, it's not", "no"), ("yesterday", "yes"), ("Not sure", "no"),
    ("I think not", "other"), ("The answer is yes", "other"), ("know", "no"),
])
def test_mme_parse(text, label):
    assert mme_parse(text) == label


def test_mme_metrics():
    items = [
        MMEItem("existence", "a.jpg", "Yes", "Yes"),
        MMEItem("existence", "a.jpg", "No", "No, it's not"),
        MMEItem("existence", "b.jpg", "Yes", "yesterday"),
        MMEItem("existence", "b.jpg", "No", "I think not"),
        MMEItem("code_reasoning", "c.png", "Yes", "Yes"),
        MMEItem("code_reasoning", "c.png", "No", None),
    ]
    m = mme_metrics(items)
    assert m["subtasks"]["existence"]["acc"] == 75.0
    assert m["subtasks"]["existence"]["acc_plus"] == 50.0
    assert m["subtasks"]["existence"]["other"] == 1
    assert m["perception"] == 125.0 and m["overall"] == 125.0
    assert m["cognition"] == 50.0


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("B. dog", "B"), ("The answer is C.", "C"), ("The answer is C. The answer is D.", "FAILED"),
    ("a", "FAILED"), ("A.", "FAILED"), ("The answer is Bx", "B"),
])
def test_scienceqa_parse(text, letter):
    assert scienceqa_parse(text) == letter


def test_scienceqa_metrics():
    items = [
        ChoiceItem("B", "B", 3, "natural science"),
        ChoiceItem("A", "The answer is A.", 2, "social science"),
        ChoiceItem("C", "C.", 3, "natural science"),        # FAILED
        ChoiceItem("A", "D", 3, "language science"),        # D is not one of 3 choices
        ChoiceItem("A", None, 2, "language science"),       # missing -> FAILED
    ]
    m = scienceqa_metrics(items)
    assert m["overall"] == 40.0
    assert m["failed_to_parse"] == 2
    assert m["per_subject"] == {"language science": 0.0, "natural science": 50.0, "social science": 100.0}


OPTIONS = {"A": "cat", "B": "dog", "C": "bird"}


@pytest.mark.parametrize("text, choice", [
    ("A", "A"), ("(B) dog", "B"), ("The answer is C.", "C"), ("I think it is a dog", "B"),
    ("A or B", None), ("cat and dog", None), ("fish", None), ("B: Dog", "B"),
])
def test_mmbench_choice_extraction(text, choice):
    assert extract_choice(text, OPTIONS) == choice


def test_mmbench_circular():
    rotations = [{"A": "cat", "B": "dog"}, {"A": "dog", "B": "cat"}]
    items = [
        CircularItem(1, "A", rotations[0], "A", "c1", "l2a"),
        CircularItem(1, "B", rotations[1], "cat", "c1", "l2a"),   # by option text
        CircularItem(2, "B", rotations[0], "B", "c2", "l2a"),
        CircularItem(2, "A", rotations[1], "B", "c2", "l2a"),     # wrong in one rotation
        CircularItem(3, "A", rotations[0], "A or B", "c2", "l2b"),  # unparsed
        CircularItem(3, "B", rotations[1], "B", "c2", "l2b"),
    ]
    m = mmbench_metrics(items)
    assert m["overall"] == 33.33
    assert m["single_pass"] == 66.67
    assert m["unparsed"] == 1
    assert m["per_category"] == {"c1": 100.0, "c2": 0.0}
    assert m["per_l2_category"] == {"l2a": 50.0, "l2b": 0.0}


def test_seed_exact_letter():
    items = [ChoiceItem("A", "A", group="Scene"), ChoiceItem("B", "B.", group="Scene"),
             ChoiceItem("C", " C", group="Count"), ChoiceItem("D", None, group="Count")]
    m = seed_metrics(items)
    assert m["overall"] == 25.0
    assert m["per_question_type"] == {"Count": 0.0, "Scene": 50.0}


def test_gqa_exact_match_after_preparation():
    items = [GQAItem("yes", "Yes.", "verify", "attr"), GQAItem("table", "the table", "query", "obj"),
             GQAItem("left", "Left", "query", "rel"), GQAItem("no", None, "logical", "obj")]
    m = gqa_metrics(items)
    assert m["overall"] == 50.0
    assert m["binary"] == 50.0 and m["open"] == 50.0
    assert m["per_semantic_type"] == {"attr": 100.0, "obj": 0.0, "rel": 100.0}


def _mme_subtask(name, correct_flags):
    """Three images, two questions each (answer "Yes"); a flag says whether the prediction is right."""
    return [MMEItem(name, f"{name}{k // 2}.png", "Yes", "Yes" if ok else "No") for k, ok in enumerate(correct_flags)]


def test_mme_adds_like_the_eval_tool():
    existence = _mme_subtask("existence", [1, 0, 0, 0, 0, 0])  # acc 1/6 * 100, acc+ 0
    count = _mme_subtask("count", [0, 0, 1, 0, 0, 0])          # the same
    ocr = _mme_subtask("OCR", [1, 1, 0, 0, 0, 0])              # acc 2/6 * 100, acc+ 1/3 * 100
    m = mme_metrics(existence + count + ocr)
    # fraction first: 1/6*100 = 16.666666666666664 (100*1/6 would be 16.666666666666668)
    assert m["subtasks"]["existence"]["acc"] == 16.666666666666664
    assert m["subtasks"]["OCR"]["score"] == 66.66666666666666
    # summed in the tool's subtask order (existence, count, ..., OCR): 99.99999999999999;
    # alphabetical order (OCR, count, existence) would give 99.99999999999997
    assert m["perception"] == 99.99999999999999


@pytest.mark.parametrize("text, choice", [
    ("A cat, not B", "A"),                         # two letters: option texts decide (only "cat" occurs)
    ("B or C: a dog", "B"),
    ("Cannot determine the answer", "Z"),           # VLMEvalKit's refusals pick no option
    ("Z", "Z"),                                     # a lone "Z" with no option letter
    ("A or Z", "A"),
    ("cannot determine the answer", None),          # refusals match case-sensitively
])
def test_mmbench_choice_extraction_follows_vlmevalkit(text, choice):
    assert extract_choice(text, OPTIONS) == choice


def test_mmbench_refusal_is_wrong_but_parsed():
    rotations = [{"A": "cat", "B": "dog"}, {"A": "dog", "B": "cat"}]
    items = [CircularItem(1, "A", rotations[0], "I'm sorry, but without the image provided I can't say"),
             CircularItem(1, "B", rotations[1], "B")]
    m = mmbench_metrics(items)
    assert (m["overall"], m["single_pass"], m["unparsed"]) == (0.0, 0.0, 0)
