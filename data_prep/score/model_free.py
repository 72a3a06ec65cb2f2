"""Model-free columns: perceptual hashes of the images, a MinHash signature of the text, length counts.

Each scorer takes a batch of `ShardSample`s and returns one dict of columns per sample.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from data_prep.inspect_shards import ShardSample
from mm.chat import GPT, IMAGE_TOKEN

WORD = re.compile(r"\w+", re.UNICODE)
MINHASH_SCHEME = "affine32"  # datasketch >= 2.0's default, written out so a reader rebuilds the same hashes


def conversation_text(record: dict, image_token: str = IMAGE_TOKEN) -> str:
    """Every message's text (system, human and gpt), image placeholders removed, joined by newlines."""
    return "\n".join(m["value"].replace(image_token, " ") for m in record["conversations"])


def words(text: str) -> list[str]:
    """Lower-cased runs of word characters (``\\w+``): the unit of ``num_words`` and of the MinHash shingles."""
    return WORD.findall(text.lower())


def phash_hex(data: bytes) -> str:
    """The perceptual hash of an image (``imagehash.phash``, 8x8 = 64 bits) as 16 hex digits.

    pHash (Zauner 2010, "Implementation and Benchmarking of Perceptual Image Hash Functions"): the image is
    made grayscale and 32x32, its 2-D DCT taken, and each of the 64 lowest-frequency coefficients becomes
    one bit: above their median or not. Near-duplicates (re-encoded, resized, slightly edited) differ in
    few bits; the Hamming distance of two hashes (``imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)``)
    is the usual near-duplicate test (e.g. <= 8 of 64 bits). Images are decoded as ``mm.images.load_rgb``
    decodes them for training.
    """
    import imagehash

    from mm.images import load_rgb

    return str(imagehash.phash(load_rgb(data)))


@dataclass(frozen=True)
class MinHashSettings:
    """How the text signature is made; written beside every signature (``minhash_params``) so that
    ``datasketch.MinHash(num_perm, seed=seed, scheme=scheme, hashvalues=signature)`` rebuilds it."""

    num_perm: int = 128
    shingle_words: int = 3
    seed: int = 1
    scheme: str = MINHASH_SCHEME

    def as_dict(self) -> dict:
        return {"num_perm": self.num_perm, "shingle_words": self.shingle_words, "seed": self.seed,
                "scheme": self.scheme, "library": "datasketch"}  # fmt: skip


def shingles(tokens: Sequence[str], size: int) -> set[str]:
    """The distinct runs of ``size`` consecutive words (joined by a space); a text shorter than ``size``
    words is one shingle of all of them; no words, no shingles."""
    if not tokens:
        return set()
    if len(tokens) <= size:
        return {" ".join(tokens)}
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def minhash_signature(text: str, settings: MinHashSettings) -> list[int]:
    """MinHash (Broder 1997, "On the resemblance and containment of documents") of the text's word shingles.

    The fraction of equal positions of two signatures estimates the Jaccard similarity of their shingle sets
    (standard error ~ 1/sqrt(num_perm)); near-duplicate text dedup as in Lee et al. 2022, "Deduplicating
    Training Data Makes Language Models Better". ``datasketch.MinHash`` with ``settings``; each shingle is
    hashed as UTF-8. Identical texts (after lower-casing and word splitting) get identical signatures; a text
    without words gets datasketch's empty signature (every value 2**32 - 1).
    """
    from datasketch import MinHash

    minhash = MinHash(num_perm=settings.num_perm, seed=settings.seed, scheme=settings.scheme)
    for shingle in sorted(shingles(words(text), settings.shingle_words)):
        minhash.update(shingle.encode("utf-8"))
    return [int(v) for v in minhash.hashvalues]


class PHashScorer:
    """``phash``: a list of 16-hex-digit perceptual hashes, one per image in placeholder order ([] for text-only).
    An image that cannot be decoded gives ``phash: null`` and ``phash_error``."""

    metrics = ("phash",)

    def settings(self) -> dict:
        import imagehash

        return {"phash": {"library": "imagehash", "version": getattr(imagehash, "__version__", "?"), "hash_size": 8}}

    def score(self, samples: Sequence[ShardSample]) -> list[dict]:
        rows = []
        for sample in samples:
            try:
                rows.append({"phash": [phash_hex(data) for data in sample.images]})
            except Exception as error:  # noqa: BLE001 - PIL raises many kinds for a bad image
                rows.append({"phash": None, "phash_error": f"bad_image: {error}"})
        return rows


class MinHashScorer:
    """``minhash``: the MinHash signature (list of ints) of the conversation text (``conversation_text``),
    with ``minhash_params`` (``MinHashSettings.as_dict``) on the same line."""

    metrics = ("minhash",)

    def __init__(self, settings: MinHashSettings, image_token: str = IMAGE_TOKEN):
        if settings.num_perm < 1 or settings.shingle_words < 1:
            raise ValueError("--minhash-perm and --minhash-shingle must be at least 1")
        self.minhash = settings
        self.image_token = image_token

    def settings(self) -> dict:
        return {"minhash": self.minhash.as_dict()}

    def score(self, samples: Sequence[ShardSample]) -> list[dict]:
        params = self.minhash.as_dict()
        return [{"minhash": minhash_signature(conversation_text(s.record, self.image_token), self.minhash),
                 "minhash_params": params} for s in samples]  # fmt: skip


class LengthScorer:
    """``length``: plain-number columns

    - ``num_words``: words (``\\w+`` runs) of all messages, placeholders removed;
    - ``num_turns``: assistant (gpt) messages;
    - ``num_images``: images of the sample;
    - ``num_tokens`` (only with a tokenizer): tokens of all messages' texts, each message tokenised alone
      without special tokens and placeholders left in (what ``mm-prep inspect --tokenizer`` counts): no chat
      template and no image-token expansion, so it does not depend on the model's vision tower.
    """

    metrics = ("length",)

    def __init__(self, tokenizer=None, tokenizer_name: str | None = None, image_token: str = IMAGE_TOKEN):
        self.tokenizer = tokenizer
        self.tokenizer_name = tokenizer_name
        self.image_token = image_token

    def settings(self) -> dict:
        return {"length": {"tokenizer": self.tokenizer_name}}

    def score(self, samples: Sequence[ShardSample]) -> list[dict]:
        rows = []
        for sample in samples:
            conversation = sample.record["conversations"]
            row = {"num_words": len(words(conversation_text(sample.record, self.image_token))),
                   "num_turns": sum(m["from"] == GPT for m in conversation), "num_images": len(sample.images)}  # fmt: skip
            if self.tokenizer is not None:
                row["num_tokens"] = sum(len(self.tokenizer(m["value"], add_special_tokens=False)["input_ids"])
                                        for m in conversation)  # fmt: skip
            rows.append(row)
        return rows

