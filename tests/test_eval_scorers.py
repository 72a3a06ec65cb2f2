"""Scorers against hand-derived golden values, including the reference implementations' quirks."""

import pytest

from eval.scoring.choice import (ChoiceItem, CircularItem, extract_choice, mmbench_metrics, scienceqa_metrics,
                                 scienceqa_parse, seed_metrics)
from eval.scoring.gqa import GQAItem, gqa_metrics
from eval.scoring.vqa import VQAItem, leave_one_out_accuracy, textvqa_metrics, vqa_metrics, vqa_question_accuracy
from eval.scoring.yesno import MMEItem, YesNoItem, mme_metrics, mme_parse, pope_answer_is_yes, pope_metrics


def test_leave_one_out_matches_formula():
    # 3 of 10 say "2": left-out "2" -> 2 others -> 2/3; left-out other -> 3 -> 1. (3*2/3 + 7)/10 = 0.9
    assert leave_one_out_accuracy(["2"] * 3 + ["3"] * 7, "2") == pytest.approx(0.9)
    # 1 match: 9 * (1/3) / 10 = 0.3; 2 matches: (2*(1/3) + 8*(2/3)) / 10 = 0.6
    assert leave_one_out_accuracy(["cat"] + ["dog"] * 9, "cat") == pytest.approx(0.3)
    assert leave_one_out_accuracy(["cat"] * 2 + ["dog"] * 8, "cat") == pytest.approx(0.6)
    assert leave_one_out_accuracy(["dog"] * 10, "cat") == 0.0


def test_prediction_always_normalised():
    assert vqa_question_accuracy(["2"] * 3 + ["3"] * 7, "Two") == pytest.approx(0.9)


def test_unanimous_ground_truth_is_left_raw():
    # All ten say "t-shirt": ground truths untouched, prediction becomes "t shirt" -> no match.
    assert vqa_question_accuracy(["t-shirt"] * 10, "t-shirt") == 0.0
    # One dissenter: ground truths get the punctuation step too -> "t shirt" x 9 -> full credit.
    assert vqa_question_accuracy(["t-shirt"] * 9 + ["shirt"], "t-shirt") == 1.0
    # VizWiz never normalises ground truths.
    assert vqa_question_accuracy(["t-shirt"] * 9 + ["shirt"], "t-shirt", normalize_gt=False) == 0.0


def test_ground_truth_gets_punctuation_but_not_digit_article_step():
    # GT "two" is never mapped to "2", while the prediction "two" is.
    assert vqa_question_accuracy(["two"] * 5 + ["2"] * 5, "two") == pytest.approx(1.0)  # 5 "2"s match
    assert vqa_question_accuracy(["two"] * 9 + ["2"], "two") == pytest.approx(0.3)


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
    # the VQAv2 path leaves the unanimous "Coca-Cola" raw, so it scores 0 there
    assert vqa_metrics(items[:1])["overall"] == 0.0


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
