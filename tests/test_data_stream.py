"""mm.data: exact epochs over ranks and workers, mixtures, counted skips, resumable order."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from mm.data.dataset import ShardStreamDataset, StreamSettings
from mm.data.samples import SampleDecoder
from mm.data.shards import ShardSource, expand_urls, resolve_source
from mm.data.stream import Piece, consumer_bounds, slice_pieces
from mm.transforms import ImageTransform
from train_helpers import caption_record, png_bytes, tokenizer, write_shards, write_tar

TOKENIZER = tokenizer()


def decoder(max_length=None, template="plain"):
    transform = ImageTransform(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "pad")
    return SampleDecoder(TOKENIZER, template, image_tokens=2, image_transform=transform, max_length=max_length)


def dataset(sources, rank=0, world_size=1, workers=0, max_length=None, template="plain", **settings):
    settings = StreamSettings(**{"batch_size": 3, "shuffle_buffer": 5, **settings})
    resolved = [resolve_source(s) for s in sources]
    return ShardStreamDataset(resolved, decoder(max_length, template), TOKENIZER.pad_token_id, settings,
                              rank=rank, world_size=world_size, num_workers=workers)


def run_rank(data, workers):
    loader = DataLoader(data, batch_size=None, num_workers=workers)
    return list(loader)


def keys_of(batches):
    return [key.split("#")[1] for batch in batches if not batch["is_padding"] for key in batch["keys"]]


def test_expand_urls_braces_and_lists():
    assert expand_urls("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_urls(["x.tar", "b-{1,3}.tar"]) == ["x.tar", "b-1.tar", "b-3.tar"]
    assert expand_urls("p-{0..1}.tar::q.tar") == ["p-0.tar", "p-1.tar", "q.tar"]


def test_slices_cover_the_sequence_once():
    pieces = [Piece("a", 0, 5), Piece("b", 2, 4), Piece("c", 0, 1)]  # 8 samples
    seen = []
    for consumer in range(3):
        begin, end = consumer_bounds(8, consumer, 3)
        for piece in slice_pieces(pieces, begin, end):
            seen += [(piece.url, i) for i in range(piece.start, piece.stop)]
    assert seen == [("a", i) for i in range(5)] + [("b", 2), ("b", 3), ("c", 0)]
    assert [consumer_bounds(8, c, 3) for c in range(3)] == [(0, 2), (2, 5), (5, 8)]


@pytest.mark.parametrize("world_size,workers", [(2, 2), (3, 1), (1, 2)])
def test_every_sample_once_across_ranks_and_workers(tmp_path, world_size, workers):
    keys = write_shards(tmp_path, [7, 1, 4])  # uneven shards, fewer than consumers
    per_rank = [run_rank(dataset([ShardSource(str(tmp_path))], r, world_size, workers), workers)
                for r in range(world_size)]
    seen = Counter(k for batches in per_rank for k in keys_of(batches))
    assert seen == Counter(keys)
    lengths = {len(batches) for batches in per_rank}
    assert lengths == {len(dataset([ShardSource(str(tmp_path))], 0, world_size, workers))}


def test_padding_batches_are_masked(tmp_path):
    write_shards(tmp_path, [5])  # ranks get 2 and 3 samples; batch 2 -> quota of 2 batches each
    batches = run_rank(dataset([ShardSource(str(tmp_path))], 0, 2, 0, batch_size=2), 0)
    assert [b["is_padding"] for b in batches] == [False, True]
    assert (batches[1]["labels"] == -100).all()


def test_drop_uneven_tail_counts_dropped(tmp_path):
    write_shards(tmp_path, [7])
    data = dataset([ShardSource(str(tmp_path))], 0, 1, 2, batch_size=2, drop_uneven_tail=True)
    batches = run_rank(data, 2)  # consumers of 3 and 4 samples: 1 full batch each
    assert len(batches) == 2 and not any(b["is_padding"] for b in batches)
    dropped = sum(b["skipped"].get("dropped_uneven_tail", 0) for b in batches)
    assert dropped == 3 and len(keys_of(batches)) == 4


def test_mixture_weights_repeat_and_subsample(tmp_path):
    keys_a = write_shards(tmp_path / "a", [4, 4], prefix="a")
    keys_b = write_shards(tmp_path / "b", [3, 3], prefix="b")
    sources = [ShardSource(str(tmp_path / "a"), weight=2.0), ShardSource(str(tmp_path / "b"), weight=0.5)]
    seen = Counter(keys_of(run_rank(dataset(sources), 0)))
    assert all(seen[k] == 2 for k in keys_a)
    b_seen = [k for k in seen if k.startswith("b")]
    assert len(b_seen) == 3 and all(seen[k] == 1 for k in b_seen) and set(b_seen) <= set(keys_b)


def test_brace_pattern_and_pipe_urls(tmp_path):
    keys = write_shards(tmp_path, [2, 3])
    manifest = str(tmp_path / "manifest.json")
    brace = ShardSource(str(tmp_path / "shard-{000000..000001}.tar"), manifest=manifest)
    pipe = ShardSource([f"pipe:cat {tmp_path}/shard-000000.tar", f"pipe:cat {tmp_path}/shard-000001.tar"],
                       manifest=manifest)
    for source in (brace, pipe):
        assert sorted(keys_of(run_rank(dataset([source]), 0))) == sorted(keys)


def test_remote_url_without_manifest_is_a_clear_error():
    with pytest.raises(ValueError, match="manifest"):
        resolve_source(ShardSource("pipe:cat somewhere/shard-000.tar"))


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    good = caption_record("good", "red")
    bad_image = {**caption_record("badimg", "red"), "img0.png": b"not a png"}
    missing = {"json": caption_record("missing", "red")["json"]}
    bad_json = {"json": b"{oops", "img0.png": png_bytes()}
    truncated = caption_record("cut", "red", text="word " * 200)  # cut after its image: kept
    image_too_late = caption_record("late", "red", prompt="word " * 200)
    two_placeholders = caption_record("two", "red", prompt="<image>\n")  # 2 placeholders, 1 image
    user_role = caption_record("user", "red")
    meta = json.loads(user_role["json"])
    meta["conversations"][0]["from"] = "user"  # mm-prep rejects it: so does training (one contract)
    user_role["json"] = json.dumps(meta).encode()
    write_tar(tmp_path / "s-0.tar", {"good": good, "badimg": bad_image, "missing": missing,
                                      "badjson": bad_json, "cut": truncated, "late": image_too_late,
                                      "two": two_placeholders, "user": user_role})
    (tmp_path / "sizes.json").write_text(json.dumps({"s-0.tar": 8}))
    batches = run_rank(dataset([ShardSource(str(tmp_path))], max_length=60, batch_size=7, shuffle=False,
                              template="vicuna_v1"), 0)
    skipped = Counter()
    for batch in batches:
        skipped.update(batch["skipped"])
    assert keys_of(batches) == ["good", "cut"]
    assert batches[0]["input_ids"].shape == (2, 60)
    assert skipped == {"bad_image": 1, "missing_image": 1, "bad_json": 1, "too_long": 1, "image_mismatch": 1,
                       "bad_conversation": 1}


def test_truncated_shard_counts_lost_samples(tmp_path):
    write_shards(tmp_path, [6])
    tar = tmp_path / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    batches = run_rank(dataset([ShardSource(str(tmp_path))], batch_size=2), 0)
    lost = sum(b["skipped"].get("shard_error", 0) for b in batches)
    assert lost > 0 and len(keys_of(batches)) + lost == 6
    assert len(batches) == 3  # the quota still holds: masked batches fill in


def test_epochs_are_seeded_and_resume_replays_exactly(tmp_path):
    write_shards(tmp_path, [5, 6, 4])
    source = [ShardSource(str(tmp_path))]
    first = keys_of(run_rank(dataset(source, workers=2), 2))
    assert first == keys_of(run_rank(dataset(source, workers=2), 2))
    later = dataset(source, workers=2)
    later.epoch = 1
    assert keys_of(run_rank(later, 2)) != first and sorted(keys_of(run_rank(later, 2))) == sorted(first)


def test_resume_replays_exactly_including_padding(tmp_path):
    write_shards(tmp_path, [5, 6, 2])  # workers get 6 and 7 samples: 2 and 3 batches of 3, quota 3
    source = [ShardSource(str(tmp_path))]
    full = run_rank(dataset(source, workers=2), 2)
    assert [b["is_padding"] for b in full] == [False] * 4 + [True, False]  # worker 0 pads its third
    for skip in range(1, len(full)):
        resumed = dataset(source, workers=2)
        resumed.skip_batches = skip
        rest = run_rank(resumed, 2)
        assert [b["keys"] for b in rest] == [b["keys"] for b in full[skip:]]
        assert [b["is_padding"] for b in rest] == [b["is_padding"] for b in full[skip:]]


def test_unshuffled_order_is_shard_order(tmp_path):
    keys = write_shards(tmp_path, [3, 3])
    data = dataset([ShardSource(str(tmp_path))], shuffle=False)
    assert keys_of(run_rank(data, 0)) == keys
