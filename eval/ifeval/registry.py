"""The supported instruction ids, their check functions, and validation of their kwargs.

Every argument is required: where the reference would draw a random value for a missing or
out-of-range argument, we raise ``InstructionArgumentError`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eval.ifeval import checks
from eval.ifeval.errors import InstructionArgumentError, UnknownInstruction

# ISO 639-1 codes accepted by language:response_language (the reference's LANGUAGE_CODES).
LANGUAGE_CODES = (
    "en", "es", "pt", "ar", "hi", "fr", "ru", "de", "ja", "it", "bn", "uk", "th", "ur", "ta",
    "te", "bg", "ko", "pl", "he", "fa", "vi", "ne", "sw", "kn", "mr", "gu", "pa", "ml", "fi",
)

Validator = Callable[[Any], str | None]  # returns a problem description, or None when fine


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def any_int(value: Any) -> str | None:
    """Any integer (the reference keeps negatives for this argument)."""
    return None if _is_int(value) else f"must be an int, got {value!r}"


def count(value: Any) -> str | None:
    """An integer >= 0 (the reference replaces a negative one with a random value)."""
    if not _is_int(value):
        return f"must be an int, got {value!r}"
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def relation(value: Any) -> str | None:
    """One of "less than" / "at least"."""
    return None if value in checks.RELATIONS else f"must be one of {checks.RELATIONS}, got {value!r}"


def string(value: Any) -> str | None:
    """Any string, the empty one included."""
    return None if isinstance(value, str) else f"must be a string, got {value!r}"


def nonempty_string(value: Any) -> str | None:
    """A non-empty string (the reference replaces an empty one with a random value)."""
    return string(value) or (None if value else "must not be empty")


def word_list(value: Any) -> str | None:
    """A non-empty list of strings (the reference replaces an empty list with random words)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        return f"must be a list of strings, got {value!r}"
    return None if value else "must not be empty"


def letter(value: Any) -> str | None:
    """A single character (the reference replaces anything else with a random letter)."""
    return string(value) or (None if len(value) == 1 else f"must be one character, got {value!r}")


def language(value: Any) -> str | None:
    """A code of ``LANGUAGE_CODES`` (the reference fails with KeyError on others)."""
    return None if value in LANGUAGE_CODES else f"must be one of {LANGUAGE_CODES}, got {value!r}"


@dataclass(frozen=True)
class Instruction:
    """An instruction id's rule and the validators of its (all required) kwargs."""

    check: Callable[..., bool]
    params: dict[str, Validator]


INSTRUCTIONS: dict[str, Instruction] = {
    "keywords:existence": Instruction(checks.keywords_existence, {"keywords": word_list}),
    "keywords:frequency": Instruction(
        checks.keywords_frequency, {"keyword": nonempty_string, "frequency": count, "relation": relation}),
    "keywords:forbidden_words": Instruction(checks.keywords_forbidden_words, {"forbidden_words": word_list}),
    "keywords:letter_frequency": Instruction(
        checks.keywords_letter_frequency, {"letter": letter, "let_frequency": count, "let_relation": relation}),
    "language:response_language": Instruction(checks.language_response_language, {"language": language}),
    "length_constraints:number_sentences": Instruction(
        checks.length_number_sentences, {"num_sentences": count, "relation": relation}),
    "length_constraints:number_paragraphs": Instruction(
        checks.length_number_paragraphs, {"num_paragraphs": count}),
    "length_constraints:number_words": Instruction(
        checks.length_number_words, {"num_words": count, "relation": relation}),
    "length_constraints:nth_paragraph_first_word": Instruction(
        checks.length_nth_paragraph_first_word,
        {"num_paragraphs": count, "nth_paragraph": count, "first_word": string}),
    "detectable_content:number_placeholders": Instruction(
        checks.content_number_placeholders, {"num_placeholders": count}),
    "detectable_content:postscript": Instruction(checks.content_postscript, {"postscript_marker": string}),
    "detectable_format:number_bullet_lists": Instruction(
        checks.format_number_bullet_lists, {"num_bullets": count}),
    "detectable_format:constrained_response": Instruction(checks.format_constrained_response, {}),
    "detectable_format:number_highlighted_sections": Instruction(
        checks.format_number_highlighted_sections, {"num_highlights": count}),
    "detectable_format:multiple_sections": Instruction(
        checks.format_multiple_sections, {"section_spliter": string, "num_sections": count}),
    "detectable_format:json_format": Instruction(checks.format_json_format, {}),
    "detectable_format:title": Instruction(checks.format_title, {}),
    "combination:two_responses": Instruction(checks.combination_two_responses, {}),
    "combination:repeat_prompt": Instruction(
        checks.combination_repeat_prompt, {"prompt_to_repeat": nonempty_string}),
    "startend:end_checker": Instruction(checks.startend_end_checker, {"end_phrase": string}),
    "startend:quotation": Instruction(checks.startend_quotation, {}),
    "change_case:capital_word_frequency": Instruction(
        checks.change_case_capital_word_frequency, {"capital_frequency": any_int, "capital_relation": relation}),
    "change_case:english_capital": Instruction(checks.change_case_english_capital, {}),
    "change_case:english_lowercase": Instruction(checks.change_case_english_lowercase, {}),
    "punctuation:no_comma": Instruction(checks.punctuation_no_comma, {}),
}

INSTRUCTION_IDS: tuple[str, ...] = tuple(INSTRUCTIONS)


def lookup(instruction_id: str) -> Instruction:
    """The registered instruction, or ``UnknownInstruction``."""
    try:
        return INSTRUCTIONS[instruction_id]
    except (KeyError, TypeError):
        raise UnknownInstruction(instruction_id) from None


def _check_nth_paragraph(instruction_id: str, kwargs: dict) -> None:
    """nth_paragraph must lie in 1..num_paragraphs (the reference draws a random one otherwise)."""
    nth, total = kwargs["nth_paragraph"], kwargs["num_paragraphs"]
    if not 1 <= nth <= total:
        raise InstructionArgumentError(instruction_id, "nth_paragraph", f"must be in 1..{total}, got {nth}")


def validate(instruction_id: str, kwargs: dict) -> Instruction:
    """Look the id up and check that ``kwargs`` has exactly its keys, each with a valid value."""
    instruction = lookup(instruction_id)
    for key in kwargs:
        if key not in instruction.params:
            raise InstructionArgumentError(instruction_id, key, f"is not an argument (expected {sorted(instruction.params)})")
    for key, validator in instruction.params.items():
        if key not in kwargs:
            raise InstructionArgumentError(instruction_id, key, "is missing")
        problem = validator(kwargs[key])
        if problem:
            raise InstructionArgumentError(instruction_id, key, problem)
    if instruction_id == "length_constraints:nth_paragraph_first_word":
        _check_nth_paragraph(instruction_id, kwargs)
    return instruction
