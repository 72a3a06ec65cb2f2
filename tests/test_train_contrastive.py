"""Stage `contrastive` through `mm-train fit --config`: the logged loss is open_clip's own loss on the
step's batch (computed here independently, from the same initial weights), the retrieval accuracies are
those of the similarity matrix computed by hand, two gloo ranks see every sample once and log the loss of
the gathered batch, a SIGKILLed run resumes on the same curve, the exported tower loads in the next stage
and in `mm.load_pretrained` of that stage's export, and bad input is one line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import open_clip.loss
import pytest
import safetensors.torch
import torch
from cli_checks import assert_refused
from train_helpers import ASSET_TOKENIZER, png_bytes, write_caption_shards, write_tar

REPO = Path(__file__).resolve().parents[1]
MM_TRAIN = Path(sys.executable).parent / "mm-train"
ASSETS = ASSET_TOKENIZER.parent

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: {devices}
  max_steps: {steps}
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: logs}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: {every}, save_top_k: -1}}
    - class_path: mm.train.sample_log.SampleLog
{kill}
model:
  model: {model}
  policy: {policy}
  export_dir: {root}/export
data:
  train_shards: [{{urls: {data}}}]
  batch_size: {batch_size}
  num_workers: {workers}
  max_length: 64
  template: plain
  shuffle_buffer: 4
"""
KILL = """    - class_path: train_helpers.SigkillAtStep
      init_args: {{step: {step}}}"""
MODEL = {
    "vision": {"kind": "hf_clip", "name_or_path": str(ASSETS / "configs" / "hf_clip.json"), "select_layer": -1},
    "projector": {"kind": "pixel_shuffle2x_mlp"},
    "llm": {"name_or_path": str(ASSETS / "configs" / "llama.json"), "tokenizer": str(ASSETS / "tokenizer")},
    "chat_template": "plain",
}
POLICY = {"stage": "contrastive", "lr": 1e-3, "warmup_ratio": 0.0, "contrastive_text_layers": 1,
          "contrastive_embed_dim": 32, "contrastive_text_width": 32}


def captions(count: int) -> list[str]:
    return [f"A {['red', 'green', 'blue', 'yellow'][i % 4]} square, picture {i}." for i in range(count)]


