"""mm.chat: roles, prompts, truncation and stop tokens (label masks per template: test_train_label_masks)."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mm.chat import (
    IGNORE_INDEX,
    ConversationError,
    SampleTooLong,
    encode_conversation,
    encode_prompt,
    get_template,
    stop_token_ids,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["What color is the cube? The cube is red.", "USER: ASSISTANT: A chat between a curious user"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers.processors import TemplateProcessing

    bpe.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", additional_special_tokens=["<image>", "<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML
    return tok


CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat color is the cube?"},
    {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "And the sphere?"},
    {"from": "gpt", "value": "Blue."},
]


def trained_text(tokenizer, encoded):
    return [tokenizer.decode([t for t, l in zip(encoded.input_ids, encoded.labels) if l != IGNORE_INDEX])]


@pytest.mark.parametrize("name,expected", [
    ("vicuna_v1", "Red.</s>Blue.</s>"),
    ("chat_template", "Red.<|im_end|>Blue.<|im_end|>"),
    ("plain", "Red.\nBlue.\n"),
])
def test_only_assistant_text_and_end_of_turn_are_trained(tokenizer, name, expected):
    encoded = encode_conversation(CONVERSATION, tokenizer, name, tokens_per_image=5)
    assert encoded.num_images == 1
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.count(image_id) == 5
    assert all(l == IGNORE_INDEX for t, l in zip(encoded.input_ids, encoded.labels) if t == image_id)
    assert trained_text(tokenizer, encoded) == [expected]


def test_vicuna_prompt_text_is_llava_format(tokenizer):
    ids = encode_prompt(CONVERSATION[:1], tokenizer, "vicuna_v1", tokens_per_image=1)
    text = tokenizer.decode(ids)
    assert text == ("<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat color is "
                    "the cube? ASSISTANT:")


def test_chat_template_prompt_ends_with_generation_prompt(tokenizer):
    ids = encode_prompt(CONVERSATION[:3], tokenizer, "chat_template", tokens_per_image=2)
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nAnd the sphere?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(ids).startswith("<|im_start|>user\n<image><image>\n")


def test_system_turn_replaces_default_system_prompt(tokenizer):
    conversation = [{"from": "system", "value": "Be brief."}] + CONVERSATION[:2]
    ids = encode_prompt(conversation[:2], tokenizer, "vicuna_v1", tokens_per_image=1)
    assert tokenizer.decode(ids).startswith("<s>Be brief. USER:")


@pytest.mark.parametrize("conversation,reason", [
    ([{"from": "gpt", "value": "hi"}], "non_alternating_roles"),
    ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "non_alternating_roles"),
    ([{"from": "robot", "value": "a"}], "unknown_role"),
    ([{"from": "human"}], "malformed_record"),
    ([], "empty_conversation"),
    (["not a dict"], "malformed_record"),
])
def test_bad_conversations_raise_clear_errors(tokenizer, conversation, reason):
    with pytest.raises(ConversationError) as raised:
        encode_conversation(conversation, tokenizer, "vicuna_v1", tokens_per_image=1)
    assert raised.value.reason == reason


def test_training_needs_a_final_assistant_turn_and_prompts_a_final_human_turn(tokenizer):
    with pytest.raises(ConversationError, match="ending with gpt"):
        encode_conversation(CONVERSATION[:1], tokenizer, "vicuna_v1", tokens_per_image=1)
    with pytest.raises(ConversationError, match="ending with human"):
        encode_prompt(CONVERSATION[:2], tokenizer, "vicuna_v1", tokens_per_image=1)


def test_a_prompt_replays_an_empty_earlier_answer_but_training_refuses_one(tokenizer):
    """The model's own empty answer to turn 1 (evaluation and chat replay it in turn 2) is not bad input; an
    empty assistant message in training data is."""
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": ""},
             {"from": "human", "value": "And its colour?"}]
    ids = encode_prompt(turns, tokenizer, "vicuna_v1", tokens_per_image=1)
    assert "ASSISTANT: </s>USER: And its colour? ASSISTANT:" in tokenizer.decode(ids).replace("  ", " ")
    with pytest.raises(ConversationError, match=r"message 1 \(gpt\) is empty"):
        encode_conversation(turns[:2], tokenizer, "vicuna_v1", tokens_per_image=1)
    with pytest.raises(ConversationError, match=r"message 2 \(human\) is empty"):
        encode_prompt(turns[:2] + [{"from": "human", "value": " "}], tokenizer, "vicuna_v1", tokens_per_image=1)


def test_truncation_keeps_images_whole(tokenizer):
    full = encode_conversation(CONVERSATION, tokenizer, "vicuna_v1", tokens_per_image=8)
    last_image = max(i for i, t in enumerate(full.input_ids) if t == tokenizer.convert_tokens_to_ids("<image>"))
    first_label = next(i for i, l in enumerate(full.labels) if l != IGNORE_INDEX)
    cut = encode_conversation(CONVERSATION, tokenizer, "vicuna_v1", tokens_per_image=8, max_length=first_label + 1)
    assert cut.input_ids == full.input_ids[: first_label + 1] and cut.labels == full.labels[: first_label + 1]
    with pytest.raises(SampleTooLong, match="images end"):
        encode_conversation(CONVERSATION, tokenizer, "vicuna_v1", tokens_per_image=8, max_length=last_image)
    with pytest.raises(SampleTooLong, match="no assistant token"):
        encode_conversation(CONVERSATION, tokenizer, "vicuna_v1", tokens_per_image=8, max_length=first_label)


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError, match="vicuna_v1"):
        get_template("llama_2")


def test_missing_image_token_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="no '<img>' token"):
        encode_conversation(CONVERSATION, tokenizer, "vicuna_v1", tokens_per_image=1, image_token="<img>")


def test_stop_tokens(tokenizer):
    eos = tokenizer.eos_token_id
    assert stop_token_ids(tokenizer, "vicuna_v1") == [eos]
    assert stop_token_ids(tokenizer, "chat_template") == sorted({eos, tokenizer.convert_tokens_to_ids("<|im_end|>")})


def test_mm_prep_and_the_encoder_accept_exactly_the_same_conversations(tokenizer, tmp_path):
    """One contract: what mm-prep writes encodes; what it rejects for a conversation reason, the
    encoder rejects for the same reason."""
    import io
    import json

    from PIL import Image

    from data_prep.cli import main
    from data_prep.inspect_shards import iter_samples

    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, "PNG")
    (tmp_path / "a.png").write_bytes(image.getvalue())
    h, g = (lambda text: {"from": "human", "value": text}), (lambda text: {"from": "gpt", "value": text})
    conversations = {
        "plain": ([h("<image>\nWhat?"), g("Red.")], 1),
        "system": ([{"from": "system", "value": "Be brief."}, h("Hi"), g("Hello."), h("<image> And?"), g("Red.")], 1),
        "two-images": ([h("<image><image>\nBoth?"), g("Red.")], 2),
        "user-assistant": ([{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello."}], 0),
        "capitalised": ([{"from": "Human", "value": "Hi"}, g("Hello.")], 0),
        "role-content": ([{"role": "user", "content": "Hi"}, g("Hello.")], 0),
        "gpt-first": ([g("Hello."), h("Hi")], 0),
        "two-humans": ([h("Hi"), h("Hi again"), g("Hello.")], 0),
        "ends-with-human": ([h("Hi"), g("Hello."), h("Bye")], 0),
        "system-later": ([h("Hi"), {"from": "system", "value": "x"}, g("Hello.")], 0),
        "only-system": ([{"from": "system", "value": "x"}], 0),
        "empty-value": ([h("Hi"), g("  ")], 0),
        "number-value": ([h("Hi"), {"from": "gpt", "value": 3}], 0),
        "not-a-message": ([h("Hi"), "Hello."], 0),
        "not-a-list": ({"from": "human", "value": "Hi"}, 0),
        "empty": ([], 0),
        "missing-image": ([h("What?"), g("Red.")], 1),
        "extra-placeholder": ([h("<image><image>"), g("Red.")], 1),
        "image-in-answer": ([h("<image>"), g("<image>")], 1),
    }
    records = [{"id": name, "image": ["a.png"] * count, "conversations": turns}
               for name, (turns, count) in conversations.items()]  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    assert main(["llava", "--annotations", str(tmp_path / "data.json"), "--image-root", str(tmp_path),
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0  # fmt: skip

    def encode(record, num_images):
        return encode_conversation(record["conversations"], tokenizer, "vicuna_v1", tokens_per_image=2,
                                   num_images=num_images)  # fmt: skip

    written = {sample.record["id"]: sample.record for sample in iter_samples(out)}
    assert sorted(written) == ["plain", "system", "two-images"]
    for record in written.values():
        assert encode(record, len(record["images"])).num_images == len(record["images"])
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == len(conversations) - len(written)
    for row in rejected:
        with pytest.raises(ConversationError) as raised:
            encode(row["record"], len(row["record"]["image"]))
        assert (row["id"], raised.value.reason) == (row["id"], row["reason"])
    assert {row["reason"] for row in rejected} == {
        "unknown_role", "malformed_record", "non_alternating_roles", "empty_message", "empty_conversation",
        "image_count_mismatch"}  # fmt: skip
