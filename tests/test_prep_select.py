"""mm-prep select: each rule keeps exactly what it says, in the documented order, on real shards; the
selection is a shard set like any other (bytes copied verbatim, manifest, dropped.jsonl); errors are one line."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples
from data_prep.select import _chunks, _DuplicateIndex
from mm.data.shards import ShardSource, resolve_source

N = 20


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--num-train", str(N), "--num-eval", "2", "--max-objects", "2", "--no-ifeval",
                 "--no-progress", "--workers", "1", "--samples-per-shard", "7"]) == 0  # fmt: skip
    return out / "instruct"


def keys_of(directory) -> list[str]:
    return [sample.key for sample in iter_samples(directory)]


def write_scores(path: Path, directory: Path, columns: dict[str, list]) -> list[str]:
    """One line per sample of `directory` in shard order; columns[name][i] is sample i's value."""
    samples = list(iter_samples(directory))
    rows = []
    for i, sample in enumerate(samples):
        row = {"key": sample.key, "id": sample.record["id"], "source": sample.record["source"]}
        row.update({name: values[i] for name, values in columns.items()})
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [sample.key for sample in samples]


def select(capsys, shards, scores, out, *options) -> tuple[int, str]:
    code = main(["select", str(shards), "--scores", str(scores), "--out", str(out), "--samples-per-shard", "4", *options])
    captured = capsys.readouterr()
    return code, captured.err if code else captured.out


def dropped(out: Path) -> dict[str, str]:
    return {row["key"]: row["reason"] for row in map(json.loads, (out / "dropped.jsonl").read_text().splitlines())}


# ifd = 0.1 * i (null for i = 3, 11); image_reliance 0.01 for i % 4 == 0, else 0.5; loss = i % 3
IFD = [None if i in (3, 11) else round(0.1 * i, 2) for i in range(N)]
RELIANCE = [0.01 if i % 4 == 0 else 0.5 for i in range(N)]
LOSS = [i % 3 for i in range(N)]


