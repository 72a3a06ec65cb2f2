"""AUROC of data scores against planted noise, checked by hand and against a pairwise count."""

import json
import random

import pytest

from data_prep.curation_report import auroc, main, noise_report


def pairwise(noisy, clean):
    wins = sum((n > c) + 0.5 * (n == c) for n in noisy for c in clean)
    return wins / (len(noisy) * len(clean))


def test_auroc_by_hand():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([2], [1, 2, 3]) == 0.5  # one win, one tie, one loss
    assert auroc([1, 1], [1, 1]) == 0.5


def test_auroc_equals_the_pairwise_count_with_ties():
    rng = random.Random(0)
    for _ in range(50):
        noisy = [rng.randint(0, 5) for _ in range(rng.randint(1, 9))]
        clean = [rng.randint(0, 5) for _ in range(rng.randint(1, 9))]
        assert auroc(noisy, clean) == pytest.approx(pairwise(noisy, clean))


def test_report_orients_each_metric_and_splits_kinds(tmp_path):
    scores = [{"id": "a", "loss": 3.0, "image_reliance": 0.0}, {"id": "b", "loss": 2.0, "image_reliance": 0.5},
              {"id": "c", "loss": 1.0, "image_reliance": 1.0}, {"id": "d", "loss": None, "image_reliance": 0.9}]
    noise = [{"id": "a", "kind": "wrong_answer"}, {"id": "b", "kind": "wrong_image"}]
    report = noise_report(scores, noise)
    # loss: noisy {3, 2} above clean {1} (d is null) -> 1.0; image_reliance: noisy {0, .5} below clean {1, .9} -> 1.0
    assert report["loss"] == {"auroc": 1.0, "n_noisy": 2, "n_clean": 1, "null": 1,
                              "auroc_wrong_answer": 1.0, "auroc_wrong_image": 1.0}
    assert report["image_reliance"]["auroc"] == 1.0 and "ifd" not in report
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
    (tmp_path / "n.jsonl").write_text(json.dumps({"id": "zz", "kind": "wrong_image"}) + "\n")
    assert main([str(tmp_path / "s.jsonl"), str(tmp_path / "n.jsonl")]) == 2  # a noisy id without a score
