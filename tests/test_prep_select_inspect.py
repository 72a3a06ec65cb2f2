"""mm-prep inspect --scores: a valid PNG histogram per scalar metric, and a contact sheet naming the N lowest-
and highest-scored samples of each metric (with images and conversation)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    assert main(["synth", "--out", str(root), "--num-train", "12", "--num-eval", "2", "--max-objects", "2", "--no-ifeval",
                 "--no-progress", "--workers", "1"]) == 0  # fmt: skip
    shards = root / "instruct"
    keys = [s.key for s in iter_samples(shards)]
    rows = [{"key": k, "id": k, "source": "synth", "ifd": None if i == 5 else i / 10, "clip": (i * 7) % 12,
             "phash": ["0" * 16], "loss_turns": [1.0]} for i, k in enumerate(keys)]  # fmt: skip
    scores = root / "scores.jsonl"
    scores.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return shards, scores, keys


def sections(page: str) -> dict[str, list[str]]:
    """{heading: [sample keys in its table]} from the contact sheet."""
    out = {}
    for part in page.split("<h2")[1:]:
        heading = part[part.index(">") + 1 : part.index("</h2>")]
        out[heading] = [row.split(" / ")[1] for row in part.split('<div class="id">')[1:]]
    return out


def test_histograms_and_extremes(scored, tmp_path, capsys):
    shards, scores, keys = scored
    out = tmp_path / "report"
    assert main(["inspect", str(shards), "--scores", str(scores), "--out", str(out), "--n", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    paths = [out / "hist_ifd.png", out / "hist_clip.png", out / "extremes.html"]
    assert [line for line in printed if line.startswith(str(out))] == [str(p) for p in paths]
    assert "ifd: n 11, null 1, min 0, p5 0.05, median 0.6, p95 1.05, max 1.1, mean 0.5545" in printed
    for path in paths[:2]:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (720, 420)
            assert len(set(image.convert("RGB").getdata())) > 2  # bars and text drawn, not blank
    page = paths[2].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('src="data:image/png;base64,') == 12
    # ifd: i / 10 (5 is null, never shown); clip: (7 i) mod 12 -> i = 0, 7, 2 lowest (0, 1, 2), 5, 10, 3 highest (11, 10, 9)
    assert sections(page) == {
        "ifd: 3 lowest": [keys[0], keys[1], keys[2]], "ifd: 3 highest": [keys[11], keys[10], keys[9]],
        "clip: 3 lowest": [keys[0], keys[7], keys[2]], "clip: 3 highest": [keys[5], keys[10], keys[3]],
    }  # fmt: skip
    assert "ifd = 1.1" in page and "clip = 11" in page and "gpt:</b>" in page


def test_scores_positional_and_metric_choice(scored, tmp_path, capsys):
    shards, scores, keys = scored
    assert main(["inspect", str(scores), "--metrics", "clip"]) == 0  # no shards: histograms only, beside the scores
    printed = capsys.readouterr().out
    default = scores.with_name("scores_inspect")
    assert str(default / "hist_clip.png") in printed and "contact sheet" in printed and "--shards" in printed
    assert sorted(p.name for p in default.iterdir()) == ["hist_clip.png"]
    assert main(["inspect", str(scores), "--shards", str(shards), "--metrics", "ifd", "--n", "1", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert sections((tmp_path / "extremes.html").read_text()) == {"ifd: 1 lowest": [keys[0]], "ifd: 1 highest": [keys[11]]}


@pytest.mark.parametrize("options, message", [
    (["--metrics", "loss"], "--metrics: unknown metric 'loss'; the scores in"),
    (["--metrics", "phash"], "unknown metric 'phash'"),
    (["--n", "0"], "--n must be >= 1"),
])  # fmt: skip
def test_inspect_score_errors(scored, tmp_path, capsys, options, message):
    shards, scores, _ = scored
    assert main(["inspect", str(shards), "--scores", str(scores), "--out", str(tmp_path / "r"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mm-prep inspect: error: ") and message in err, err


def test_scores_of_other_shards(scored, tmp_path, capsys):
    shards, scores, _ = scored
    other = tmp_path / "other.jsonl"
    other.write_text(scores.read_text() + json.dumps({"key": "ghost", "ifd": 9.0}) + "\n")
    assert main(["inspect", str(shards), "--scores", str(other), "--out", str(tmp_path / "r")]) == 2
    assert "1 scored samples are not in the shards" in capsys.readouterr().err