def write_config(root: Path, data: Path, *, steps: int, every: int = 100, devices: int = 1, batch_size: int = 4,
                 kill_at: int | None = None, policy: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = root / ("config-kill.yaml" if kill_at is not None else "config-run.yaml")
    config.write_text(CONFIG.format(
        devices=devices, steps=steps, root=root, every=every, data=data, batch_size=batch_size, workers=0,
        kill=KILL.format(step=kill_at) if kill_at is not None else "", model=json.dumps(MODEL),
        policy=json.dumps({**POLICY, **(policy or {})}),
    ))
    return config


def in_process(argv: list[str]) -> None:
    """`mm-train ARGV` in this process (no interpreter start-up: the refusals and single-process runs)."""
    from mm.train.cli import main

    main(argv)


def mm_train(root: Path, data: Path, *, steps: int, every: int = 100, devices: int = 1, batch_size: int = 4,
             kill_at: int | None = None, resume: bool = False, policy: dict | None = None) -> subprocess.CompletedProcess:
    config = write_config(root, data, steps=steps, every=every, devices=devices, batch_size=batch_size,
                          kill_at=kill_at, policy=policy)
    command = [str(MM_TRAIN), "fit", "--config", str(config)]
    if devices > 1:  # plain ddp: the parameters off the features' path (the tower's final norm) are frozen
        command += ["--trainer.strategy", "ddp"]
    if resume:
        command += ["--ckpt_path", "last"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def logged(root: Path) -> list[list[dict]]:
    runs = sorted((root / "logs").glob("version_*/metrics.csv"), key=lambda path: int(path.parent.name[8:]))
    return [list(csv.DictReader(open(path))) for path in runs]


def per_step(rows: list[dict], name: str) -> dict[int, float]:
    return {int(row["step"]): float(row[name]) for row in rows if row.get(name)}


def step_keys(root: Path, rank: int) -> dict[int, list[str]]:
    lines = (root / "samples" / f"rank{rank}.jsonl").read_text().splitlines()
    return {row["step"]: row["keys"] for row in map(json.loads, lines)}


def reference_model(policy: dict | None = None):
    """The module `mm-train` builds, with its initial weights (seeded by init_seed)."""
    from mm.config import VLMConfig
    from mm.train.contrastive_module import ContrastiveTrainingModule
    from mm.train.policy import TrainingPolicy

    module = ContrastiveTrainingModule(VLMConfig.from_dict(MODEL), TrainingPolicy(**{**POLICY, **(policy or {})}))
    module.configure_model()
    return module


def batch_of(module, data: Path, keys: list[str]) -> dict:
    """The batch of these samples (`url#key`), decoded as the data module does."""
    from mm.data.batching import collate
    from mm.data.samples import SampleDecoder
    from mm.train.contrastive import CaptionDecoder

    vlm = module.vlm
    decoder = CaptionDecoder(SampleDecoder(tokenizer=vlm.tokenizer, template="plain", image_tokens=vlm.image_tokens,
                                           image_transform=vlm.make_image_transform(), max_length=64))
    records = {}
    for shard in sorted(data.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                records.setdefault(key, {"__key__": key, "__url__": str(shard)})[suffix] = tar.extractfile(member).read()
    samples = [decoder(records[key.split("#")[1]]) for key in keys]
    return collate(samples, vlm.tokenizer.pad_token_id)


def by_hand(image: torch.Tensor, text: torch.Tensor) -> tuple[float, float]:
    """Top-1 retrieval accuracies of the similarity matrix, with loops."""
    similarity = (image @ text.T).tolist()
    n = len(similarity)
    i2t = sum(max(range(n), key=lambda j: similarity[i][j]) == i for i in range(n)) / n
    t2i = sum(max(range(n), key=lambda j: similarity[j][i]) == i for i in range(n)) / n
    return i2t, t2i


def open_clip_loss(module, image, text, loss: str) -> float:
    vlm = module.vlm
    if loss == "siglip":
        return float(open_clip.loss.SigLipLoss()(image, text, vlm.logit_scale.detach().exp(), vlm.logit_bias.detach()))
    return float(open_clip.loss.ClipLoss()(image, text, vlm.logit_scale.detach().exp()))


# ----------------------------------------------------------------------------- functions
def test_retrieval_hits_on_a_hand_written_similarity_matrix():
    from mm.train.contrastive import retrieval_hits

    # similarity = images @ texts.T with unit rows: rows are images, columns texts
    #   image 0 -> text 0 (right), image 1 -> text 0 (wrong), image 2 -> text 2 (right)
    #   text 0 <- image 1 (wrong), text 1 <- image 1 (right), text 2 <- image 2 (right)
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.95, 0.8, 0.1], [0.0, 0.3, 0.7]])
    texts = torch.eye(3)
    assert int(retrieval_hits(similarity, texts)) == 2  # images -> texts
    assert int(retrieval_hits(similarity.T, texts)) == 2  # texts -> images
    # a rank's rows inside the gathered batch: rows 1 and 2 are pairs 1 and 2
    assert int(retrieval_hits(similarity[1:], texts, offset=1)) == 1


