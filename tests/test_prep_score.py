"""`mm-prep score` model metrics (loss, ifd, image_reliance) against a hand computation from the tiny model's
logits; batch-size independence; training's own loss; samples that cannot be scored."""

from __future__ import annotations

import json
import math
from itertools import chain, pairwise

import pytest
import torch
from test_prep_score_free import make_shards, read_scores

from data_prep.cli import main
from data_prep.inspect_shards import ShardSample, iter_samples
from mm.chat import IGNORE_INDEX, encode_conversation

METRICS = ("loss", "ifd", "image_reliance")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import mm
    from mm.tiny import tiny_vlm_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; tiny shapes gain nothing from more
    root = tmp_path_factory.mktemp("score_model")
    shards = make_shards(root)
    torch.manual_seed(0)
    mm.build_vlm(tiny_vlm_config()).save_pretrained(root / "ckpt")
    model = mm.load_pretrained(str(root / "ckpt")).eval()
    yield root, shards, model, list(iter_samples(shards))
    torch.set_num_threads(threads)


def _runs(positions: list[int]) -> list[list[int]]:
    """Consecutive labelled positions: one run per assistant turn under vicuna_v1 (user text separates them)."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and runs[-1][-1] == p - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


@torch.no_grad()
def _token_losses(model, ids: list[int], pixels, positions: list[int]) -> list[float]:
    logits = model(torch.tensor([ids]), pixels).logits[0].double()
    logp = logits.log_softmax(-1)
    return [float(-logp[p - 1, ids[p]]) for p in positions]


def _mean(values):
    return sum(values) / len(values)


def hand_metrics(model, sample: ShardSample) -> dict:
    """The metrics as the docstrings define them, from full-vocabulary logits of one unpadded sequence each."""
    conversation = sample.record["conversations"]
    encoded = encode_conversation(conversation, model.tokenizer, model.config.chat_template,
                                  tokens_per_image=model.tokens_per_image, num_images=len(sample.images))  # fmt: skip
    ids, labels = encoded.input_ids, encoded.labels
    transform = model.make_image_transform()
    pixels = transform.normalize(torch.stack([transform.load(b) for b in sample.images])) if sample.images else None
    positions = [p for p in range(1, len(ids)) if labels[p] != IGNORE_INDEX]
    runs = _runs(positions)
    assert len(runs) == sum(m["from"] == "gpt" for m in conversation)
    full = _token_losses(model, ids, pixels, positions)
    cut = [len(r) for r in runs]
    bounds = [sum(cut[:i]) for i in range(len(cut) + 1)]
    full_turns = [full[a:b] for a, b in pairwise(bounds)]
    start = model.tokenizer.bos_token_id
    alone = [_token_losses(model, [start, *[ids[p] for p in run]], None, list(range(1, len(run) + 1))) for run in runs]
    out = {"loss": _mean(full), "loss_turns": [_mean(t) for t in full_turns],
           "ifd": _mean(full) / _mean(list(chain(*alone))), "ifd_turns": [_mean(f) / _mean(a) for f, a in zip(full_turns, alone)]}  # fmt: skip
    if sample.images:
        kept = [i for i, t in enumerate(ids) if t != model.image_token_id]
        no_ids, no_labels = [ids[i] for i in kept], [labels[i] for i in kept]
        no_image = _token_losses(model, no_ids, None, [p for p in range(1, len(no_ids)) if no_labels[p] != IGNORE_INDEX])
        out["image_reliance"] = _mean(no_image) - _mean(full)
        out["image_reliance_turns"] = [_mean(no_image[a:b]) - _mean(f) for (a, b), f in zip(pairwise(bounds), full_turns)]
    else:
        out["image_reliance"] = out["image_reliance_turns"] = None
    # `loss` is training's loss of this sample alone
    with torch.no_grad():
        training = model(torch.tensor([ids]), pixels, labels=torch.tensor([labels])).loss
    assert math.isclose(float(training), out["loss"], rel_tol=1e-5)
    return out


def _close(actual, expected, tol):
    if expected is None or actual is None:
        return actual is None and expected is None
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(_close(a, e, tol) for a, e in zip(actual, expected))
    return math.isclose(actual, expected, rel_tol=tol, abs_tol=tol)


def test_cli_scores_match_hand_computation(setup, tmp_path):
    root, shards, model, samples = setup
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(shards), "--checkpoint", str(root / "ckpt"), "--metrics", "loss,ifd,image_reliance",
                 "--out", str(out), "--device", "cpu", "--batch-size", "4", "--no-progress"]) == 0  # fmt: skip
    scores = read_scores(out)
    assert list(scores) == [s.key for s in samples]
    for sample in samples:
        line, expected = scores[sample.key], hand_metrics(model, sample)
        for column, value in expected.items():
            assert _close(line[column], value, 1e-4), (sample.record["id"], column, line[column], value)
        assert all(isinstance(line[m], float) for m in ("loss", "ifd")) and not any(k.endswith("_error") for k in line)
    meta = json.loads((tmp_path / "scores.jsonl.meta.json").read_text())
    assert meta["ifd"]["chat_template"] == "vicuna_v1" and meta["loss"]["dtype"] == "float32"
    text_only = next(line for line in scores.values() if line["id"] == "text")
    assert text_only["image_reliance"] is None and text_only["image_reliance_turns"] is None
    multi = next(line for line in scores.values() if line["id"] == "multi")
    assert all(len(multi[f"{m}_turns"]) == 3 for m in METRICS)
    # a later model-free run adds its columns to the same lines
    assert main(["score", str(shards), "--metrics", "phash", "--out", str(out), "--no-progress"]) == 0
    merged = read_scores(out)
    assert all(merged[k]["loss"] == scores[k]["loss"] and "phash" in merged[k] for k in scores)


def test_batch_size_does_not_change_losses(setup):
    from data_prep.score.model_metrics import ModelScorer

    _, _, model, samples = setup
    one = ModelScorer(model, METRICS, torch.float32, batch_size=1).score(samples)
    four = ModelScorer(model, METRICS, torch.float32, batch_size=4).score(samples[::-1])[::-1]
    assert len(one) == len(samples)
    for a, b in zip(one, four):
        assert a.keys() == b.keys()
        for column in a:
            assert _close(a[column], b[column], 1e-5), (column, a[column], b[column])


def test_samples_that_cannot_be_scored(setup):
    from data_prep.score.model_metrics import ModelScorer

    _, _, model, samples = setup
    good = next(s for s in samples if len(s.images) == 1)
    bad_image = ShardSample("x", "bad_image", good.record, [b"not an image"])
    mismatch = ShardSample("x", "mismatch", good.record, [])
    rows = ModelScorer(model, ("loss", "ifd"), torch.float32).score([bad_image, good, mismatch])
    assert rows[0]["loss"] is None and rows[0]["loss_turns"] is None and rows[0]["loss_error"].startswith("bad_image")
    assert rows[2]["ifd"] is None and rows[2]["ifd_error"].startswith("image_count_mismatch")
    assert isinstance(rows[1]["loss"], float) and "image_reliance" not in rows[1]
    json.dumps(rows, allow_nan=False)


def test_plain_template_turns_and_training_loss(setup, tmp_path):
    """Under `plain` the answers of a multi-turn sample touch each other (user turns render as their images
    only): turns are found by the labels of the conversation cut after each turn."""
    import mm
    from data_prep.score.model_metrics import ModelScorer
    from mm.tiny import tiny_vlm_config

    _, _, _, samples = setup
    torch.manual_seed(1)
    model = mm.build_vlm(tiny_vlm_config(chat_template="plain")).eval()
    multi = next(s for s in samples if s.record["id"] == "multi")
    row = ModelScorer(model, METRICS, torch.float32).score([multi])[0]
    encoded = encode_conversation(multi.record["conversations"], model.tokenizer, "plain",
                                  tokens_per_image=model.tokens_per_image, num_images=1)  # fmt: skip
    transform = model.make_image_transform()
    pixels = transform.normalize(torch.stack([transform.load(multi.images[0])]))
    with torch.no_grad():
        training = model(torch.tensor([encoded.input_ids]), pixels, labels=torch.tensor([encoded.labels])).loss
    assert math.isclose(row["loss"], float(training), rel_tol=1e-5)
    assert len(row["loss_turns"]) == 3 and all(v is not None for v in row["ifd_turns"] + row["image_reliance_turns"])
    per_answer = [len(model.tokenizer(a + "\n", add_special_tokens=False).input_ids) for a in ("Four.", "It is green, mostly.", "No")]
    weights = torch.tensor(per_answer, dtype=torch.float64)
    assert math.isclose(float((torch.tensor(row["loss_turns"], dtype=torch.float64) * weights).sum() / weights.sum()),
                        row["loss"], rel_tol=1e-4)  # fmt: skip


def test_max_length_truncates_as_training(setup):
    from data_prep.score.model_metrics import ModelScorer

    _, _, model, samples = setup
    multi = next(s for s in samples if s.record["id"] == "multi")
    kwargs = {"tokens_per_image": model.tokens_per_image, "num_images": 1}
    length = len(encode_conversation(multi.record["conversations"], model.tokenizer, "vicuna_v1", **kwargs).input_ids)
    cut = encode_conversation(multi.record["conversations"], model.tokenizer, "vicuna_v1", max_length=length - 2, **kwargs)
    transform = model.make_image_transform()
    pixels = transform.normalize(torch.stack([transform.load(multi.images[0])]))
    with torch.no_grad():
        training = model(torch.tensor([cut.input_ids]), pixels, labels=torch.tensor([cut.labels])).loss
    row = ModelScorer(model, ("loss",), torch.float32, max_length=length - 2).score([multi])[0]
    assert math.isclose(row["loss"], float(training), rel_tol=1e-5) and len(row["loss_turns"]) == 3
    short = ModelScorer(model, ("loss",), torch.float32, max_length=10).score([multi])[0]
    assert short["loss"] is None and short["loss_error"].startswith("too_long")