@pytest.fixture(scope="module")
def scored(synth, tmp_path_factory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("scores") / "scores.jsonl"
    keys = write_scores(path, synth, {"ifd": IFD, "image_reliance": RELIANCE, "loss": LOSS, "phash": [[None]] * N,
                                      "loss_turns": [[1.0, 2.0]] * N})  # fmt: skip
    return path, keys


def test_where_then_top(synth, scored, tmp_path, capsys):
    scores, keys = scored
    out = tmp_path / "sel"
    code, printed = select(capsys, synth, scores, out, "--where", "ifd < 1.5 and image_reliance > 0.05", "--top", "0.5", "--by", "ifd")
    assert code == 0, printed
    # where: nulls 3, 11 -> null_ifd; i % 4 == 0 (0, 4, 8, 12) and ifd >= 1.5 (15..19) -> where;
    # survivors 1 2 5 6 7 9 10 13 14 (9); top 0.5 of 9 = round(4.5) = 5 (halves up): 14 13 10 9 7
    assert keys_of(out) == [keys[i] for i in (7, 9, 10, 13, 14)]  # parents' order
    reasons = dropped(out)
    assert reasons == {**{keys[i]: "null_ifd" for i in (3, 11)}, **{keys[i]: "where" for i in (0, 4, 8, 12, 15, 16, 17, 18, 19)},
                       **{keys[i]: "top" for i in (1, 2, 5, 6)}}  # fmt: skip
    assert "5 kept" in printed and "15 dropped" in printed
    out = tmp_path / "asc"
    assert select(capsys, synth, scores, out, "--where", "ifd < 1.5 and image_reliance > 0.05", "--top", "0.5",
                  "--by", "ifd", "--ascending")[0] == 0  # fmt: skip
    assert keys_of(out) == [keys[i] for i in (1, 2, 5, 6, 7)]


def test_order_where_before_top(synth, scored, tmp_path, capsys):
    """top alone ranks every sample: top 0.25 of 20 = 5 highest non-null (19..15); with where first, of the survivors."""
    scores, keys = scored
    assert select(capsys, synth, scores, tmp_path / "a", "--top", "0.25", "--by", "ifd")[0] == 0
    assert keys_of(tmp_path / "a") == [keys[i] for i in (15, 16, 17, 18, 19)]
    assert select(capsys, synth, scores, tmp_path / "b", "--top", "0.25", "--by", "ifd", "--where", "loss == 0")[0] == 0
    # loss == 0: 0 3 6 9 12 15 18, 3 is null (null_ifd); 6 survivors -> round(1.5) = 2 (halves up): 18, 15
    assert keys_of(tmp_path / "b") == [keys[i] for i in (15, 18)]


def test_top_counts_nulls_and_breaks_ties_by_key(synth, tmp_path, capsys):
    scores = tmp_path / "s.jsonl"
    keys = write_scores(scores, synth, {"m": [None if i < 15 else 1.0 for i in range(N)]})
    assert select(capsys, synth, scores, tmp_path / "a", "--top", "0.2", "--by", "m")[0] == 0
    # 0.2 of 20 = 4 of the 5 tied non-null values: the 4 smallest keys; nulls dropped as null_m
    assert sorted(keys_of(tmp_path / "a")) == sorted(keys[15:])[:4]
    reasons = dropped(tmp_path / "a")
    assert [reasons[k] for k in keys[:15]] == ["null_m"] * 15 and reasons[sorted(keys[15:])[4]] == "top"
    assert select(capsys, synth, scores, tmp_path / "b", "--top", "1", "--by", "m")[0] == 0
    assert len(keys_of(tmp_path / "b")) == 5  # all 20 asked, 5 rankable


@pytest.mark.parametrize("expression, expected", [
    ("0.2 <= ifd * 2 < 1", [1, 2, 4]),  # chained; ifd 0.1 0.2 0.4 (3 null)
    ("not loss != 0 and ifd < 1", [0, 6, 9]),
    ("(ifd + loss) / 2 > 1.5 or -loss < -1.5 and ifd < 0.6", [2, 5, 14, 17]),  # 14: 1.4 + 2, 17: 1.7 + 2
    ("ifd >= 1.8", [18, 19]),
])  # fmt: skip
def test_where_expressions(synth, scored, tmp_path, capsys, expression, expected):
    scores, keys = scored
    assert select(capsys, synth, scores, tmp_path / "o", "--where", expression)[0] == 0
    assert keys_of(tmp_path / "o") == [keys[i] for i in expected]
    reasons = dropped(tmp_path / "o")
    assert reasons[keys[3]] == reasons[keys[11]] == "null_ifd"  # a null fails whatever else the expression says


# --------------------------------------------------------------------------------------------- dedup


def ahash(data: bytes) -> str:
    """An 8x8 average hash: a stand-in for `mm-prep score`'s pHash (equal images give equal hashes)."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((8, 8)), dtype=float).ravel()
    return f"{int(''.join('1' if p > pixels.mean() else '0' for p in pixels), 2):016x}"


def minhash(text: str, num_perm: int = 64) -> list[int]:
    """MinHash of word 3-shingles (a stand-in for datasketch's): equal texts give equal signatures."""
    words = text.lower().split()
    shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
    return [min(int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4, salt=j.to_bytes(8, "little")).digest(), "little")
                for s in shingles) for j in range(num_perm)]  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, dict]:
    """llava shards from two folders (sources mix/coco, mix/ocr); a2 reuses a0's image file, a3 repeats a1's text."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    records = []
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau"]
    for folder, count in (("coco", 6), ("ocr", 6)):
        (root / "images" / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / folder / f"{i}.png")
            text = " ".join(random.Random(f"{folder}{i}").choices(words, k=12))
            records.append({"id": f"{folder[0]}{i}", "image": f"{folder}/{i}.png",
                            "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": text}]})  # fmt: skip
    records[2]["image"] = records[0]["image"]  # c2 shows c0's image
    records[3]["conversations"] = records[1]["conversations"]  # c3 says what c1 says
    (root / "mix.json").write_text(json.dumps(records))
    shards = root / "shards"
    assert main(["llava", "--annotations", str(root / "mix.json"), "--image-root", str(root / "images"), "--out", str(shards),
                 "--source-by-image-dir", "--workers", "1", "--no-progress", "--samples-per-shard", "5"]) == 0  # fmt: skip
    samples = list(iter_samples(shards))
    rows = [{"key": s.key, "id": s.record["id"], "source": s.record["source"], "phash": [ahash(d) for d in s.images],
             "minhash": minhash(" ".join(m["value"] for m in s.record["conversations"])),
             "quality": int(s.record["id"][1:])} for s in samples]  # fmt: skip
    scores = root / "scores.jsonl"
    scores.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return shards, scores, {s.record["id"]: s.key for s in samples}


def test_dedup_finds_planted_duplicates(planted, tmp_path, capsys):
    shards, scores, key = planted
    order = keys_of(shards)
    first = lambda a, b: (a, b) if order.index(key[a]) < order.index(key[b]) else (b, a)
    (image_kept, image_dup), (text_kept, text_dup) = first("c0", "c2"), first("c1", "c3")
    code, printed = select(capsys, shards, scores, tmp_path / "o", "--dedup", "phash:4,minhash:0.8")
    assert code == 0, printed
    rows = {row["key"]: row for row in map(json.loads, (tmp_path / "o" / "dropped.jsonl").read_text().splitlines())}
    assert rows == {
        key[image_dup]: {"key": key[image_dup], "id": image_dup, "source": "mix/coco", "reason": f"duplicate_of:{key[image_kept]}",
                         "duplicate_by": "phash", "phash_distance": 0},
        key[text_dup]: {"key": key[text_dup], "id": text_dup, "source": "mix/coco", "reason": f"duplicate_of:{key[text_kept]}",
                        "duplicate_by": "minhash", "jaccard": 1.0},
    }  # fmt: skip
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["selection"]["dropped_by_reason"] == {"duplicate_of": 2}
    assert manifest["selection"]["duplicates_by"] == {"minhash": 1, "phash": 1}
    # only one signal asked: only its duplicates go
    assert select(capsys, shards, scores, tmp_path / "p", "--dedup", "phash:0")[0] == 0
    assert set(dropped(tmp_path / "p")) == {key[image_dup]}
    # --by decides which copy stays: the higher `quality` (= the number in the id), whatever the shard order
    assert select(capsys, shards, scores, tmp_path / "q", "--dedup", "phash:4,minhash:1.0", "--by", "quality")[0] == 0
    assert dropped(tmp_path / "q") == {key["c0"]: f"duplicate_of:{key['c2']}", key["c1"]: f"duplicate_of:{key['c3']}"}
    assert select(capsys, shards, scores, tmp_path / "r", "--dedup", "minhash:1", "--by", "quality", "--ascending")[0] == 0
    assert dropped(tmp_path / "r") == {key["c3"]: f"duplicate_of:{key['c1']}"}


def test_dedup_thresholds_are_inclusive_and_exact():
    """phash within D bits, or MinHash agreement >= T, are found wherever the differences lie (pigeonhole bands)."""
    base = 0x0123456789ABCDEF
    index = _DuplicateIndex(4, None)
    assert index.find("a", {"phash": [f"{base:016x}"]}) is None
    assert index.find("b", {"phash": [f"{base ^ 0x8000_0100_0010_0001:016x}"]}) == ("a", {"duplicate_by": "phash", "phash_distance": 4})
    assert index.find("c", {"phash": [f"{base ^ 0x8000_0100_0010_0003:016x}"]}) is None  # 5 bits: kept (b was dropped)
    num_perm, threshold = 100, 0.8
    signature = list(range(1000, 1000 + num_perm))
    bands = _chunks(num_perm, 21)  # floor(100 * 0.2) + 1
    worst = list(signature)
    for start, _ in bands[:20]:  # 20 mismatches, one in each of 20 bands: estimate exactly 0.8
        worst[start] = 7
    index = _DuplicateIndex(None, threshold)
    assert index.find("a", {"minhash": signature}) is None
    assert index.find("b", {"minhash": worst}) == ("a", {"duplicate_by": "minhash", "jaccard": 0.8})
    worst[bands[20][0]] = 7  # 21 mismatches: 0.79
    assert index.find("c", {"minhash": worst}) is None
    empty = [(1 << 32) - 1] * num_perm  # datasketch's signature of a text without words: never a duplicate
    assert index.find("d", {"minhash": empty}) is None and index.find("e", {"minhash": empty}) is None


@pytest.mark.parametrize("distance, threshold", [(3, None), (None, 0.7), (6, 0.5), (0, 1.0)])
def test_dedup_matches_a_pairwise_scan(distance, threshold):
    """Against the brute-force greedy scan on clustered random signatures."""
    rng = random.Random(1)
    centres = [(rng.getrandbits(64), [rng.getrandbits(32) for _ in range(32)]) for _ in range(15)]
    rows = []
    for i in range(300):
        phash, signature = centres[rng.randrange(15)]
        for _ in range(rng.randrange(8)):
            phash ^= 1 << rng.randrange(64)
        rate = rng.choice([0, 0.1, 0.25, 0.4, 0.6])  # agreement with the centre ~ 1 - rate
        signature = [rng.getrandbits(32) if rng.random() < rate else v for v in signature]
        rows.append((f"k{i:03d}", {"phash": [f"{phash:016x}"], "minhash": signature}))
    index, kept, expected = _DuplicateIndex(distance, threshold), [], {}
    for key, row in rows:
        for other_key, other in kept:
            near = distance is not None and bin(int(row["phash"][0], 16) ^ int(other["phash"][0], 16)).count("1") <= distance
            similar = threshold is not None and np.mean(np.equal(row["minhash"], other["minhash"])) >= threshold
            if near or similar:
                expected[key] = other_key
                break
        else:
            kept.append((key, row))
    found = {}
    for key, row in rows:
        match = index.find(key, row)
        if match is not None:
            found[key] = match[0]
    assert found == expected and 0 < len(expected) < 290


# --------------------------------------------------------------------------------------------- quota, random


def test_per_source_quota(planted, tmp_path, capsys):
    shards, scores, key = planted
    assert select(capsys, shards, scores, tmp_path / "a", "--per-source-quota", "mix/coco=0.5", "--by", "quality")[0] == 0
    kept = {s.record["id"] for s in iter_samples(tmp_path / "a")}
    assert kept == {"c3", "c4", "c5", *(f"o{i}" for i in range(6))}  # half of coco, best quality; ocr unlimited
    assert set(dropped(tmp_path / "a").values()) == {"quota:mix/coco"}
    assert select(capsys, shards, scores, tmp_path / "b", "--per-source-quota", "mix/ocr=2,mix/coco=1", "--by", "quality",
                  "--ascending")[0] == 0  # fmt: skip
    assert {s.record["id"] for s in iter_samples(tmp_path / "b")} == {"c0", "o0", "o1"}
    # without --by: a seeded draw of the asked size
    for name in ("c", "d"):
        assert select(capsys, shards, scores, tmp_path / name, "--per-source-quota", "mix/coco=2,mix/ocr=0.5", "--seed", "3")[0] == 0
    drawn = [s.record["id"] for s in iter_samples(tmp_path / "c")]
    assert drawn == [s.record["id"] for s in iter_samples(tmp_path / "d")]
    assert sum(i.startswith("c") for i in drawn) == 2 and sum(i.startswith("o") for i in drawn) == 3
    # quota comes after dedup: c2 (c0's image; dropped, as --by ranks c0 first) is gone before coco's best 3 are chosen
    assert select(capsys, shards, scores, tmp_path / "e", "--dedup", "phash:0", "--per-source-quota", "mix/coco=3",
                  "--by", "quality", "--ascending")[0] == 0  # fmt: skip
    assert {s.record["id"] for s in iter_samples(tmp_path / "e") if s.record["id"][0] == "c"} == {"c0", "c1", "c3"}
    assert dropped(tmp_path / "e") == {key["c2"]: f"duplicate_of:{key['c0']}", key["c4"]: "quota:mix/coco", key["c5"]: "quota:mix/coco"}


def test_random_is_seeded_and_the_size_of_top(synth, scored, tmp_path, capsys):
    scores, keys = scored
    sets = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert select(capsys, synth, scores, tmp_path / name, "--random", "0.3", "--seed", seed)[0] == 0
        sets[name] = keys_of(tmp_path / name)
    assert select(capsys, synth, scores, tmp_path / "top", "--top", "0.3", "--by", "loss")[0] == 0
    assert len(sets["a"]) == len(keys_of(tmp_path / "top")) == 6  # round(0.3 * 20)
    assert sets["a"] == sets["b"] != sets["c"]
    assert sets["a"] == [k for k in keys if k in sets["a"]]  # parents' order
    assert set(dropped(tmp_path / "a").values()) == {"random"}
    expected = random.Random(0).sample(keys, 6)  # documented: random.Random(seed).sample of the pool in shard order
    assert set(sets["a"]) == set(expected)


# --------------------------------------------------------------------------------------------- output


def members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def test_output_is_a_shard_set_with_the_parents_bytes(synth, scored, tmp_path, capsys):
    scores, keys = scored
    out = tmp_path / "sel"
    assert select(capsys, synth, scores, out, "--where", "loss > 0")[0] == 0
    kept = [keys[i] for i in range(N) if LOSS[i] > 0]
    assert keys_of(out) == kept
    parent = {}
    for tar in sorted(synth.glob("shard-*.tar")):
        for name, data in members(tar):
            parent.setdefault(name.split(".")[0], []).append((name, data))
    copied = {}
    for tar in sorted(out.glob("shard-*.tar")):
        for name, data in members(tar):
            copied.setdefault(name.split(".")[0], []).append((name, data))
    assert copied == {k: parent[k] for k in kept}  # same member names, same bytes, same member order
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "mm-shards/1"
    assert [s["num_samples"] for s in manifest["shards"]] == [4, 4, 4, 1]  # --samples-per-shard 4, 13 kept
    for entry in manifest["shards"]:
        data = (out / entry["name"]).read_bytes()
        assert entry["num_bytes"] == len(data) and entry["crc32"] == f"{zlib.crc32(data):08x}"
        assert entry["num_images"] == entry["num_records"] == entry["num_samples"]
    assert manifest["num_samples"] == manifest["num_records_written"] == manifest["num_images"] == 13
    assert manifest["num_input_records"] == N and manifest["num_rejected"] == 7
    assert manifest["rejected_by_reason"] == manifest["selection"]["dropped_by_reason"] == {"where": 7}
    selection = manifest["selection"]
    assert selection["rule"] == {"where": "loss > 0", "dedup": None, "top": None, "by": None, "ascending": False,
                                 "per_source_quota": None, "random": None, "seed": 0}  # fmt: skip
    assert selection["scores"] == {"path": str(scores.resolve()), "sha256": hashlib.sha256(scores.read_bytes()).hexdigest()}
    assert selection["num_parent_samples"] == N and selection["num_kept"] == 13 and selection["num_dropped"] == 7
    assert selection["kept_by_source"] == {"synth": 13}
    assert manifest["input"]["selected_from"] == str(synth.resolve())
    assert manifest["input"]["parent_shards"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert manifest["source"] == "synth" and manifest["command"][:2] == ["mm-prep", "select"]
    assert json.loads((out / "sizes.json").read_text()) == {s["name"]: s["num_samples"] for s in manifest["shards"]}
    assert [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()] == [
        {"key": keys[i], "id": keys[i], "source": "synth", "reason": "where"} for i in range(N) if LOSS[i] == 0
    ]  # shard order; keys of synth samples are their ids
    resolved = resolve_source(ShardSource(str(out)))  # what mm-train reads
    assert resolved.num_samples == 13 and [Path(s.url).name for s in resolved.shards] == [s["name"] for s in manifest["shards"]]
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 13
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    # the selection itself can be selected from (scores carried over by key)
    sub_scores = tmp_path / "sub.jsonl"
    sub_scores.write_text("".join(line + "\n" for line in scores.read_text().splitlines() if json.loads(line)["key"] in kept))
    assert select(capsys, out, sub_scores, tmp_path / "again", "--where", "loss > 1")[0] == 0
    assert keys_of(tmp_path / "again") == [keys[i] for i in range(N) if LOSS[i] > 1]


def test_rerun_needs_overwrite(synth, scored, tmp_path, capsys):
    scores, _ = scored
    out = tmp_path / "sel"
    assert select(capsys, synth, scores, out, "--random", "0.5")[0] == 0
    code, err = select(capsys, synth, scores, out, "--random", "0.25")
    assert code == 2 and "is not empty" in err and "--overwrite" in err
    assert len(keys_of(out)) == 10
    assert select(capsys, synth, scores, out, "--random", "0.25", "--overwrite")[0] == 0
    assert len(keys_of(out)) == 5 and len(list(out.glob("shard-*.tar"))) == 2
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert select(capsys, synth, scores, tmp_path / "busy", "--random", "0.5")[0] == 2
    code, err = select(capsys, synth, scores, synth, "--random", "0.5", "--overwrite")
    assert code == 2 and "being selected from" in err and len(keys_of(synth)) == N


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("options, message", [
    (["--where", "ifd <"], "not an expression"),
    (["--where", "__import__('os').system('true')"], "allowed: metric names"),
    (["--where", "ifd.real > 0"], "allowed: metric names"),
    (["--where", "ifd ** 2 > 0"], "allowed: metric names"),
    (["--where", "ifd"], "must be a comparison"),
    (["--where", "ifd > 'a'"], "allowed: metric names"),
    (["--where", "ifd in [1]"], "comparison operator not allowed"),
    (["--where", "ifd > 1 and 2"], "must be a comparison"),
    (["--where", "idf > 1"], "unknown metric 'idf'; the scores have ifd, image_reliance, loss"),
    (["--where", "phash > 1"], "unknown metric 'phash'"),  # a list column, not a scalar
    (["--top", "0.5", "--by", "clip"], "--by: unknown metric 'clip'; the scores in"),
    (["--top", "0.5"], "--top needs --by"),
    (["--top", "0", "--by", "ifd"], "must be in (0, 1], got 0"),
    (["--top", "1.5", "--by", "ifd"], "must be in (0, 1], got 1.5"),
    (["--random", "-0.1"], "must be in (0, 1]"),
    (["--random", "half"], "--random: 'half' is not a number"),
    (["--random", "0.5", "--top", "0.5", "--by", "ifd"], "exclude each other"),
    (["--per-source-quota", "synth=1.5"], "must be in (0, 1]"),
    (["--per-source-quota", "coco=0.5"], "no samples of source 'coco'; the shards have synth (20)"),
    (["--per-source-quota", "synth"], "is not SOURCE=FRACTION or SOURCE=COUNT"),
    (["--dedup", "phash:x"], "phash:D needs a whole distance"),
    (["--dedup", "minhash:0.8"], "have no `minhash` column"),
    (["--dedup", "jaccard:0.8"], "is not phash or minhash"),
    (["--ascending"], "--ascending needs --by"),
])  # fmt: skip
def test_rule_errors(synth, scored, tmp_path, capsys, options, message):
    scores, _ = scored
    code, err = select(capsys, synth, scores, tmp_path / "o", *options)
    assert code == 2
    assert err.startswith("mm-prep select: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "o").exists()


def test_scores_that_do_not_match_the_shards(synth, scored, tmp_path, capsys):
    scores, keys = scored
    lines = scores.read_text().splitlines()
    cases = {
        "missing": (lines[:-2], rf"2 of the {N} shard samples have no score line \(e.g. '{keys[-2]}', '{keys[-1]}'\)"),
        "extra": ([*lines, json.dumps({"key": "ghost", "ifd": 1})], r"1 score keys are not in the shards \(e.g. 'ghost'\)"),
        "duplicate": ([*lines, lines[4]], rf"1 duplicate keys, e.g. '{keys[4]}' on lines 5 and {N + 1}"),
        "other_id": ([lines[0].replace(f'"id": "{keys[0]}"', '"id": "someone-else"'), *lines[1:]],
                     r"1 score lines name another record id"),
        "not_json": ([*lines[:3], "{oops", *lines[3:]], r"line 4: not JSON"),
    }  # fmt: skip
    for name, (content, pattern) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(content) + "\n")
        code, err = select(capsys, synth, path, tmp_path / name, "--random", "0.5")
        assert code == 2 and err.startswith("mm-prep select: error: ") and err.count("\n") == 1, (name, err)
        assert re.search(pattern, err), (name, err)
        assert not (tmp_path / name).exists()
    code, err = select(capsys, synth, tmp_path / "absent.jsonl", tmp_path / "o", "--random", "0.5")
    assert code == 2 and "absent.jsonl not found" in err
