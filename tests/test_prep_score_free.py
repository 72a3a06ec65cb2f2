"""`mm-prep score` model-free metrics (phash, minhash, length), the output file's life (merge, resume after an
injected error or a SIGKILL, torn lines) and rank sharding with two gloo processes. No model is loaded."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.inspect_shards import iter_samples

REPO = Path(__file__).resolve().parent.parent
SAME_TEXT = [{"from": "human", "value": "<image>\nWhat is in the picture?"},
             {"from": "gpt", "value": "A bright red square on a dark blue field."}]  # fmt: skip


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.float64)
    for _ in range(4):  # a few bright blocks, placed by the seed
        top, left = rng.integers(0, 48, 2)
        image[top : top + 16, left : left + 16] = rng.integers(0, 256, 3)
    return image


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def make_shards(root: Path) -> Path:
    """A shard directory of 8 samples via `mm-prep llava`: `near_a`/`near_b` hold the same picture (PNG, and
    brighter + JPEG) under the same conversation; `multi` has three turns; `text` has no image; `two` has two."""
    images = root / "images"
    images.mkdir(parents=True)
    (images / "a.png").write_bytes(_encode(_picture(0), "PNG"))
    (images / "a_near.jpg").write_bytes(_encode(_picture(0) + 6, "JPEG"))
    for seed in range(1, 5):
        (images / f"p{seed}.png").write_bytes(_encode(_picture(seed), "PNG"))
    records = [
        {"id": "near_a", "image": "a.png", "conversations": SAME_TEXT},
        {"id": "near_b", "image": "a_near.jpg", "conversations": SAME_TEXT},
        {"id": "multi", "image": "p1.png", "conversations": [
            {"from": "human", "value": "<image>\nHow many blocks are there?"}, {"from": "gpt", "value": "Four."},
            {"from": "human", "value": "What colour is the top one?"}, {"from": "gpt", "value": "It is green, mostly."},
            {"from": "human", "value": "Anything else?"}, {"from": "gpt", "value": "No"}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello there!"}]},
        {"id": "two", "image": ["p2.png", "p3.png"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare the two pictures."},
            {"from": "gpt", "value": "The first has more red than the second."}]},
        {"id": "cap4", "image": "p4.png", "conversations": [
            {"from": "human", "value": "Describe this image.\n<image>"}, {"from": "gpt", "value": "Coloured blocks on a gradient."}]},
        {"id": "cap1", "image": "p1.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe briefly."}, {"from": "gpt", "value": "Stripes and blocks."}]},
        {"id": "cap2", "image": "p2.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat do you see?"}, {"from": "gpt", "value": "A pattern of squares."}]},
    ]  # fmt: skip
    (root / "data.json").write_text(json.dumps(records))
    out = root / "shards"
    assert main(["llava", "--annotations", str(root / "data.json"), "--image-root", str(images), "--out", str(out),
                 "--source", "fixture", "--workers", "1", "--samples-per-shard", "3", "--no-progress"]) == 0  # fmt: skip
    return out


def read_scores(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys)), "duplicate lines"
    return {line["key"]: line for line in lines}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("score_free"))


def _score(shards: Path, out: Path, *extra: str) -> None:
    assert main(["score", str(shards), "--out", str(out), "--no-progress", *extra]) == 0


def test_phash_minhash_length_columns(shards, tmp_path):
    import imagehash
    from datasketch import MinHash

    out = tmp_path / "scores.jsonl"
    _score(shards, out, "--metrics", "phash,minhash,length", "--tokenizer", str(REPO / "mm/assets/tokenizer"))
    scores = read_scores(out)
    samples = {s.key: s for s in iter_samples(shards)}
    assert set(scores) == set(samples)
    by_id = {line["id"]: line for line in scores.values()}
    for key, sample in samples.items():
        line = scores[key]
        assert line["id"] == sample.record["id"] and line["source"] == "fixture"
        # phash: the library's own value of each image, in placeholder order
        assert line["phash"] == [str(imagehash.phash(Image.open(io.BytesIO(data)).convert("RGB"))) for data in sample.images]
        assert all(len(h) == 16 for h in line["phash"])
        assert line["num_images"] == len(sample.images) and isinstance(line["num_words"], int)
        assert line["num_turns"] == sum(m["from"] == "gpt" for m in sample.record["conversations"])
        assert isinstance(line["num_tokens"], int) and line["num_tokens"] > line["num_turns"]
        params = line["minhash_params"]
        assert params["num_perm"] == 128 and len(line["minhash"]) == 128
        rebuilt = MinHash(params["num_perm"], seed=params["seed"], scheme=params["scheme"], hashvalues=line["minhash"])
        assert rebuilt.jaccard(rebuilt) == 1.0
    # planted near-duplicates: few differing pHash bits; different pictures: many
    near = imagehash.hex_to_hash(by_id["near_a"]["phash"][0]) - imagehash.hex_to_hash(by_id["near_b"]["phash"][0])
    far = imagehash.hex_to_hash(by_id["near_a"]["phash"][0]) - imagehash.hex_to_hash(by_id["cap4"]["phash"][0])
    assert near <= 4 and far >= 16
    # identical texts: identical signatures; unrelated texts: low estimated Jaccard
    assert by_id["near_a"]["minhash"] == by_id["near_b"]["minhash"]
    a, b = (MinHash(128, seed=1, scheme="affine32", hashvalues=by_id[i]["minhash"]) for i in ("near_a", "multi"))
    assert a.jaccard(b) < 0.2
    assert by_id["text"]["phash"] == [] and by_id["text"]["num_images"] == 0 and by_id["two"]["num_images"] == 2
    # "What is in the picture? A bright red square on a dark blue field." (the placeholder is not a word)
    assert by_id["near_a"]["num_words"] == 14


def test_minhash_definition_by_hand():
    from datasketch import MinHash

    from data_prep.score.model_free import MinHashSettings, minhash_signature, shingles, words

    settings = MinHashSettings(num_perm=16, shingle_words=2, seed=3)
    expected = MinHash(16, seed=3, scheme="affine32")
    for shingle in ["a b", "b c", "c d"]:
        expected.update(shingle.encode())
    assert minhash_signature("A, b\nc d!", settings) == [int(v) for v in expected.hashvalues]
    assert shingles(words("one two"), 5) == {"one two"} and shingles([], 3) == set()


def test_length_without_tokenizer_omits_num_tokens(shards, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    _score(shards, out, "--metrics", "length")
    assert "num_tokens left out" in capsys.readouterr().err
    assert all("num_tokens" not in line and line["num_words"] > 0 for line in read_scores(out).values())


def test_runs_merge_by_key(shards, tmp_path):
    out = tmp_path / "scores.jsonl"
    _score(shards, out, "--metrics", "length", "--limit", "3")
    _score(shards, out, "--metrics", "phash")
    scores = read_scores(out)
    assert len(scores) == 8
    order = [s.key for s in iter_samples(shards)]
    assert list(scores) == order  # shard order
    assert sum("num_words" in line for line in scores.values()) == 3
    assert all("phash" in line for line in scores.values())
    first = scores[order[0]]
    assert list(first)[:3] == ["key", "id", "source"] and {"num_words", "phash"} <= set(first)
    # rerunning a metric replaces its columns and keeps the others
    _score(shards, out, "--metrics", "length")
    again = read_scores(out)
    assert again[order[0]]["phash"] == first["phash"] and all("num_words" in line for line in again.values())
    assert not list(tmp_path.glob("*.partial*"))
    meta = json.loads((tmp_path / "scores.jsonl.meta.json").read_text())
    assert set(meta) == {"length", "phash", "shard_set"}  # the metrics' provenance, and the set the lines score
    assert meta["shard_set"]["directory"] == str(shards.resolve()) and meta["shard_set"]["num_shards"] == 3


class Boom(RuntimeError):
    pass


def test_resume_after_injected_error(shards, tmp_path, monkeypatch):
    from data_prep.score import runner

    reference = tmp_path / "reference.jsonl"
    _score(shards, reference, "--metrics", "phash,length", "--batch-size", "3")
    out = tmp_path / "scores.jsonl"
    scored_keys: list[str] = []
    real = runner.score_batch

    def failing(scorers, batch):
        if len(scored_keys) >= 3:
            raise Boom("injected")
        scored_keys.extend(s.key for s in batch)
        return real(scorers, batch)

    monkeypatch.setattr(runner, "score_batch", failing)
    monkeypatch.setenv("MM_DEBUG", "1")  # the injected bug raised as it is, not turned into one line
    with pytest.raises(Boom):
        main(["score", str(shards), "--out", str(out), "--no-progress", "--metrics", "phash,length", "--batch-size", "3"])
    partial = tmp_path / "scores.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 3
    with open(partial, "a") as handle:  # a kill mid-write leaves half a line
        handle.write('{"key": "torn", "phash": [')
    resumed: list[str] = []

    def counting(scorers, batch):
        resumed.extend(s.key for s in batch)
        return real(scorers, batch)

    monkeypatch.setattr(runner, "score_batch", counting)
    monkeypatch.delenv("MM_DEBUG")
    # other settings over leftover partial results: refused
    assert main(["score", str(shards), "--out", str(out), "--no-progress", "--metrics", "phash"]) == 2
    _score(shards, out, "--metrics", "phash,length", "--batch-size", "3")
    assert sorted(resumed) == sorted(set(read_scores(reference)) - set(scored_keys))  # nothing scored twice
    assert read_scores(out) == read_scores(reference)
    assert not partial.exists() and not (tmp_path / "scores.jsonl.partial.json").exists()


KILL_DRIVER = """
import os, signal, sys
import data_prep.score.runner as runner
real = runner.append_lines
calls = []
def append_then_die(path, rows):
    real(path, rows)
    calls.append(1)
    if len(calls) == 2:
        with open(path, "a") as handle:
            handle.write('{"key": "half')  # killed mid-write
            handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
