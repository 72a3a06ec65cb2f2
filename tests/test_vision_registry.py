"""Vision-tower kinds: one registry row each (mm.vision.VISION_TOWERS); everything listing kinds derives from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import mm.config
from mm.config import VisionTowerConfig
from mm.llava import check_exportable
from mm.tiny import ASSETS, TINY_LLMS, tiny_config_path, tiny_vision_kinds, tiny_vlm_config
from mm.vision import VISION_TOWERS, VisionTowerKind, build_vision_tower, llava_vision_kinds, vision_tower_kind
from mm.vision.hf import HFCLIPVisionTower

ROOT = Path(__file__).resolve().parents[1]


def _backticked(text: str) -> list[str]:
    return re.findall(r"`(\w+)`", text)


def test_architecture_lists_the_registry_kinds():
    match = re.search(r"^- Vision tower kinds: (.*?)\. ", (ROOT / "ARCHITECTURE.md").read_text(), re.MULTILINE)
    assert match, "ARCHITECTURE.md has no '- Vision tower kinds: ...' line"
    assert _backticked(match.group(1)) == list(VISION_TOWERS)


def test_readme_shows_every_kind_and_no_other():
    kinds = re.findall(r'VisionTowerConfig\(kind="(\w+)"', (ROOT / "README.md").read_text())
    assert set(kinds) == set(VISION_TOWERS)


def test_the_kind_field_help_lists_the_registry_kinds():
    """`VisionTowerConfig.kind`'s docstring (mm-train's CLI help) cannot import the registry: mm.vision imports
    mm.config."""
    source = Path(mm.config.__file__).read_text()
    match = re.search(r'kind: str = "\w+"\n\s+"""Tower family: one of (.*?)\."""', source)
    assert match and sorted(_backticked(match.group(1))) == sorted(VISION_TOWERS)


def test_rows_are_consistent_with_the_assets_and_each_other():
    vision_files = {name for name in (row.tiny_config for row in VISION_TOWERS.values()) if name}
    llm_files = {f"{name}.json" for name in TINY_LLMS}
    assert vision_files | llm_files == {path.name for path in (ASSETS / "configs").glob("*.json")}
    assert tiny_vision_kinds() == {kind: row.tiny_config for kind, row in VISION_TOWERS.items()}
    model_types = [t for row in VISION_TOWERS.values() for t in row.llava_model_types]
    assert len(model_types) == len(set(model_types))  # one kind per transformers model_type
    assert llava_vision_kinds() == {"clip_vision_model": "hf_clip", "siglip_vision_model": "hf_siglip"}
    for kind, row in VISION_TOWERS.items():  # a llava-hf model_type is the tower's own transformers model_type
        if row.llava_model_types:
            tower = build_vision_tower(VisionTowerConfig(kind=kind, name_or_path=str(tiny_config_path(kind))))
            assert tower.model.config.model_type in row.llava_model_types


def test_unknown_kind_lists_the_valid_names():
    valid = r"\['hf_clip', 'hf_siglip', 'open_clip'\]"
    with pytest.raises(ValueError, match=rf"unknown vision tower 'clip'; valid names: {valid}"):
        vision_tower_kind("clip")


def test_a_new_kind_is_one_row(monkeypatch):
    """A row added to the registry is built, mapped from llava-hf, exportable and has its tiny model."""
    monkeypatch.setitem(VISION_TOWERS, "hf_clip_copy",
                        VisionTowerKind(HFCLIPVisionTower, ("clip_copy_vision_model",), "hf_clip.json"))
    assert llava_vision_kinds()["clip_copy_vision_model"] == "hf_clip_copy"
    assert tiny_config_path("hf_clip_copy") == tiny_config_path("hf_clip")
    tower = build_vision_tower(VisionTowerConfig(kind="hf_clip_copy", name_or_path=str(tiny_config_path("hf_clip"))))
    assert isinstance(tower, HFCLIPVisionTower)
    model = mm.build_vlm(tiny_vlm_config(vision="hf_clip_copy"))
    check_exportable(model)  # raises for a kind with no llava-hf model_type
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[:2] == (1, 3)
    with pytest.raises(ValueError, match=r"valid names: \[.*'hf_clip_copy'"):
        vision_tower_kind("nope")