# ----------------------------------------------------------------------------- through mm-train
@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: 12 caption pairs, batch 4 (3 steps an epoch), 7 steps, checkpoints every 2 steps."""
    base = tmp_path_factory.mktemp("contrastive")
    data = base / "data"
    keys = write_caption_shards(data, captions(12), per_shard=5)
    done = mm_train(base / "straight", data, steps=7, every=2)
    assert done.returncode == 0, done.stderr[-4000:]
    return base, data, keys


def test_logged_loss_is_open_clips_and_accuracy_is_the_hand_computed_one(straight):
    base, data, _ = straight
    (rows,) = logged(base / "straight")
    first = step_keys(base / "straight", 0)[0]
    module = reference_model()
    with torch.no_grad():
        image, text = module.embed(batch_of(module, data, first))
    assert per_step(rows, "train/loss")[0] == pytest.approx(open_clip_loss(module, image, text, "clip"), abs=1e-5)
    i2t, t2i = by_hand(image, text)
    assert per_step(rows, "train/i2t_acc")[0] == pytest.approx(i2t)
    assert per_step(rows, "train/t2i_acc")[0] == pytest.approx(t2i)
    # the loss moves the pairs together: the last step's loss is below the first's
    losses = per_step(rows, "train/loss")
    assert sorted(losses) == list(range(7)) and losses[6] < losses[0]


def test_siglip_logged_loss_is_open_clips(tmp_path):
    data = tmp_path / "data"
    write_caption_shards(data, captions(4), per_shard=4)
    policy = {"contrastive_loss": "siglip"}
    in_process(["fit", "--config", str(write_config(tmp_path / "run", data, steps=1, policy=policy)),
                "--data.val_shards", json.dumps([{"urls": str(data)}])])
    (rows,) = logged(tmp_path / "run")
    module = reference_model(policy)
    assert float(module.vlm.logit_bias.detach()) == -10.0
    with torch.no_grad():
        image, text = module.embed(batch_of(module, data, step_keys(tmp_path / "run", 0)[0]))
    assert per_step(rows, "train/loss")[0] == pytest.approx(open_clip_loss(module, image, text, "siglip"), abs=1e-5)
    # validation after the step: the same loss and accuracies, logged under val/
    (val,) = [row for row in rows if row.get("val/loss")]
    assert 0 < float(val["val/loss"]) and all(0 <= float(val[f"val/{name}"]) <= 1 for name in ("i2t_acc", "t2i_acc"))


def test_sigkill_then_ckpt_path_last_continues_the_same_curve(straight):
    base, data, _ = straight
    # killed before step 5 (epoch 1); the newest checkpoint is step 4's, mid-epoch 1; the resumed run crosses
    # into epoch 2
    resumed = base / "resumed"
    killed = mm_train(resumed, data, steps=7, every=2, kill_at=5)
    assert killed.returncode != 0
    assert not (resumed / "export").exists()
    done = mm_train(resumed, data, steps=7, every=2, resume=True)
    assert done.returncode == 0, done.stderr[-4000:]
    (expected,) = logged(base / "straight")
    before, after = logged(resumed)
    for name in ("train/loss", "train/i2t_acc", "train/t2i_acc"):
        want = per_step(expected, name)
        assert min(per_step(after, name)) == 4  # from the checkpoint of step 4 on
        for step, value in [*per_step(before, name).items(), *per_step(after, name).items()]:
            assert value == pytest.approx(want[step], abs=1e-6), (name, step)
    assert step_keys(resumed, 0) == step_keys(base / "straight", 0)


def test_two_gloo_ranks_see_every_sample_once_and_log_the_gathered_batchs_loss(tmp_path):
    data = tmp_path / "data"
    keys = write_caption_shards(data, captions(8), per_shard=3)
    done = mm_train(tmp_path / "run", data, steps=2, devices=2, batch_size=2)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [step_keys(tmp_path / "run", rank) for rank in range(2)]
    seen = Counter(key.split("#")[1] for rank in ranks for batch in rank.values() for key in batch)
    assert seen == Counter(keys)  # 8 samples, 2 ranks x batch 2 x 2 steps: each once
    # step 0: open_clip's loss over both ranks' pairs (rank order), as one batch on one process
    (rows,) = logged(tmp_path / "run")
    module = reference_model()
    with torch.no_grad():
        image, text = module.embed(batch_of(module, data, ranks[0][0] + ranks[1][0]))
    assert per_step(rows, "train/loss")[0] == pytest.approx(open_clip_loss(module, image, text, "clip"), abs=1e-5)
    i2t, t2i = by_hand(image, text)
    assert (per_step(rows, "train/i2t_acc")[0], per_step(rows, "train/t2i_acc")[0]) == pytest.approx((i2t, t2i))


@pytest.mark.parametrize("how", ["name_or_path", "init_from"])
def test_exported_tower_loads_in_the_next_stage_and_in_load_pretrained(straight, how):
    """The next stage takes the tower as its `vision.name_or_path`, or as `policy.init_from` (the demo's chain
    of stage*.yaml recipes: each stage starts from the one before)."""
    import mm

    base, data, _ = straight
    tower = base / "straight" / "export"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in tower.iterdir()}
    assert not list(tower.glob("*.bin"))
    initial = reference_model().vlm.vision_tower.model.state_dict()
    exported = safetensors.torch.load_file(tower / "model.safetensors")
    assert not torch.equal(exported["embeddings.patch_embedding.weight"], initial["embeddings.patch_embedding.weight"])
    next_root = base / f"next_{how}"
    next_root.mkdir()
    config = next_root / "stage1.yaml"
    config.write_text((REPO / "configs" / "demo" / "stage1_captions.yaml").read_text())
    start = ["--model.model.vision.name_or_path", str(tower)] if how == "name_or_path" else [
        "--model.model.vision.name_or_path", str(ASSETS / "configs" / "hf_clip.json"), "--model.policy.init_from", str(tower)]
    in_process(
        ["fit", "--config", str(config), *start,
         "--model.model.vision.select_layer", "-1", "--model.policy.stage", "align",
         "--model.model.llm.name_or_path", str(ASSETS / "configs" / "llama.json"),
         "--model.model.llm.tokenizer", str(ASSETS / "tokenizer"),
         "--trainer.default_root_dir", str(next_root), "--trainer.logger.init_args.save_dir", str(next_root),
         "--model.export_dir", str(next_root / "export"), "--data.train_shards", json.dumps([{"urls": str(data)}]),
         "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.max_steps", "1",
         "--trainer.enable_progress_bar", "false"]
    )
    vlm = mm.load_pretrained(next_root / "export")
    trained = safetensors.torch.load_file(tower / "model.safetensors")
    loaded = vlm.vision_tower.model.state_dict()
    assert loaded.keys() == trained.keys()
    for name, value in trained.items():  # the align stage froze the tower: the contrastive tower's weights
        torch.testing.assert_close(loaded[name], value, msg=name)


@pytest.mark.parametrize("kind", ["hf_siglip", "open_clip"])
def test_other_tower_kinds_export_a_folder_their_kind_loads(tmp_path, kind):
    from mm.config import VisionTowerConfig
    from mm.vision import build_vision_tower

    data = tmp_path / "data"
    write_caption_shards(data, captions(4), per_shard=4)
    root = tmp_path / "run"
    config = write_config(root, data, steps=1)
    vision = {"kind": kind, "name_or_path": str(ASSETS / "configs" / f"{kind}.json"), "select_layer": -1}
    in_process(["fit", "--config", str(config), "--model.model.vision", json.dumps(vision)])
    export = root / "export"
    if kind == "open_clip":
        settings = VisionTowerConfig(kind=kind, name_or_path=str(export / "open_clip_config.json"),
                                     pretrained=str(export / "open_clip_model.safetensors"), select_layer=-1)
        weights = "open_clip_model.safetensors"
    else:
        settings = VisionTowerConfig(kind=kind, name_or_path=str(export), select_layer=-1)
        weights = "model.safetensors"
    tower = build_vision_tower(settings)
    saved = safetensors.torch.load_file(export / weights)
    loaded = (tower.visual if kind == "open_clip" else tower.model).state_dict()
    assert loaded.keys() == saved.keys()
    for name, value in saved.items():
        torch.testing.assert_close(loaded[name], value, msg=name)


# ----------------------------------------------------------------------------- bad input
def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        in_process(argv)
    line = assert_refused(stopped.value.code, capsys.readouterr().err, "mm-train: error:")
    return line


@pytest.mark.parametrize("extra, named", [
    (("--data.batch_size", "1"), "--data.batch_size 1"),
    (("--model.policy.contrastive_loss", "infonce"), "contrastive_loss 'infonce'"),
    (("--data.packing", "true"), "--data.packing"),
    (("--trainer.strategy", "fsdp"), "use strategy ddp"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, extra, named):
    data = tmp_path / "data"
    write_caption_shards(data, captions(4), per_shard=4)
    line = refused(["fit", "--config", str(write_config(tmp_path / "run", data, steps=1)), *extra], capsys)
    assert named in line
    assert not (tmp_path / "run" / "logs").exists()


def test_validation_shards_without_a_full_batch_are_one_line(tmp_path, capsys):
    write_caption_shards(tmp_path / "data", captions(4), per_shard=4)
    write_caption_shards(tmp_path / "val", captions(3), per_shard=3)
    config = write_config(tmp_path / "run", tmp_path / "data", steps=1)
    line = refused(["fit", "--config", str(config), "--data.val_shards", json.dumps([{"urls": str(tmp_path / "val")}])],
                   capsys)
    assert "--data.batch_size 4" in line and "full batches" in line and "3 samples" in line


def test_shards_without_captions_are_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    records = {}
    for index in range(4):  # two question-answer rounds: instruction data, not captions
        meta = {"id": str(index), "source": "test", "images": ["img0.png"], "image_sizes": [[12, 8]],
                "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."},
                                  {"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "A square."}]}
        records[f"qa{index}"] = {"json": json.dumps(meta).encode(), "img0.png": png_bytes()}
    write_tar(data / "shard-000000.tar", records)
    line = refused(["fit", "--config", str(write_config(tmp_path / "run", data, steps=1, batch_size=2))], capsys)
    assert "no image-caption record" in line and "--data.train_shards" in line
