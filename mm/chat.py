"""Conversations -> token ids and label masks, by chat template.

A template renders a LLaVA conversation into text pieces, each marked trained or not. The whole text is
tokenised once (so merges across piece borders are those the tokenizer really makes) and a token is
trained when its character span touches a trained piece. Each ``<image>`` token is then expanded to
``tokens_per_image`` copies, the positions the model fills with projected image features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

IGNORE_INDEX = -100
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_TOKEN = "<image>"
HUMAN, GPT, SYSTEM = "human", "gpt", "system"
# End-of-turn tokens of the common chat templates; generation stops at any the tokenizer knows.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

# Why a conversation breaks the contract: `ConversationError.reason`, also mm-prep's rejection reasons.
MALFORMED_RECORD = "malformed_record"
EMPTY_CONVERSATION = "empty_conversation"
UNKNOWN_ROLE = "unknown_role"
NON_ALTERNATING_ROLES = "non_alternating_roles"
EMPTY_MESSAGE = "empty_message"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
TEMPLATE_ERROR = "template_error"  # not the conversation's fault: the tokenizer's template cannot render it


class ConversationError(ValueError):
    """The conversation cannot be rendered; ``reason`` says why (one of the reason constants above)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SampleTooLong(ValueError):
    """The sample exceeds ``max_length`` and cannot be truncated without cutting an image."""


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    num_images: int


@dataclass
class Turn:
    role: str  # "system", "user" or "assistant" (the names Jinja chat templates use)
    text: str


# A rendered piece of text; ``trained`` pieces get labels.
Piece = tuple[str, bool]


def check_conversation(conversation: object, num_images: int | None = None, *, image_token: str = IMAGE_TOKEN,
                       prompt: bool = False) -> None:  # fmt: skip
    """Raise ``ConversationError`` unless ``conversation`` keeps the contract (ARCHITECTURE.md).

    The one rule set for mm-prep (which rejects such records) and the encoders: a list of
    ``{"from": "human"|"gpt"|"system", "value": non-empty str}`` (in a ``prompt`` a gpt turn may be empty: it
    is the model's own earlier answer, which evaluation and chat replay as given); after an optional leading system
    message, roles alternate human, gpt, ... and end with gpt (with human for a ``prompt``);
    ``image_token`` appears only in human turns, ``num_images`` times when that is given.
    """
    if not isinstance(conversation, list):
        raise ConversationError(MALFORMED_RECORD, "'conversations' is not a list")
    if not conversation:
        raise ConversationError(EMPTY_CONVERSATION, "'conversations' is empty")
    for turn, message in enumerate(conversation):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str) or "from" not in message:
            raise ConversationError(MALFORMED_RECORD, f"message {turn} is not {{'from': str, 'value': str}}")
        if message["from"] not in (HUMAN, GPT, SYSTEM):
            raise ConversationError(UNKNOWN_ROLE, f"message {turn} has role {message['from']!r}")
        if not message["value"].strip() and not (prompt and message["from"] == GPT):
            raise ConversationError(EMPTY_MESSAGE, f"message {turn} ({message['from']}) is empty")
    dialogue = conversation[1:] if conversation[0]["from"] == SYSTEM else conversation
    roles = [message["from"] for message in dialogue]
    last = HUMAN if prompt else GPT
    if not roles or roles != [(HUMAN, GPT)[turn % 2] for turn in range(len(roles))] or roles[-1] != last:
        raise ConversationError(NON_ALTERNATING_ROLES, f"roles {roles} are not human, gpt, ... ending with {last}")
    if any(image_token in message["value"] for message in conversation if message["from"] != HUMAN):
        raise ConversationError(IMAGE_COUNT_MISMATCH, f"{image_token} outside a human turn")
    placeholders = sum(message["value"].count(image_token) for message in dialogue)
    if num_images is not None and placeholders != num_images:
        raise ConversationError(IMAGE_COUNT_MISMATCH, f"{placeholders} {image_token} placeholders for {num_images} images")


_TURN_ROLES = {SYSTEM: "system", HUMAN: "user", GPT: "assistant"}


