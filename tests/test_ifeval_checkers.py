"""eval.ifeval: verdicts equal to Google's IFEval reference on a golden corpus, plus API behaviour.

The golden verdicts (tests/fixtures/ifeval/golden.jsonl) were produced by running the reference
code itself on tests/fixtures/ifeval/cases.jsonl; see bench/ifeval_reference_golden.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.ifeval import (
    INSTRUCTION_IDS,
    InstructionArgumentError,
    UnknownInstruction,
    check_response,
    checks,
    clean_kwargs,
    loose_variants,
    registry,
    text,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ifeval"


def _read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


CASES = {case["id"]: case for case in _read_jsonl("cases.jsonl")}
GOLDEN_META, *GOLDEN = _read_jsonl("golden.jsonl")


def test_golden_covers_every_instruction_id_and_every_case():
    assert set(CASES) == {record["id"] for record in GOLDEN}
    assert GOLDEN_META["meta"]["cases"] == len(CASES)
    covered = {iid for case in CASES.values() for iid in case["instruction_ids"]}
    assert covered == set(INSTRUCTION_IDS)
    outcomes = {(iid, s, lo) for record in GOLDEN if "error" not in record
                for iid, s, lo in zip(CASES[record["id"]]["instruction_ids"], record["strict"], record["loose"])}
    for iid in INSTRUCTION_IDS:  # each id has a passing and a failing case, most a loose-only pass
        assert (iid, True, True) in outcomes and (iid, False, False) in outcomes, iid


def _mismatches(pad_with_none: bool) -> list[str]:
    all_keys = {key for ins in registry.INSTRUCTIONS.values() for key in ins.params}
    wrong = []
    for record in GOLDEN:
        case = CASES[record["id"]]
        kwargs = case["kwargs"]
        if pad_with_none:  # the Hugging Face layout: every key present, unused ones None
            kwargs = [{key: None for key in all_keys} | kw for kw in kwargs]
        args = (case["instruction_ids"], kwargs, case["prompt"], case["response"])
        if "error" in record:
            try:
                check_response(*args)
            except ValueError:
                continue
            wrong.append(f"{record['id']}: reference raised {record['error']}, we did not")
            continue
        got = check_response(*args)
        if got != (record["strict"], record["loose"]):
            wrong.append(f"{record['id']}: got {got}, reference {record['strict'], record['loose']}: "
                         f"{case['response']!r}")
    return wrong


def test_check_response_equals_reference_on_every_golden_case():
    wrong = _mismatches(pad_with_none=False)
    assert not wrong, f"{len(wrong)} mismatches:\n" + "\n".join(wrong[:20])


def test_hugging_face_none_padding_gives_the_same_verdicts():
    assert not _mismatches(pad_with_none=True)


def test_golden_comparison_can_fail(monkeypatch):
    """A checker broken on purpose is caught by the golden comparison."""
    broken = registry.Instruction(lambda response: "," in response, {})
    monkeypatch.setitem(registry.INSTRUCTIONS, "punctuation:no_comma", broken)
    assert _mismatches(pad_with_none=False)


# --- clean_kwargs and errors --------------------------------------------------------------

def test_clean_kwargs_drops_none_only():
    assert clean_kwargs({"a": None, "b": 0, "c": "", "d": [], "e": False, "f": 3}) == \
        {"b": 0, "c": "", "d": [], "e": False, "f": 3}
    assert clean_kwargs(None) == {}
    assert clean_kwargs({}) == {}


def test_zero_is_kept_as_a_real_argument():
    # num_highlights=0 is "at least 0": followed; dropping the 0 would make the key missing.
    assert check_response(["detectable_format:number_highlighted_sections"], [{"num_highlights": 0}],
                          "p", "plain") == ([True], [True])


def test_unknown_instruction():
    with pytest.raises(UnknownInstruction) as info:
        check_response(["keywords:key_sentences"], [{}], "p", "r")
    assert isinstance(info.value, KeyError) and "keywords:key_sentences" in str(info.value)


@pytest.mark.parametrize("iid, kwargs, key", [
    ("length_constraints:number_words", {"relation": "at least"}, "num_words"),           # missing
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least", "x": 1}, "x"),  # unknown
    ("length_constraints:number_words", {"num_words": "3", "relation": "at least"}, "num_words"),  # type
    ("length_constraints:number_words", {"num_words": True, "relation": "at least"}, "num_words"),
    ("length_constraints:number_words", {"num_words": -1, "relation": "at least"}, "num_words"),  # random in ref
    ("length_constraints:number_words", {"num_words": 3, "relation": "at most"}, "relation"),
    ("keywords:existence", {"keywords": []}, "keywords"),
    ("keywords:existence", {"keywords": "cat"}, "keywords"),
    ("keywords:frequency", {"keyword": "", "frequency": 1, "relation": "at least"}, "keyword"),
    ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": "at least"}, "letter"),
    ("language:response_language", {"language": "xx"}, "language"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"}, "nth_paragraph"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 0, "first_word": "a"}, "nth_paragraph"),
    ("combination:repeat_prompt", {}, "prompt_to_repeat"),
    ("punctuation:no_comma", {"anything": 1}, "anything"),
])
def test_instruction_argument_error_names_id_and_key(iid, kwargs, key):
    with pytest.raises(InstructionArgumentError) as info:
        check_response([iid], [kwargs], "p", "some response")
    assert isinstance(info.value, ValueError)
    assert iid in str(info.value) and repr(key) in str(info.value)
    assert (info.value.instruction_id, info.value.key) == (iid, key)


def test_kwargs_list_length_must_match():
    with pytest.raises(InstructionArgumentError):
        check_response(["punctuation:no_comma"], [], "p", "r")


def test_every_registered_id_has_a_checker():
    assert len(INSTRUCTION_IDS) == 25 == len(set(INSTRUCTION_IDS))


# --- semantics worth pinning beyond the golden data ---------------------------------------

def test_blank_response_fails_strict_and_loose():
    assert check_response(["punctuation:no_comma"], [{}], "p", "  \n ") == ([False], [False])


def test_loose_sees_through_first_and_last_line_and_stars():
    variants = loose_variants("Sure:\n*body*\nBye")
    assert variants == ["Sure:\n*body*\nBye", "Sure:\nbody\nBye", "*body*\nBye", "Sure:\n*body*", "*body*",
                        "body\nBye", "Sure:\nbody", "body"]
    assert check_response(["startend:quotation"], [{}], "p", 'Here:\n"quoted"\nEnd') == ([False], [True])


def test_prompt_argument_never_changes_a_verdict():
    # The reference passes the prompt only to instructions with an argument named "prompt"; none has one.
    ids, kwargs = ["combination:repeat_prompt"], [{"prompt_to_repeat": "Say hi."}]
    assert check_response(ids, kwargs, "Say hi.", "Say hi. Hi!") == check_response(ids, kwargs, "other", "Say hi. Hi!")


def test_letter_frequency_accepts_a_non_ascii_letter_as_google_does():
    assert check_response(["keywords:letter_frequency"], [{"letter": "é", "let_frequency": 2, "let_relation": "at least"}],
                          "p", "Été élevé") == ([True], [True])


def test_language_detection_is_seeded_and_leaves_global_state_alone():
    import langdetect

    before = langdetect.DetectorFactory.seed
    short = "ok ja"  # an ambiguous text: unseeded detection would vary
    assert len({text.detect_language(short) for _ in range(5)}) == 1
    assert langdetect.DetectorFactory.seed == before
    assert checks.language_response_language("12345 !!!", language="de") is True  # undetectable: followed


# --- the sentence splitter (English Punkt through NLTK) -----------------------------------

@pytest.mark.parametrize("passage, expected", [
    ("Dr. Smith went home. He was tired.", ["Dr. Smith went home.", "He was tired."]),
    ("Mr. and Mrs. Brown left at 5 p.m. yesterday. They were late.",
     ["Mr. and Mrs. Brown left at 5 p.m. yesterday.", "They were late."]),
    ("Wait... what? No way!", ["Wait... what?", "No way!"]),
    ("It costs $3.50 today. Tomorrow more.", ["It costs $3.50 today.", "Tomorrow more."]),
    ("He said \"Stop.\" Then he left.", ["He said \"Stop.\"", "Then he left."]),
    ("no terminal punctuation\nsecond line", ["no terminal punctuation\nsecond line"]),
    ("See e.g. the appendix. It helps.", ["See e.g.", "the appendix.", "It helps."]),
    ("", []),
])
def test_sentence_splitter_matches_english_punkt(passage, expected):
    assert text.split_sentences(passage) == expected


def test_punkt_model_is_nltks_english_model():
    params = text.sentence_splitter()._params
    assert {"dr", "mr", "mrs", "u.s", "jan", "inc"} <= params.abbrev_types
    assert len(params.abbrev_types) == 156 and len(params.ortho_context) > 20000


def test_word_tokens_follow_nltk_word_tokenize():
    assert text.word_tokens("I think U.S.A. is big. OK?") == ["I", "think", "U.S.A.", "is", "big", ".", "OK", "?"]
    assert text.count_words("don't well-known naïve_x 42") == 6
