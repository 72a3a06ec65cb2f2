"""Per-template label masks on the training path: the decoded trained spans are exactly the assistant
turns with their end-of-turn token, and nothing else is trained."""

from __future__ import annotations

import json

import pytest

from mm.data.batching import collate
from mm.data.samples import SampleDecoder
from mm.transforms import ImageTransform
from train_helpers import png_bytes, tokenizer

TOKENIZER = tokenizer()
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat color is the cube?"},
    {"from": "gpt", "value": "The cube is red."},
    {"from": "human", "value": "And how many balls are there? <image>"},
    {"from": "gpt", "value": "There are 3 balls, all blue."},
]
CAPTION = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A red cube beside a ball."}]


def trained_spans(input_ids, labels) -> list[str]:
    spans, current = [], []
    for token, label in zip(input_ids, labels):
        if label != -100:
            assert label == token  # labels are the inputs themselves (the model shifts)
            current.append(label)
        elif current:
            spans.append(TOKENIZER.decode(current))
            current = []
    if current:
        spans.append(TOKENIZER.decode(current))
    return spans


def batch_for(conversation, template, tokens_per_image=3):
    meta = {"conversations": conversation, "images": [f"img{i}.png" for i in range(2)]}
    images = sum(turn["value"].count("<image>") for turn in conversation)
    meta["images"] = meta["images"][:images]
    record = {"__key__": "k", "json": json.dumps(meta).encode()}
    record.update({name: png_bytes() for name in meta["images"]})
    transform = ImageTransform(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    decoder = SampleDecoder(TOKENIZER, template, tokens_per_image, transform)
    short = decoder({**record, "__key__": "short", "json": json.dumps({**meta, "conversations": CAPTION,
                                                                        "images": ["img0.png"]}).encode()})
    batch = collate([decoder(record), short], TOKENIZER.pad_token_id)  # padded next to a shorter sample
    return batch, images


@pytest.mark.parametrize(
    "template,expected",
    [
        # vicuna_v1: " ASSISTANT: answer</s>"; the space before the answer is merged into its first token.
        ("vicuna_v1", [" The cube is red.</s>", " There are 3 balls, all blue.</s>"]),
        # the tokenizer's own (ChatML) template: the answer and <|im_end|>, not the newline after it.
        ("chat_template", ["The cube is red.<|im_end|>", "There are 3 balls, all blue.<|im_end|>"]),
    ],
)
def test_multi_turn_templates_train_exactly_the_answers(template, expected):
    batch, images = batch_for(CONVERSATION, template)
    row = batch["input_ids"][0].tolist()
    assert trained_spans(row, batch["labels"][0].tolist()) == expected
    assert row.count(TOKENIZER.convert_tokens_to_ids("<image>")) == 3 * images
    assert batch["pixel_values"].shape[0] == images + 1  # both samples' images, in row order


def test_plain_template_trains_the_caption_and_its_separator():
    batch, _ = batch_for(CAPTION, "plain")
    row, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert trained_spans(row, labels) == ["A red cube beside a ball.\n"]
    assert TOKENIZER.decode(row) == "<s>" + "<image>" * 3 + "A red cube beside a ball.\n"


def test_padding_is_never_trained():
    batch, _ = batch_for(CONVERSATION, "vicuna_v1")
    short_labels = batch["labels"][1]
    padding = batch["attention_mask"][1] == 0
    assert padding.any() and (short_labels[padding] == -100).all()
    assert trained_spans(batch["input_ids"][1].tolist(), short_labels.tolist()) == [" A red cube beside a ball.</s>"]