def to_turns(conversation: Sequence[dict], num_images: int | None = None, *, image_token: str = IMAGE_TOKEN,
             prompt: bool = False) -> list[Turn]:  # fmt: skip
    """A checked LLaVA conversation (see ``check_conversation``) -> turns with the template role names."""
    check_conversation(conversation, num_images, image_token=image_token, prompt=prompt)
    return [Turn(_TURN_ROLES[message["from"]], message["value"]) for message in conversation]


class ChatTemplate:
    """Renders turns to pieces. ``generation`` ends the text with the assistant's turn opening."""

    name = ""

    def render(self, turns: list[Turn], tokenizer, generation: bool) -> list[Piece]:
        raise NotImplementedError

    add_special_tokens = True  # let the tokenizer add BOS (templates that write it themselves say no)

    def jinja(self, tokenizer, image_token: str) -> str:
        """The same rules as the body of a Jinja chat template over ``mm_text`` (see ``jinja_template``)."""
        raise NotImplementedError


class VicunaV1(ChatTemplate):
    """LLaVA-1.5's ``vicuna_v1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``."""

    name = "vicuna_v1"

    def render(self, turns, tokenizer, generation):
        system = turns[0].text if turns[0].role == "system" else VICUNA_SYSTEM
        pieces: list[Piece] = [(system + " ", False)]
        for turn in turns:
            if turn.role == "user":
                pieces.append((f"USER: {turn.text} ASSISTANT:", False))
            elif turn.role == "assistant":
                pieces.append((" ", False))
                pieces.append((turn.text + tokenizer.eos_token, True))
        return pieces

    def jinja(self, tokenizer, image_token: str) -> str:
        return _lines(  # as render: system (or VICUNA_SYSTEM) + " ", "USER: q ASSISTANT:", " " + a + eos
            "{%- if messages[0]['role'] == 'system' -%}",
            "  {{- mm_text(messages[0]['content']) -}}",
            "{%- else -%}",
            "  " + _out(VICUNA_SYSTEM),
            "{%- endif -%}",
            _out(" "),
            "{%- for message in messages -%}",
            "  {%- if message['role'] == 'user' -%}",
            "    " + _out("USER: ") + "{{- mm_text(message['content']) -}}" + _out(" ASSISTANT:"),
            "  {%- elif message['role'] == 'assistant' -%}",
            "    " + _out(" ") + "{{- mm_text(message['content']) -}}" + _out(tokenizer.eos_token),
            "  {%- endif -%}",
            "{%- endfor -%}",
        )


class Plain(ChatTemplate):
    """LLaVA's stage-1 ``plain``: only the image placeholders of the user turn, then the caption."""

    name = "plain"

    def __init__(self, image_token: str = "<image>"):
        self.image_token = image_token

    def render(self, turns, tokenizer, generation):
        pieces: list[Piece] = []
        for turn in turns:
            if turn.role == "user":
                pieces.append((self.image_token * turn.text.count(self.image_token), False))
            elif turn.role == "assistant":
                pieces.append((turn.text + "\n", True))
        return pieces

    def jinja(self, tokenizer, image_token: str) -> str:
        image = _lit(image_token)
        return _lines(  # as render: only the user turn's image tokens, then the caption + "\n"
            "{%- for message in messages -%}",
            "  {%- if message['role'] == 'user' -%}",
            f"    {{{{- {image} * mm_text(message['content']).count({image}) -}}}}",
            "  {%- elif message['role'] == 'assistant' -%}",
            "    {{- mm_text(message['content']) -}}" + _out("\n"),
            "  {%- endif -%}",
            "{%- endfor -%}",
        )


