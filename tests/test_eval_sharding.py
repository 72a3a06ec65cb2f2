"""Rank sharding covers every question once; gathering keeps one answer per id; torn tails are cut."""

import json

import pytest

from eval.distributed import gather, shard
from eval.predictions import PredictionFileError, append_predictions, recover_partial


@pytest.mark.parametrize("n, world", [(0, 2), (1, 3), (10, 1), (10, 3), (17, 4), (5, 8)])
def test_shard_covers_every_item_exactly_once(n, world):
    items = [f"q{i}" for i in range(n)]
    parts = [shard(items, rank, world) for rank in range(world)]
    flat = [x for part in parts for x in part]
    assert sorted(flat) == sorted(items) and len(flat) == n
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_rejects_bad_rank():
    with pytest.raises(ValueError):
        shard([1, 2], 2, 2)


def _rec(qid, text="a"):
    return {"question_id": qid, "prompt": "", "text": text, "model_id": "m", "metadata": {}}


def test_gather_merges_parts_without_duplicates(tmp_path):
    append_predictions(tmp_path / "predictions.jsonl", [_rec(1, "old")])
    append_predictions(tmp_path / "predictions.rank0.jsonl", [_rec(2), _rec(4)])
    append_predictions(tmp_path / "predictions.rank1.jsonl", [_rec(3), _rec(1, "dup")])
    assert gather(tmp_path) == 4
    merged = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["question_id"] for r in merged) == [1, 2, 3, 4]
    assert next(r for r in merged if r["question_id"] == 1)["text"] == "old"
    assert not list(tmp_path.glob("predictions.rank*"))


def test_recover_partial_truncates_only_a_torn_tail(tmp_path):
    path = tmp_path / "p.jsonl"
    append_predictions(path, [_rec(1), _rec("x")])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"question_id": 7, "te')
    assert recover_partial(path, truncate=False) == {"1", "x"}
    assert path.read_bytes() != whole  # read-only mode leaves the file alone
    assert recover_partial(path) == {"1", "x"}
    assert path.read_bytes() == whole
    # a complete JSON line without its newline is also torn (the write may have stopped before "\n")
    path.write_bytes(whole + json.dumps(_rec(8)).encode())
    assert recover_partial(path) == {"1", "x"} and path.read_bytes() == whole


def test_recover_partial_refuses_damage_in_the_middle(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\nnot json\n{"question_id": 2, "text": "b"}\n')
    with pytest.raises(PredictionFileError, match=r"p.jsonl:2: not valid JSON .*not the last line"):
        recover_partial(path)
