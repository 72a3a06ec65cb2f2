"""Answer normalisation of the official VQA evaluation, VizWiz's copy of it, and the EvalAI answer processor.

All are reimplemented rule by rule (including their quirks) so scores equal the reference scorers:
- `vqa_process_punctuation` / `vqa_process_digit_article`: GT-Vision-Lab `vqaEval.py`;
- `VIZWIZ_CONTRACTIONS`: the contraction table of VizWiz's `vqaEval.py` (typographic apostrophes);
- `evalai_normalize`: the EvalAI answer processor LLaVA-1.5 applies to predictions before submission,
  and TextVQA's evaluator applies to predictions and ground truths.
"""

from __future__ import annotations

import re

# Official table, verbatim in content (it maps apostrophe-less forms to their contractions; the
# odd "somebody'd" -> "somebodyd" entry is the official one).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
# VizWiz's vqaEval.py carries GT-Vision-Lab's table as it was before the 2016 "apostrophe symbol" fix
# (commit 458a8b2): the same 120 entries, written with the typographic apostrophe U+2019 except for
# these values and keys, which have the ASCII one. So VizWiz turns a predicted "dont" into "don\u2019t".
_VIZWIZ_ASCII_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
_VIZWIZ_ASCII_KEYS = frozenset({"couldn'tve", "hadn'tve"})
_TYPOGRAPHIC_APOSTROPHE = "\u2019"


def _vizwiz_contractions() -> dict[str, str]:
    table = {}
    for key, value in CONTRACTIONS.items():
        new_key = key if key in _VIZWIZ_ASCII_KEYS else key.replace("'", _TYPOGRAPHIC_APOSTROPHE)
        new_value = value if key in _VIZWIZ_ASCII_VALUES else value.replace("'", _TYPOGRAPHIC_APOSTROPHE)
        table[new_key] = new_value
    return table


VIZWIZ_CONTRACTIONS: dict[str, str] = _vizwiz_contractions()
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
               "`", ",", "?", "!")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) lookahead that never
# fires before a ".", so in effect it drops every period not followed by a digit.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official code passes `re.UNICODE` (== 32) positionally as `count` to `sub`: at most 32
# periods are removed. Kept so very long answers score identically.
PERIOD_STRIP_COUNT = int(re.UNICODE)
VQA_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
EVALAI_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(,)+(?=\d)")


def _process_punctuation(text: str, comma_between_digits: re.Pattern) -> str:
    # Conditions are tested on the input text, replacements applied to the running output.
    strip_all = comma_between_digits.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if strip_all or (mark + " " in text) or (" " + mark in text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def vqa_process_punctuation(text: str) -> str:
    """`processPunctuation` of the official VQA evaluation."""
    return _process_punctuation(text, VQA_COMMA_BETWEEN_DIGITS)


def vqa_process_digit_article(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    """`processDigitArticle`: lowercase, number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(contractions.get(word, word) for word in words)


def vqa_clean_whitespace(text: str) -> str:
    """Tabs and newlines to spaces, then strip (the first step for every answer)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_normalize(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    """The full VQA normalisation: whitespace, punctuation, then digits/articles/contractions."""
    return vqa_process_digit_article(vqa_process_punctuation(vqa_clean_whitespace(text)), contractions)


def evalai_normalize(text: str) -> str:
    """The EvalAI answer processor (LLaVA's `EvalAIAnswerProcessor.__call__`)."""
    # Its tokenizer step: lowercase, drop every comma and question mark, split off "'s".
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = vqa_clean_whitespace(text)
    text = _process_punctuation(text, EVALAI_COMMA_BETWEEN_DIGITS)
    return vqa_process_digit_article(text)
