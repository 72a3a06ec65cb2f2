"""One function per IFEval instruction: ``check(response, **kwargs) -> bool``.

Each docstring states the rule as the reference applies it. Arguments arrive validated
(see ``registry``); normalisations the reference makes while building an instruction
(stripping, lower-casing) are done here, next to the rule that depends on them.
Patterns taken from kwargs (keywords, section splitter, postscript marker) are used as
regular expressions, unescaped, exactly as the reference does.
"""

from __future__ import annotations

import collections
import json
import re

from langdetect import LangDetectException

from eval.ifeval import text

LESS_THAN = "less than"
AT_LEAST = "at least"
RELATIONS = (LESS_THAN, AT_LEAST)

CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _holds(count: int, relation: str, threshold: int) -> bool:
    """``count < threshold`` for "less than", ``count >= threshold`` for "at least"."""
    return count < threshold if relation == LESS_THAN else count >= threshold


# --- keywords ---------------------------------------------------------------------------

def keywords_existence(response: str, *, keywords: list[str]) -> bool:
    """Every keyword (a regex) is found somewhere in the response, ignoring case."""
    return all(re.search(keyword, response, flags=re.IGNORECASE) for keyword in sorted(keywords))


def keywords_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """Non-overlapping case-insensitive matches of the stripped keyword compared with ``frequency``."""
    count = len(re.findall(keyword.strip(), response, flags=re.IGNORECASE))
    return _holds(count, relation, frequency)


def keywords_forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """No forbidden word occurs as a whole word (``\\bword\\b``), ignoring case."""
    return not any(re.search(r"\b" + word + r"\b", response, flags=re.IGNORECASE)
                   for word in sorted(set(forbidden_words)))


def keywords_letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Occurrences of the (stripped, lower-cased) letter in the lower-cased response vs ``let_frequency``."""
    count = collections.Counter(response.lower())[letter.strip().lower()]
    return _holds(count, let_relation, let_frequency)


# --- language and case ------------------------------------------------------------------

def _language_is(response: str, language: str) -> bool:
    """langdetect's verdict equals ``language``; text it cannot classify counts as followed."""
    try:
        return text.detect_language(response) == language
    except LangDetectException:
        return True


def language_response_language(response: str, *, language: str) -> bool:
    """The whole response is detected as ``language`` (an ISO 639-1 code)."""
    return _language_is(response, language)


def change_case_english_capital(response: str) -> bool:
    """``str.isupper()`` holds and the response is detected as English."""
    return response.isupper() and _language_is(response, "en")


def change_case_english_lowercase(response: str) -> bool:
    """``str.islower()`` holds and the response is detected as English."""
    return response.islower() and _language_is(response, "en")


def change_case_capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """Number of all-capital tokens (``nltk.word_tokenize`` tokens with ``isupper()``) vs the threshold."""
    count = sum(1 for token in text.word_tokens(response) if token.isupper())
    return _holds(count, capital_relation, capital_frequency)


# --- length -----------------------------------------------------------------------------

def length_number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    """English Punkt sentence count vs ``num_sentences``."""
    return _holds(text.count_sentences(response), relation, num_sentences)


def length_number_words(response: str, *, num_words: int, relation: str) -> bool:
    """``\\w+`` word count vs ``num_words``."""
    return _holds(text.count_words(response), relation, num_words)