class TokenizerChatTemplate(ChatTemplate):
    """The tokenizer's own Jinja chat template (Qwen2, Llama-3, ...).

    Assistant spans are found by rendering growing prefixes of the conversation: what a prefix ending
    in an assistant turn adds over the same prefix with a generation prompt is that turn's text and
    end-of-turn token (trailing whitespace is left untrained).
    """

    name = "chat_template"
    add_special_tokens = False

    def render(self, turns, tokenizer, generation):
        if not getattr(tokenizer, "chat_template", None):
            raise ConversationError(TEMPLATE_ERROR, "template 'chat_template' needs a tokenizer with a chat_template")
        messages = [{"role": t.role, "content": t.text} for t in turns]

        def text_of(count: int, prompt: bool) -> str:
            return tokenizer.apply_chat_template(messages[:count], tokenize=False, add_generation_prompt=prompt)

        pieces: list[Piece] = []
        done = ""
        for index, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            opened, closed = text_of(index, True), text_of(index + 1, False)
            if not (opened.startswith(done) and closed.startswith(opened)):
                raise ConversationError(TEMPLATE_ERROR, "the tokenizer's chat template is not prefix-stable across turns")
            answer = closed[len(opened):]
            trained = answer.rstrip()
            pieces += [(opened[len(done):], False), (trained, True), (answer[len(trained):], False)]
            done = closed
        final = text_of(len(turns), generation)
        if not final.startswith(done):
            raise ConversationError(TEMPLATE_ERROR, "the tokenizer's chat template is not prefix-stable across turns")
        pieces.append((final[len(done):], False))
        return pieces

    def jinja(self, tokenizer, image_token: str) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise ConversationError(TEMPLATE_ERROR, "template 'chat_template' needs a tokenizer with a chat_template")
        return _lines(  # as render: the tokenizer's own template, over the messages' contents as strings
            "{%- set mm = namespace(messages=[]) -%}",
            "{%- for message in messages -%}",
            "  {%- set text = mm_text(message['content']) -%}",
            "  {%- set mm.messages = mm.messages + [{'role': message['role'], 'content': text}] -%}",
            "{%- endfor -%}",
            # no "-" at the end: the tokenizer's template follows exactly as written
            "{%- set messages = mm.messages %}" + tokenizer.chat_template,
        )


TEMPLATES: dict[str, Callable[[str], ChatTemplate]] = {
    "vicuna_v1": lambda image_token: VicunaV1(),
    "plain": lambda image_token: Plain(image_token),
    "chat_template": lambda image_token: TokenizerChatTemplate(),
}


def get_template(name: str, image_token: str = "<image>") -> ChatTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; valid names: {sorted(TEMPLATES)}")
    return TEMPLATES[name](image_token)


