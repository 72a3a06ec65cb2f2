"""Vision towers: open_clip (config JSON, weights file), transformers CLIP/SigLIP (local dirs), options, errors."""

import json

import pytest
import torch

from mm.config import VisionTowerConfig
from mm.tiny import tiny_config_path
from mm.vision import build_vision_tower


def pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def block_outputs(blocks, run) -> list[torch.Tensor]:
    """Outputs of every block, captured with hooks while `run()` does a plain forward."""
    captured = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for b in blocks]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return captured


# ----------------------------------------------------------------------------- open_clip
def open_clip_tower(**overrides):
    torch.manual_seed(0)
    return build_vision_tower(VisionTowerConfig(kind="open_clip", name_or_path=str(tiny_config_path("open_clip")), **overrides))


def test_open_clip_from_config_json_uses_patch_tokens_of_the_penultimate_block():
    tower = open_clip_tower().eval()
    assert (tower.hidden_size, tower.image_size, tower.num_patches, tower.num_tokens) == (64, 64, 64, 64)
    x = pixels()
    outputs = block_outputs(tower.visual.transformer.resblocks, lambda: tower.visual(x))
    assert len(outputs) == 3
    torch.testing.assert_close(tower(x), outputs[1][:, 1:])  # block 2 of 3, CLS dropped
    kept = open_clip_tower(keep_prefix_tokens=True, select_layer=-1).eval()
    kept.load_state_dict(tower.state_dict())
    assert kept.num_tokens == 65
    torch.testing.assert_close(kept(x), outputs[2])


def test_open_clip_from_a_local_weights_file(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    config = json.loads(tiny_config_path("open_clip").read_text())
    torch.manual_seed(5)
    clip = open_clip.CLIP(**config).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, tmp_path / "clip.pt")
    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, tmp_path / "visual.safetensors")
    reference = clip.visual.transformer.resblocks
    expected = block_outputs(reference, lambda: clip.visual(pixels()))[1][:, 1:]
    for weights in ("clip.pt", "visual.safetensors"):
        tower = open_clip_tower(pretrained=str(tmp_path / weights)).eval()
        torch.testing.assert_close(tower(pixels()), expected)


UNPICKLED = []


def _record_execution():
    UNPICKLED.append(True)
    return {}


class _Payload:
    """Unpickling this runs `_record_execution`: the stand-in for code hidden in a checkpoint."""

    def __reduce__(self):
        return (_record_execution, ())


def test_open_clip_weights_file_is_never_unpickled(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights_only"):
        open_clip_tower(pretrained=str(tmp_path / "evil.pt"))
    assert UNPICKLED == []


def test_open_clip_by_name_and_pretrained_tag(monkeypatch):
    """The tag path, with open_clip's download replaced by a local model (tests never touch the network)."""
    import open_clip

    config = json.loads(tiny_config_path("open_clip").read_text())
    torch.manual_seed(6)
    clip = open_clip.CLIP(**config).eval()
    clip.visual.image_mean, clip.visual.image_std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    calls = []

    def create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs.get("weights_only")))
        return clip

    monkeypatch.setattr(open_clip, "get_model_config", lambda name: config if name == "Tiny-ViT" else None)
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: {"url": "x"} if tag == "tiny-tag" else {})
    monkeypatch.setattr(open_clip, "create_model", create_model)
    tower = build_vision_tower(VisionTowerConfig(kind="open_clip", name_or_path="Tiny-ViT", pretrained="tiny-tag"))
    assert calls == [("Tiny-ViT", "tiny-tag", True)]
    expected = block_outputs(clip.visual.transformer.resblocks, lambda: clip.visual(pixels()))[1][:, 1:]
    torch.testing.assert_close(tower.eval()(pixels()), expected)
    assert (tower.image_mean, tower.image_std) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    # the checkpoint records the architecture and normalisation, so loading it needs no download
    resolved = tower.resolved_config()
    assert resolved.model_config == config and resolved.image_mean == [0.1, 0.2, 0.3]
    rebuilt = build_vision_tower(resolved, load_weights=False)
    assert len(calls) == 1 and rebuilt.image_std == [0.4, 0.5, 0.6]