def length_number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` pieces between ``***`` dividers (each may eat one blank around it).

    Blank pieces before the first or after the last divider are ignored; a blank piece between
    two dividers fails the check.
    """
    pieces = re.split(r"\s?\*\*\*\s?", response)
    count = len(pieces)
    for index, piece in enumerate(pieces):
        if piece.strip():
            continue
        if index not in (0, len(pieces) - 1):
            return False
        count -= 1
    return count == num_paragraphs


def _first_word(paragraph: str) -> str:
    """First whitespace token without leading quotes, cut at the first of ``.,?!'"``, lower-cased."""
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    letters = []
    for char in word:
        if char in ".,?!'\"":
            break
        letters.append(char.lower())
    return "".join(letters)


def length_nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int,
                                    first_word: str) -> bool:
    """Paragraphs are split on ``\\n\\n``; the non-blank count must equal ``num_paragraphs`` and
    piece number ``nth_paragraph`` (1-based, counted among all pieces, blank ones included) must be
    non-blank and start with ``first_word`` (compared lower-cased).
    """
    pieces = re.split(r"\n\n", response)
    count = sum(1 for piece in pieces if piece.strip())
    if nth_paragraph > count:
        return False
    paragraph = pieces[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    return count == num_paragraphs and _first_word(paragraph) == first_word.lower()


# --- detectable content -----------------------------------------------------------------

def content_number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least ``num_placeholders`` square-bracket spans ``[...]`` (shortest, one line)."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def _postscript_pattern(marker: str) -> str:
    if marker == "P.P.S":
        return r"\s*p\.\s?p\.\s?s.*$"
    if marker == "P.S.":
        return r"\s*p\.\s?s\..*$"
    return r"\s*" + marker.lower() + r".*$"


def content_postscript(response: str, *, postscript_marker: str) -> bool:
    """The lower-cased response contains the (stripped) marker; "P.S." and "P.P.S" also match
    with a blank after each dot ("p. s.", "p. p. s").
    """
    pattern = _postscript_pattern(postscript_marker.strip())
    return bool(re.search(pattern, response.lower(), flags=re.MULTILINE))


# --- detectable format ------------------------------------------------------------------

def format_number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` lines that start (after blanks) with ``*`` not followed by ``*``, or with ``-``."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def format_constrained_response(response: str) -> bool:
    """The response contains one of "My answer is yes.", "My answer is no.", "My answer is maybe."."""
    stripped = response.strip()
    return any(option in stripped for option in CONSTRAINED_OPTIONS)


def _is_highlight(span: str) -> bool:
    return bool(span.strip("*").strip())


def format_number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least ``num_highlights`` highlights: each non-blank ``*text*`` on one line counts, and each
    non-blank ``**text**`` counts once more.
    """
    singles = re.findall(r"\*[^\n\*]*\*", response)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
    count = sum(1 for span in singles if _is_highlight(span))
    count += sum(1 for span in doubles if span.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def format_multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least ``num_sections`` occurrences of "<splitter> <number>" (the splitter is a regex)."""
    pattern = r"\s?" + section_spliter.strip() + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def format_json_format(response: str) -> bool:
    """The stripped response, minus one leading ```json/```Json/```JSON/``` fence and one trailing
    ``` fence, parses with ``json.loads``.
    """
    body = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # an answer nested past the recursion limit is not JSON either
        return False
    return True


def format_title(response: str) -> bool:
    """Some ``<<...>>`` on one line has non-blank text inside."""
    titles = re.findall(r"<<[^\n]+>>", response)
    return any(title.lstrip("<").rstrip(">").strip() for title in titles)


# --- combination, start/end, punctuation ------------------------------------------------

def combination_two_responses(response: str) -> bool:
    """Split on ``******``: exactly two non-blank parts that differ after stripping; only the first
    or last part may be blank.
    """
    parts = response.split("******")
    answers = []
    for index, part in enumerate(parts):
        if part.strip():
            answers.append(part)
        elif index not in (0, len(parts) - 1):
            return False
    return len(answers) == 2 and answers[0].strip() != answers[1].strip()


def combination_repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """The stripped, lower-cased response starts with the stripped, lower-cased ``prompt_to_repeat``."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def startend_end_checker(response: str, *, end_phrase: str) -> bool:
    """The response, stripped of blanks then of double quotes, ends with ``end_phrase`` (case-insensitive)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def startend_quotation(response: str) -> bool:
    """The stripped response is at least two characters and starts and ends with ``"``."""
    stripped = response.strip()
    return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


def punctuation_no_comma(response: str) -> bool:
    """No ASCII comma anywhere."""
    return "," not in response
