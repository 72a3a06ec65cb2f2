"""Preference losses and log-probs (mm.train.dpo) and preference pairs on the data path (mm.data.pairs):
hand computations, TRL's DPO loss as an outside reference, padding invariance, label masks."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mm.chat import IGNORE_INDEX
from mm.data.pairs import PreferenceDecoder, collate_pairs, last_answer_only
from mm.data.samples import SampleDecoder, SkipSample
from mm.train.dpo import ReferenceLogps, model_logps, pair_key, preference_loss, sequence_logps
from mm.transforms import ImageTransform
from train_helpers import png_bytes, tokenizer

TOKENIZER = tokenizer()

# --------------------------------------------------------------------------- losses by hand
# pi(y_w) = -1, pi(y_l) = -2, ref(y_w) = ref(y_l) = -1.5, beta 0.5: h = 0.5 - (-0.5) = 1, beta * h = 0.5
LOGPS = dict(policy_chosen=torch.tensor([-1.0]), policy_rejected=torch.tensor([-2.0]),
             reference_chosen=torch.tensor([-1.5]), reference_rejected=torch.tensor([-1.5]))
TOKENS = dict(chosen_tokens=torch.tensor([2]), rejected_tokens=torch.tensor([4]))


def test_sigmoid_loss_and_rewards_by_hand():
    terms = preference_loss(**LOGPS, beta=0.5)
    assert float(terms.losses) == pytest.approx(math.log(1 + math.exp(-0.5)))  # -log sigmoid(0.5)
    assert float(terms.chosen_rewards) == pytest.approx(0.25)  # 0.5 * (-1 - -1.5)
    assert float(terms.rejected_rewards) == pytest.approx(-0.25)


def test_label_smoothing_is_conservative_dpo_by_hand():
    terms = preference_loss(**LOGPS, beta=0.5, label_smoothing=0.1)
    expected = 0.9 * math.log(1 + math.exp(-0.5)) + 0.1 * math.log(1 + math.exp(0.5))
    assert float(terms.losses) == pytest.approx(expected)
    assert float(terms.losses) != pytest.approx(float(preference_loss(**LOGPS, beta=0.5).losses))


def test_ipo_loss_by_hand():
    # per-token log-ratios: 0.5 / 2 - (-0.5) / 4 = 0.375; (0.375 - 1 / (2 * 0.5))^2
    terms = preference_loss(**LOGPS, **TOKENS, loss_type="ipo", beta=0.5)
    assert float(terms.losses) == pytest.approx((0.375 - 1.0) ** 2)


def test_rpo_adds_the_chosen_mean_token_nll():
    plain = float(preference_loss(**LOGPS, **TOKENS, beta=0.5).losses)
    terms = preference_loss(**LOGPS, **TOKENS, beta=0.5, sft_weight=2.0)
    assert float(terms.losses) == pytest.approx(plain + 2.0 * (1.0 / 2))  # alpha * -pi(y_w) / |y_w|


def test_loss_options_are_checked():
    with pytest.raises(ValueError, match="token counts"):
        preference_loss(**LOGPS, loss_type="ipo")
    with pytest.raises(ValueError, match="unknown"):
        preference_loss(**LOGPS, loss_type="hinge")


def test_gradient_pushes_chosen_up_and_rejected_down():
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    terms = preference_loss(policy[:1], policy[1:], torch.tensor([-1.5]), torch.tensor([-1.5]))
    terms.losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]


def test_sequence_logps_by_hand():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])  # position 0 predicts 1, position 1 predicts 0
    sums, counts = sequence_logps(logits, labels)
    expected = (1.0 - math.log(1 + math.e)) + (2.0 - math.log(math.exp(2) + 1))
    assert float(sums) == pytest.approx(expected)
    assert counts.tolist() == [2]


# --------------------------------------------------------------------------- TRL as an outside reference
def independent_dpo(chosen, rejected, ref_chosen, ref_rejected, beta, eps):
    """cDPO written out from Mitchell (2023): the expected DPO loss under labels flipped with prob eps."""
    out = []
    for c, r, rc, rr in zip(chosen.tolist(), rejected.tolist(), ref_chosen.tolist(), ref_rejected.tolist()):
        z = beta * ((c - rc) - (r - rr))
        out.append((1 - eps) * math.log1p(math.exp(-z)) + eps * math.log1p(math.exp(z)))
    return torch.tensor(out)


def test_cdpo_matches_an_independent_implementation():
    gen = torch.Generator().manual_seed(0)
    values = [-torch.rand(5, generator=gen) * 10 for _ in range(4)]
    for eps in (0.0, 0.2):
        terms = preference_loss(*values, beta=0.3, label_smoothing=eps)
        torch.testing.assert_close(terms.losses, independent_dpo(*values, 0.3, eps).float())


def trl_loss(loss_type, beta, logits, input_ids, completion_mask, ref_chosen, ref_rejected):
    """TRL's DPOTrainer._compute_loss on a stub trainer and model: the model returns per-token log-probs of
    the completion tokens (zero elsewhere), as TRL's fused head does, computed here from the logits."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer", reason="trl is not installed (test-only reference)")

    def model(input_ids, attention_mask, labels, **kwargs):
        shift = labels[:, 1:]
        logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, shift.clamp(min=0)[..., None])[..., 0]
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(log_probs=logps * (shift != -100), entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())

    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = dpo_trainer.DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return loss, stub._metrics["train"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sft"])
def test_loss_equals_trls(loss_type):
    pairs, width, vocab = 3, 7, 11
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2 * pairs, width, vocab, generator=gen) * 3
    input_ids = torch.randint(0, vocab, (2 * pairs, width), generator=gen)
    completion = torch.zeros(2 * pairs, width, dtype=torch.long)
    starts = [2, 4, 3, 1, 5, 2] if loss_type != "sft" else [3] * 6  # TRL's SFT term is a token mean over
    for row, start in enumerate(starts):                             # the batch; RPO's is per pair: equal
        completion[row, start:] = 1                                  # lengths make them the same
    ref = -torch.rand(2 * pairs, generator=gen) * 20
    labels = input_ids.masked_fill(completion == 0, IGNORE_INDEX)
    expected, metrics = trl_loss(loss_type, 0.1, logits, input_ids, completion, ref[:pairs], ref[pairs:])

    policy, tokens = sequence_logps(logits, labels)
    if loss_type == "sft":  # TRL's `sft` alone is the NLL term; RPO adds it to DPO with weight alpha
        dpo = preference_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], beta=0.1)
        rpo = preference_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], beta=0.1, sft_weight=1.0,
                              chosen_tokens=tokens[:pairs], rejected_tokens=tokens[pairs:])
        ours = (rpo.losses - dpo.losses).mean()
    else:
        terms = preference_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], loss_type=loss_type,
                                beta=0.1, chosen_tokens=tokens[:pairs], rejected_tokens=tokens[pairs:])
        ours = terms.losses.mean()
        assert float(terms.chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"][0], rel=1e-5)
        assert float(terms.rejected_rewards.mean()) == pytest.approx(metrics["rewards/rejected"][0], rel=1e-5)
        assert float(policy[:pairs].mean()) == pytest.approx(metrics["logps/chosen"][0], rel=1e-5)
    assert float(ours) == pytest.approx(float(expected), rel=1e-5)


# --------------------------------------------------------------------------- pairs on the data path
def pair_record(key, prompt, chosen, rejected, *, images=1):
    meta = {"id": key, "source": "test", "conversations": prompt, "images": [f"img{i}.png" for i in range(images)],
            "image_sizes": [[12, 8]] * images, "meta": {}, "chosen": chosen, "rejected": rejected}
    record = {"__key__": key, "__url__": "/data/pref/pref-000000.tar", "json": json.dumps(meta).encode()}
    record.update({f"img{i}.png": png_bytes() for i in range(images)})
    return record


def decoder(template="vicuna_v1", max_length=None, tokens_per_image=3):
    transform = ImageTransform(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return PreferenceDecoder(SampleDecoder(TOKENIZER, template, tokens_per_image, transform, max_length=max_length))


def trained_text(sample) -> list[str]:
    spans, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(label)
        elif current:
            spans.append(TOKENIZER.decode(current))
            current = []
    return spans + ([TOKENIZER.decode(current)] if current else [])


PROMPT = [{"from": "human", "value": "<image>\nWhat color is the square?"}]
MULTI_TURN = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A square."},
              {"from": "human", "value": "Which color?"}]


@pytest.mark.parametrize("template,chosen_span,rejected_span", [
    ("vicuna_v1", " It is red.</s>", " It is a very bright green.</s>"),
    ("chat_template", "It is red.<|im_end|>", "It is a very bright green.<|im_end|>"),
])
@pytest.mark.parametrize("prompt", [PROMPT, MULTI_TURN], ids=["one_turn", "multi_turn"])
def test_labels_cover_exactly_the_answer(template, chosen_span, rejected_span, prompt):
    pair = decoder(template)(pair_record("k", prompt, "It is red.", "It is a very bright green."))
    assert trained_text(pair.chosen) == [chosen_span]  # an earlier turn's answer is context, not trained
    assert trained_text(pair.rejected) == [rejected_span]
    assert pair.key == "/data/pref/pref-000000.tar#k" and pair_key(pair.key) == "pref/pref-000000.tar#k"
    # the prompt tokens are the same in both rows
    prompt_length = pair.chosen.labels.index(next(l for l in pair.chosen.labels if l != IGNORE_INDEX))
    assert pair.chosen.input_ids[:prompt_length] == pair.rejected.input_ids[:prompt_length]


def test_last_answer_only():
    x = IGNORE_INDEX
    assert last_answer_only([x, 5, 6, x, x, 7, 8, x]) == [x, x, x, x, x, 7, 8, x]
    assert last_answer_only([x, x]) == [x, x]


@pytest.mark.parametrize("change,reason", [
    ({"conversations": PROMPT + [{"from": "gpt", "value": "Red."}]}, "end with a human turn"),
    ({"chosen": ""}, "non-empty strings"),
    ({"rejected": None}, "non-empty strings"),
])
def test_bad_pairs_are_skipped(change, reason):
    record = pair_record("k", PROMPT, "Red.", "Green.")
    meta = {**json.loads(record["json"]), **change}
    with pytest.raises(SkipSample, match=reason):
        decoder()({**record, "json": json.dumps(meta).encode()})


def test_an_answer_truncated_away_is_skipped():
    record = pair_record("k", PROMPT, "Red.", "A long answer " * 20)
    length = len(decoder()(record).chosen)
    with pytest.raises(SkipSample, match="too_long"):
        decoder(max_length=length - 4)(pair_record("k", PROMPT, "Red.", "A long answer " * 20))


def test_collated_pairs_are_chosen_rows_then_rejected_rows_with_images_twice():
    dec = decoder()
    pairs = [dec(pair_record("a", PROMPT, "Red.", "Green and blue.")),
             dec(pair_record("b", PROMPT, "It is a red square, I think.", "Blue."))]
    batch = collate_pairs(pairs, TOKENIZER.pad_token_id)
    assert batch["num_samples"] == 2 and batch["input_ids"].shape[0] == 4
    assert batch["pixel_values"].shape[0] == 4
    for row, sample in enumerate([pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected]):
        assert batch["input_ids"][row, : len(sample)].tolist() == sample.input_ids


# --------------------------------------------------------------------------- log-probs of the model
@pytest.fixture(scope="module")
def vlm():
    from mm.builder import build_vlm
    from mm.tiny import tiny_vlm_config

    torch.manual_seed(0)
    return build_vlm(tiny_vlm_config()).eval()


def model_pairs(vlm, answers):
    settings = vlm.image_transform_config
    transform = ImageTransform(settings.image_size, settings.mean, settings.std, settings.mode)
    dec = PreferenceDecoder(SampleDecoder(vlm.tokenizer, "plain", vlm.tokens_per_image, transform,
                                          image_token=vlm.config.image_token))
    return [dec(pair_record(f"k{i}", [{"from": "human", "value": "<image>\nDescribe."}], chosen, rejected))
            for i, (chosen, rejected) in enumerate(answers)]


def normalized(vlm, batch):
    return vlm.make_image_transform().normalize(batch["pixel_values"])


ANSWERS = [("A red square.", "A big green square drawn on a white background."), ("Blue.", "Yellow, yes.")]


def test_padding_does_not_change_sequence_logps(vlm):
    pairs = model_pairs(vlm, ANSWERS)
    batch = collate_pairs(pairs, vlm.tokenizer.pad_token_id)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # mixed lengths: padded rows
    with torch.no_grad():
        together, tokens = model_logps(vlm, batch, normalized(vlm, batch))
        alone = []
        for sample in [p.chosen for p in pairs] + [p.rejected for p in pairs]:
            from mm.data.batching import collate

            one = collate([sample], vlm.tokenizer.pad_token_id)
            alone.append(model_logps(vlm, one, normalized(vlm, one))[0])
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert tokens.tolist() == [sum(l != IGNORE_INDEX for l in s.labels[1:])
                               for s in [p.chosen for p in pairs] + [p.rejected for p in pairs]]


def test_labelled_positions_head_equals_full_logits(vlm):
    batch = collate_pairs(model_pairs(vlm, ANSWERS), vlm.tokenizer.pad_token_id)
    pixel_values = normalized(vlm, batch)
    with torch.no_grad():
        fast, _ = model_logps(vlm, batch, pixel_values)
        logits = vlm(batch["input_ids"], pixel_values=pixel_values, attention_mask=batch["attention_mask"]).logits
        full, _ = sequence_logps(logits, batch["labels"])
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_reference_file_round_trip_and_checks(tmp_path):
    table = ReferenceLogps({"a": 1}, {"pref/s.tar#k": (-1.25, -3.5)})
    table.save(tmp_path / "ref.json")
    loaded = ReferenceLogps.load(tmp_path / "ref.json", {"a": 1})
    chosen, rejected = loaded.lookup(["/somewhere/else/pref/s.tar#k"], "cpu")  # shard tree moved: same key
    assert chosen.tolist() == [-1.25] and rejected.tolist() == [-3.5]
    with pytest.raises(ValueError, match="other settings"):
        ReferenceLogps.load(tmp_path / "ref.json", {"a": 2})
    with pytest.raises(KeyError, match="no precomputed"):
        loaded.lookup(["pref/s.tar#other"], "cpu")