def test_open_clip_unknown_name_or_tag_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'.*ViT-B-32"):
        build_vision_tower(VisionTowerConfig(kind="open_clip", name_or_path="ViT-Nope"))
    with pytest.raises(ValueError, match="known tags: .*openai"):
        build_vision_tower(VisionTowerConfig(kind="open_clip", name_or_path="ViT-B-32", pretrained="no-such-tag"))


# ----------------------------------------------------------------------------- transformers towers
@pytest.mark.parametrize("kind", ["hf_clip", "hf_siglip"])
def test_hf_tower_from_a_local_directory(kind, tmp_path):
    import transformers

    model_class = {"hf_clip": transformers.CLIPVisionModel, "hf_siglip": transformers.SiglipVisionModel}[kind]
    config_class = model_class.config_class
    torch.manual_seed(3)
    reference = model_class(config_class.from_dict(json.loads(tiny_config_path(kind).read_text()))).eval()
    reference.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}))
    tower = build_vision_tower(VisionTowerConfig(kind=kind, name_or_path=str(tmp_path))).eval()
    x = pixels()
    hidden = reference(pixel_values=x, output_hidden_states=True).hidden_states
    prefix = 1 if kind == "hf_clip" else 0
    torch.testing.assert_close(tower(x), hidden[-2][:, prefix:])
    assert tower.num_tokens == 64 and tower.num_prefix_tokens == prefix
    assert (tower.image_mean, tower.image_std) == ([0.1, 0.2, 0.3], [1, 2, 3])
    resolved = tower.resolved_config()
    assert resolved.model_config["hidden_size"] == 64 and resolved.image_mean == [0.1, 0.2, 0.3]


def test_hf_clip_from_a_full_clip_model_directory(tmp_path):
    """Published CLIP checkpoints (openai/clip-vit-*) hold text and vision towers."""
    import transformers

    vision = json.loads(tiny_config_path("hf_clip").read_text())
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 99}
    torch.manual_seed(4)
    clip = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
    clip.save_pretrained(tmp_path)
    tower = build_vision_tower(VisionTowerConfig(kind="hf_clip", name_or_path=str(tmp_path), select_layer=-1)).eval()
    expected = clip.vision_model(pixel_values=pixels(), output_hidden_states=True).hidden_states[-1][:, 1:]
    torch.testing.assert_close(tower(pixels()), expected)


def test_hf_layer_selection_and_prefix_options():
    config = VisionTowerConfig(kind="hf_clip", name_or_path=str(tiny_config_path("hf_clip")), select_layer=0,
                               keep_prefix_tokens=True)
    tower = build_vision_tower(config).eval()
    hidden = tower.model(pixel_values=pixels(), output_hidden_states=True).hidden_states
    assert len(hidden) == 4 and tower.num_tokens == 65
    torch.testing.assert_close(tower(pixels()), hidden[0])


def test_siglip_has_no_prefix_token_to_keep():
    tower = build_vision_tower(VisionTowerConfig(kind="hf_siglip", name_or_path=str(tiny_config_path("hf_siglip")),
                                                 keep_prefix_tokens=True))
    assert tower.num_tokens == 64 and tower(pixels()).shape == (2, 64, 64)
    assert tower.image_mean == [0.5, 0.5, 0.5]


# ----------------------------------------------------------------------------- errors
def test_unknown_tower_kind_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown vision tower 'clip'; valid names: \['hf_clip', 'hf_siglip', 'open_clip'\]"):
        build_vision_tower(VisionTowerConfig(kind="clip"))


@pytest.mark.parametrize("kind", ["hf_clip", "open_clip"])
def test_select_layer_out_of_range(kind):
    with pytest.raises(ValueError, match="select_layer=7 is out of range for a tower with 3 blocks"):
        build_vision_tower(VisionTowerConfig(kind=kind, name_or_path=str(tiny_config_path(kind)), select_layer=7))


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vision config JSON not found"):
        build_vision_tower(VisionTowerConfig(kind="hf_clip", name_or_path=str(tmp_path / "nope.json")))
