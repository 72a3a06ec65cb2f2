"""IFEval instruction checkers, verdict-for-verdict equal to Google's reference.

Public API::

    INSTRUCTION_IDS            every supported instruction id (all 25 ids of the reference registry)
    UnknownInstruction         KeyError: the id is not supported
    InstructionArgumentError   ValueError: kwargs miss a required key, carry an unknown key,
                               or hold a value of the wrong type/range (message names id and key)
    clean_kwargs(kwargs)       drop the None padding of the Hugging Face layout (keeps 0, "", [])
    check_response(instruction_ids, kwargs_list, prompt, response) -> (strict, loose)

``strict[i]`` is the reference's ``test_instruction_following_strict`` verdict for instruction i
(a blank response never follows); ``loose[i]`` is ``test_instruction_following_loose``: any of
the response, the response without its first line, last line or both (stripped), and those four
with every ``*`` removed, follows.

Supported ids: keywords:existence, keywords:frequency, keywords:forbidden_words,
keywords:letter_frequency, language:response_language, length_constraints:number_sentences,
length_constraints:number_paragraphs, length_constraints:number_words,
length_constraints:nth_paragraph_first_word, detectable_content:number_placeholders,
detectable_content:postscript, detectable_format:number_bullet_lists,
detectable_format:constrained_response, detectable_format:number_highlighted_sections,
detectable_format:multiple_sections, detectable_format:json_format, detectable_format:title,
combination:two_responses, combination:repeat_prompt, startend:end_checker, startend:quotation,
change_case:capital_word_frequency, change_case:english_capital, change_case:english_lowercase,
punctuation:no_comma. Left out: none. (The reference's classes that its registry comments out --
keywords:key_sentences, detectable_content:rephrase_paragraph, detectable_format:rephrase,
multi-turn:constrained_start -- are not instruction ids of IFEval and are not provided.)

See ``README.md`` beside this file for the reference (repository, path, commit), the sentence
splitter and every known deviation.
"""

from eval.ifeval.errors import InstructionArgumentError, UnknownInstruction
from eval.ifeval.evaluate import check_response, clean_kwargs, loose_variants
from eval.ifeval.registry import INSTRUCTION_IDS

__all__ = [
    "INSTRUCTION_IDS",
    "InstructionArgumentError",
    "UnknownInstruction",
    "check_response",
    "clean_kwargs",
    "loose_variants",
]