runner.append_lines = append_then_die
from data_prep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigkill(shards, tmp_path):
    out = tmp_path / "scores.jsonl"
    args = ["score", str(shards), "--out", str(out), "--no-progress", "--metrics", "minhash,length", "--batch-size", "2"]
    killed = subprocess.run([sys.executable, "-c", KILL_DRIVER, *args], cwd=REPO, capture_output=True, text=True, check=False)
    assert killed.returncode == -9, killed.stderr
    partial = tmp_path / "scores.jsonl.partial"
    done = [json.loads(line)["key"] for line in partial.read_text().splitlines()[:4]]
    assert len(done) == 4 and partial.read_text().endswith('"half')
    _score(shards, out, "--metrics", "minhash,length", "--batch-size", "2")
    scores = read_scores(out)
    assert list(scores) == [s.key for s in iter_samples(shards)]
    reference = tmp_path / "reference.jsonl"
    _score(shards, reference, "--metrics", "minhash,length")
    assert scores == read_scores(reference)


RANK_DRIVER = """
import json, os, sys
import data_prep.score.runner as runner
real = runner.append_lines
def logging_append(path, rows):
    with open(os.environ["KEYS_LOG"] + os.environ["RANK"], "a") as log:
        log.write("".join(row["key"] + "\\n" for row in rows))
    real(path, rows)
runner.append_lines = logging_append
from data_prep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks(shards, tmp_path):
    """torchrun's environment for 2 CPU processes: each sample scored on exactly one rank, rank 0 merges."""
    out = tmp_path / "scores.jsonl"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "KEYS_LOG": str(tmp_path / "keys"), "OMP_NUM_THREADS": "1"}  # fmt: skip
        args = ["score", str(shards), "--out", str(out), "--no-progress", "--metrics", "phash,length", "--batch-size", "2"]
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_DRIVER, *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    keys = [set((tmp_path / f"keys{rank}").read_text().split()) for rank in range(2)]
    order = [s.key for s in iter_samples(shards)]
    assert keys[0] and keys[1] and not keys[0] & keys[1] and keys[0] | keys[1] == set(order)
    assert keys[0] == set(order[0::2])
    scores = read_scores(out)
    assert list(scores) == order
    reference = tmp_path / "reference.jsonl"
    _score(shards, reference, "--metrics", "phash,length")
    assert scores == read_scores(reference)
    assert [p.name for p in tmp_path.glob("scores.jsonl.*")] == ["scores.jsonl.meta.json"]


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "phash,bogus"], "unknown metrics ['bogus']; valid metrics: loss, ifd, image_reliance, clip, phash, minhash, length"),
    (["--metrics", "loss,ifd"], "need --checkpoint"),
    (["--metrics", "clip"], "needs --clip-model and --clip-pretrained"),
    (["--metrics", "loss", "--checkpoint", "/nonexistent/ckpt"], "no such checkpoint directory"),
    (["--metrics", "phash", "--batch-size", "0"], "--batch-size must be at least 1"),
])  # fmt: skip
def test_bad_input_is_one_error_line(shards, tmp_path, capsys, argv, message):
    assert main(["score", str(shards), "--out", str(tmp_path / "s.jsonl"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mm-prep score: error: ") and message in err[0]


def test_missing_shards_and_bad_out(tmp_path, shards, capsys):
    assert main(["score", str(tmp_path / "nope"), "--out", str(tmp_path / "s.jsonl"), "--metrics", "phash"]) == 2
    assert "mm-prep score: error:" in capsys.readouterr().err
    assert main(["score", str(shards), "--out", str(tmp_path), "--metrics", "phash"]) == 2
    assert "is a folder" in capsys.readouterr().err
