"""Odd cases of the official VQA normalisation, VizWiz's copy and the EvalAI answer processor (hand-derived)."""

import pytest

from eval.scoring.normalize import (CONTRACTIONS, VIZWIZ_CONTRACTIONS, evalai_normalize, vqa_normalize,
                                    vqa_process_digit_article, vqa_process_punctuation)


@pytest.mark.parametrize("text, expected", [
    ("Two dogs", "2 dogs"),          # number words become digits
    ("none", "0"),
    ("eleven", "eleven"),            # only zero..ten are mapped
    ("the dog", "dog"),              # articles dropped
    ("A Cat", "cat"),                # lowercased, then article dropped
    ("dont", "don't"),               # contractions restored
    ("I dont know", "i don't know"),
    ("Im", "im"),                    # lowercased before lookup, so the table's "Im" never matches
    ("yes.", "yes"),                 # trailing period stripped
    ("3.5", "3.5"),                  # a period followed by a digit stays
    ("1,000", "1000"),               # digit,digit: every punctuation mark removed
    ("1,000 dogs!", "1000 dogs"),
    ("hello, world", "hello world"),  # ", " next to a space: removed, not spaced
    ("t-shirt", "t shirt"),           # no space around "-": replaced by a space
    ("a-b", "b"),                     # ... which can expose an article ("a b" -> "b")
    ("What?", "what"),
    ("(yes)", "yes"),
    ("man's hat", "man's hat"),       # apostrophes are not punctuation here
    ("  yes\tno\n", "yes no"),        # tabs/newlines to spaces, stripped
])
def test_vqa_normalisation(text, expected):
    assert vqa_normalize(text) == expected


def test_punctuation_conditions_are_tested_on_the_input():
    # "/" has no space beside it, but "," does: "," is removed, "/" becomes a space.
    assert vqa_process_punctuation("red/blue, green") == "red blue green"
    # A digit,digit anywhere switches every mark to removal.
    assert vqa_process_punctuation("a/b 1,2") == "ab 12"
    # Punctuation alone does not lowercase or map digits.
    assert vqa_process_punctuation("Two.") == "Two"


def test_at_most_32_periods_are_stripped():
    # The official code passes re.UNICODE (32) as sub()'s count.
    assert vqa_process_punctuation("." * 40) == "." * 8


def test_digit_article_does_not_touch_punctuation():
    assert vqa_process_digit_article("The Two-tone") == "two-tone"


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"),
    ("Two", "2"),
    ("1,000", "1000"),
    ("1,,000", "1000"),          # all commas dropped by its tokenizer step
    ("man's hat", "man 's hat"),  # "'s" split off
    ("Why?", "why"),
    ("Coca-Cola", "coca cola"),
    ("an apple", "apple"),
    ("dont", "don't"),
    ("The answer\nis: 3", "answer is: 3"),  # ":" is not in the punctuation list
])
def test_evalai_processor(text, expected):
    assert evalai_normalize(text) == expected


def test_vizwiz_contraction_table_has_typographic_apostrophes():
    # Entries as written in VizWiz's vqaEval.py (U+2019 = \u2019), including its ASCII leftovers.
    assert len(VIZWIZ_CONTRACTIONS) == len(CONTRACTIONS) == 120
    assert VIZWIZ_CONTRACTIONS["dont"] == "don\u2019t"
    assert VIZWIZ_CONTRACTIONS["cant"] == "can't" and VIZWIZ_CONTRACTIONS["whove"] == "who've"
    assert VIZWIZ_CONTRACTIONS["couldn'tve"] == "couldn\u2019t\u2019ve"  # ASCII key, typographic value
    assert VIZWIZ_CONTRACTIONS["let\u2019s"] == "let\u2019s" and "let's" not in VIZWIZ_CONTRACTIONS
    assert VIZWIZ_CONTRACTIONS["twas"] == "\u2019twas"


@pytest.mark.parametrize("text, vqa, vizwiz", [
    ("dont know", "don't know", "don\u2019t know"),
    ("Whats that", "what's that", "what\u2019s that"),
    ("cant", "can't", "can't"),
    ("let's", "let's", "let's"),            # ASCII "let's" is no key of VizWiz's table
    ("let\u2019s", "let\u2019s", "let\u2019s"),
])
def test_vizwiz_normalisation_uses_its_own_table(text, vqa, vizwiz):
    assert vqa_normalize(text) == vqa
    assert vqa_normalize(text, VIZWIZ_CONTRACTIONS) == vizwiz
