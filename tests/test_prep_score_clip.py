"""`mm-prep score --metrics clip` with a tiny open_clip model (config registered from a JSON file, random weights
saved locally): the cosine against a hand computation, safe weight loading, errors. No network."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_prep_score_free import make_shards, read_scores

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}  # fmt: skip


class NotWeights:
    """Pickled by reference: torch.load(weights_only=True) must refuse to build it."""


@pytest.fixture(scope="module")
def clip_setup(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("score_clip")
    config = root / "mm-test-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("mm-test-tiny-clip")
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "clip.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "clip.bin")
    return root, make_shards(root), config, model.eval(), preprocess, open_clip.get_tokenizer("mm-test-tiny-clip")


@torch.no_grad()
def _hand_clip(model, preprocess, tokenizer, sample) -> float | None:
    from mm.images import load_rgb

    if not sample.images:
        return None
    images = F.normalize(model.encode_image(torch.stack([preprocess(load_rgb(b)) for b in sample.images])), dim=-1)
    image = F.normalize(images.mean(0), dim=-1)
    answers = "\n".join(m["value"] for m in sample.record["conversations"] if m["from"] == "gpt")
    text = F.normalize(model.encode_text(tokenizer([answers]))[0], dim=-1)
    return float(image @ text)


@pytest.mark.parametrize("weights", ["clip.safetensors", "clip.bin"])
def test_clip_cosine_matches_hand_computation(clip_setup, tmp_path, weights):
    root, shards, config, model, preprocess, tokenizer = clip_setup
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(shards), "--metrics", "clip", "--clip-model", str(config), "--clip-pretrained",
                 str(root / weights), "--device", "cpu", "--batch-size", "3", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    scores = read_scores(out)
    for sample in iter_samples(shards):
        expected = _hand_clip(model, preprocess, tokenizer, sample)
        actual = scores[sample.key]["clip"]
        if expected is None:
            assert actual is None and sample.record["id"] == "text"
        else:
            assert abs(actual - expected) < 1e-5 and -1 <= actual <= 1


def test_clip_weights_are_loaded_safely(clip_setup, tmp_path, capsys):
    _, shards, config, *_ = clip_setup
    pickled = tmp_path / "evil.bin"
    torch.save({"weights": NotWeights()}, pickled)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"visual.proj": torch.zeros(2, 2)}, str(wrong))
    for path, message in [(pickled, "not a weights-only torch file"), (wrong, "does not fit mm-test-tiny-clip"),
                          (tmp_path / "missing.safetensors", "no such file")]:  # fmt: skip
        argv = ["score", str(shards), "--metrics", "clip", "--clip-model", str(config), "--clip-pretrained", str(path),
                "--out", str(tmp_path / "s.jsonl"), "--no-progress"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mm-prep score: error: ") and message in err[0], err
    assert not list(tmp_path.glob("s.jsonl*"))


def test_unknown_clip_model_or_tag(clip_setup, tmp_path, capsys):
    _, shards, *_ = clip_setup
    base = ["score", str(shards), "--metrics", "clip", "--out", str(tmp_path / "s.jsonl"), "--no-progress"]
    assert main([*base, "--clip-model", "no-such-clip", "--clip-pretrained", "openai"]) == 2
    assert "is not an open_clip model" in capsys.readouterr().err
    assert main([*base, "--clip-model", "ViT-B-32", "--clip-pretrained", "no_such_tag"]) == 2
    assert "neither a file nor a pretrained tag of ViT-B-32 (tags: openai" in capsys.readouterr().err