def _image_token_id(tokenizer, image_token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {image_token!r} token; add it (the model does) before encoding")
    return token_id


def _tokenize(pieces: list[Piece], tokenizer, add_special_tokens: bool) -> tuple[list[int], list[bool]]:
    """Tokenise the joined pieces once; a token is trained when its span touches a trained piece."""
    text = "".join(piece for piece, _ in pieces)
    trained_chars = np.zeros(len(text) + 1, dtype=np.int64)
    position = 0
    for piece, trained in pieces:
        if trained:
            trained_chars[position + 1 : position + len(piece) + 1] = 1
        position += len(piece)
    covered = np.cumsum(trained_chars)
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    trained_tokens = [bool(covered[end] - covered[start] > 0) for start, end in encoding["offset_mapping"]]
    return list(encoding["input_ids"]), trained_tokens


def _expand_images(ids: list[int], trained: list[bool], image_id: int, tokens_per_image: int | Sequence[int]):
    """Each image token repeated as many times as its image has placeholders: `tokens_per_image` for every
    image, or one count per image in order (`mm.image_tokens.ImageTokens.counts`)."""
    num_images = ids.count(image_id)
    counts = [tokens_per_image] * num_images if isinstance(tokens_per_image, int) else list(tokens_per_image)
    if len(counts) != num_images:
        raise ConversationError(IMAGE_COUNT_MISMATCH, f"{num_images} image placeholder(s) but {len(counts)} image(s)")
    counts.reverse()
    input_ids: list[int] = []
    labels: list[int] = []
    for token, is_trained in zip(ids, trained):
        if token == image_id:
            count = counts.pop()
            input_ids += [image_id] * count
            labels += [IGNORE_INDEX] * count
        else:
            input_ids.append(token)
            labels.append(token if is_trained else IGNORE_INDEX)
    return input_ids, labels


def _template(template: str | ChatTemplate, image_token: str) -> ChatTemplate:
    return template if isinstance(template, ChatTemplate) else get_template(template, image_token)


def encode_conversation(
    conversation: Sequence[dict],
    tokenizer,
    template: str | ChatTemplate,
    *,
    tokens_per_image: int | Sequence[int],
    image_token: str = IMAGE_TOKEN,
    max_length: int | None = None,
    num_images: int | None = None,
) -> EncodedConversation:
    """Token ids and labels (``-100`` outside assistant turns) of a whole conversation.

    ``tokens_per_image``: every image's placeholder count, or one per image in order (anyres). With
    ``num_images`` the placeholders must match it (``image_count_mismatch`` otherwise).
    """
    chat = _template(template, image_token)
    turns = to_turns(conversation, num_images, image_token=image_token)
    image_id = _image_token_id(tokenizer, image_token)
    ids, trained = _tokenize(chat.render(turns, tokenizer, generation=False), tokenizer, chat.add_special_tokens)
    num_images = ids.count(image_id)
    input_ids, labels = _expand_images(ids, trained, image_id, tokens_per_image)
    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = _truncate(input_ids, labels, image_id, max_length)
    return EncodedConversation(input_ids, labels, num_images)


def _truncate(input_ids: list[int], labels: list[int], image_id: int, max_length: int):
    """Cut at ``max_length`` only after the last image and only if something is left to train."""
    after_last_image = max((i + 1 for i, t in enumerate(input_ids) if t == image_id), default=0)
    if after_last_image > max_length:
        raise SampleTooLong(f"{len(input_ids)} tokens; its images end at {after_last_image} > max_length {max_length}")
    if all(label == IGNORE_INDEX for label in labels[:max_length]):
        raise SampleTooLong(f"{len(input_ids)} tokens; no assistant token left within max_length {max_length}")
    return input_ids[:max_length], labels[:max_length]


def encode_prompt(
    conversation: Sequence[dict],
    tokenizer,
    template: str | ChatTemplate,
    *,
    tokens_per_image: int | Sequence[int],
    image_token: str = IMAGE_TOKEN,
) -> list[int]:
    """Token ids of a conversation ending in a human turn, followed by the assistant's opening
    (``tokens_per_image`` as in ``encode_conversation``)."""
    chat = _template(template, image_token)
    turns = to_turns(conversation, image_token=image_token, prompt=True)
    image_id = _image_token_id(tokenizer, image_token)
    ids, trained = _tokenize(chat.render(turns, tokenizer, generation=True), tokenizer, chat.add_special_tokens)
    input_ids, _ = _expand_images(ids, trained, image_id, tokens_per_image)
    return input_ids


def encode_prompt_and_continuation(
    conversation: Sequence[dict],
    continuation: str,
    tokenizer,
    template: str | ChatTemplate,
    *,
    tokens_per_image: int | Sequence[int],
    image_token: str = IMAGE_TOKEN,
) -> tuple[list[int], int]:
    """Token ids of a prompt (as ``encode_prompt``) followed by ``continuation`` as the assistant's text, and
    the index where the continuation starts: what a log-likelihood scorer needs."""
    chat = _template(template, image_token)
    turns = to_turns(conversation, image_token=image_token, prompt=True)
    pieces = chat.render(turns, tokenizer, generation=True) + [(continuation, True)]
    ids, scored = _tokenize(pieces, tokenizer, chat.add_special_tokens)
    if not any(scored):
        raise ValueError(f"the continuation {continuation!r} has no tokens")
    first, last = scored.index(True), len(scored) - scored[::-1].index(True)
    prompt, _ = _expand_images(ids[:first], scored[:first], _image_token_id(tokenizer, image_token), tokens_per_image)
    return prompt + ids[first:last], len(prompt)


def stop_token_ids(tokenizer, template: str | ChatTemplate) -> list[int]:
    """Token ids that end an assistant turn under ``template``."""
    name = template.name if isinstance(template, ChatTemplate) else template
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if name == "chat_template":
        vocab = tokenizer.get_vocab()
        stops |= {vocab[token] for token in END_OF_TURN_TOKENS if token in vocab}
    elif name == "plain":
        newline = tokenizer.encode("\n", add_special_tokens=False)
        if len(newline) == 1:
            stops.add(newline[0])
    return sorted(stops)


# ----------------------------------------------------------------------------- Jinja twins of the templates
# Exported checkpoints (mm-export hf-llava) carry their template as a Jinja chat template, for transformers'
# processors, vLLM and SGLang. There a message's content is a string or a list of {"type": "image"} and
# {"type": "text", "text": ...} items; a list reads as LLaVA text: its items joined by "\n", each image one image
# token ([image, text "What is it?"] -> "<image>\nWhat is it?"). The rendered text begins (and ends) with the
# special tokens the tokenizer adds itself under the template (BOS), so it is tokenised without adding any: the
# convention of vLLM's chat endpoint and of `processor.apply_chat_template(..., tokenize=True)`.
# tests/test_chat_jinja.py renders every conversation shape both ways; export checks its own tokenizer too.

JINJA_MARK = "{#- mm chat template: "


def jinja_template(template: str | ChatTemplate, tokenizer, image_token: str = IMAGE_TOKEN) -> str:
    """The Jinja chat template that renders exactly the text ``encode_prompt``/``encode_conversation`` tokenise."""
    chat = _template(template, image_token)
    own = getattr(tokenizer, "chat_template", None)
    if chat.name == TokenizerChatTemplate.name and isinstance(own, str) and own.startswith(JINJA_MARK):
        return own  # already our wrapper (a re-export): it takes plain strings too
    body = chat.jinja(tokenizer, image_token)
    prefix, suffix = _added_special_text(tokenizer) if chat.add_special_tokens else ("", "")
    return _lines(f"{JINJA_MARK}{chat.name} (written by mm; renders what mm.chat tokenises) -#}}",
                  _jinja_text_macro(image_token), _out(prefix), body, _out(suffix))


def template_name_of(jinja: str | None) -> str | None:
    """The mm template a Jinja chat template was written for (``jinja_template``), or None for any other."""
    if not isinstance(jinja, str) or not jinja.startswith(JINJA_MARK):
        return None
    name = jinja[len(JINJA_MARK):].split(" ", 1)[0]
    return name if name in TEMPLATES else None


def _added_special_text(tokenizer) -> tuple[str, str]:
    """The special tokens the tokenizer puts before and after a text by itself, as text (e.g. ("<s>", ""))."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
    text = lambda ids: "".join(tokenizer.convert_ids_to_tokens(ids))  # noqa: E731
    return text(full[:start]), text(full[start + len(bare):])


def _lit(text: str) -> str:
    """A Jinja string literal (JSON's escapes are Jinja's)."""
    return json.dumps(text, ensure_ascii=False)


def _out(text: str) -> str:
    """Jinja writing ``text``; the dashes drop the template's own line breaks and indentation around it."""
    return "{{- " + _lit(text) + " -}}" if text else ""


def _lines(*lines: str) -> str:
    return "\n".join(line for line in lines if line)


def _jinja_text_macro(image_token: str) -> str:
    """``mm_text(content)``: a message's content (string or item list) as LLaVA text."""
    return _lines(
        "{%- macro mm_text(content) -%}",
        "  {%- if content is string -%}",
        "    {{- content -}}",
        "  {%- else -%}",
        "    {%- for item in content -%}",
        "      {%- if not loop.first -%}" + _out("\n") + "{%- endif -%}",
        "      {%- if item['type'] == 'image' -%}",
        "        " + _out(image_token),
        "      {%- elif item['type'] == 'text' -%}",
        "        {{- item['text'] -}}",
        "      {%- else -%}",
        "        {{- raise_exception('mm templates take image and text items, not ' ~ item['type']) -}}",
        "      {%- endif -%}",
        "    {%- endfor -%}",
        "  {%- endif -%}",
        "{%- endmacro -%}",
    )
