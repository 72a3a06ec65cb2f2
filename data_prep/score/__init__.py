"""`mm-prep score`: per-sample scores for data curation, one JSON line per sample.

Metrics (definitions in the docstrings of the functions named):

- model (``--checkpoint``): ``loss``, ``ifd``, ``image_reliance`` (``model_metrics``), each with
  ``<metric>_turns`` (one value per assistant turn);
- ``clip`` (``--clip-model``, ``--clip-pretrained``): ``clip_metric.ClipScorer``;
- model-free: ``phash``, ``minhash``, ``length`` (``model_free``).

Lines: ``{"key", "id", "source", <columns>...}``; see ``runner`` for resuming, ranks and merging.
Only argparse lives here, so building mm-prep's parser imports no torch.
"""

from __future__ import annotations

import argparse
import sys

MODEL_METRICS = ("loss", "ifd", "image_reliance")
CLIP_METRICS = ("clip",)
FREE_METRICS = ("phash", "minhash", "length")
METRICS = MODEL_METRICS + CLIP_METRICS + FREE_METRICS
METRIC_HELP = ("comma-separated: loss, ifd, image_reliance (need --checkpoint); clip (needs --clip-model and "
               "--clip-pretrained); phash, minhash, length (model-free)")  # fmt: skip


def add_score_command(commands) -> argparse.ArgumentParser:
    """Register `mm-prep score` on mm-prep's subcommands."""
    score = commands.add_parser("score", help="per-sample scores (loss, ifd, image_reliance, clip, phash, minhash, "
                                              "length) of a shard directory -> JSONL, for `mm-prep select`")  # fmt: skip
    score.add_argument("shards", help="shard directory (mm-prep output)")
    score.add_argument("--metrics", required=True, help=METRIC_HELP)
    score.add_argument("--out", required=True, help="scores JSONL; an existing one is merged by key (new metrics added) "
                                                    "if it scores the same shard set (recorded in OUT.meta.json)")
    score.add_argument("--merge-other-shards", action="store_true",
                       help="merge into an --out that scores another shard set (or one written before mm-prep recorded "
                            "it) anyway: only when the same keys name the same samples, e.g. a reconversion")  # fmt: skip
    model = score.add_argument_group("model metrics")
    model.add_argument("--checkpoint", default=None, help="mm checkpoint directory (its chat template and image settings)")
    model.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    model.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on GPU, fp32 on CPU)")
    model.add_argument("--max-length", type=int, default=None, help="truncate as training does with this max_length")
    model.add_argument("--trust-remote-code", action="store_true")
    clip = score.add_argument_group("clip")
    clip.add_argument("--clip-model", default=None, help="open_clip model name (e.g. ViT-B-32) or a model config .json")
    clip.add_argument("--clip-pretrained", default=None,
                      help="open_clip pretrained tag (downloaded) or a local .safetensors/.bin/.pt weights file")
    free = score.add_argument_group("model-free")
    free.add_argument("--tokenizer", default=None, help="tokenizer for num_tokens (default: the --checkpoint's)")
    free.add_argument("--minhash-perm", type=int, default=128, help="MinHash permutations (signature length)")
    free.add_argument("--minhash-shingle", type=int, default=3, help="words per MinHash shingle")
    free.add_argument("--minhash-seed", type=int, default=1)
    score.add_argument("--batch-size", type=int, default=8, help="samples per batch (and rows per forward pass)")
    score.add_argument("--limit", type=int, default=None, help="only the first N samples (in shard order)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(run=cmd_score)
    return score


def cmd_score(args: argparse.Namespace) -> None:
    from data_prep.score.model_free import MinHashSettings
    from data_prep.score.runner import ScoreOptions, parse_metrics, run_score

    options = ScoreOptions(
        shards=args.shards, out=args.out, metrics=parse_metrics(args.metrics), checkpoint=args.checkpoint,
        tokenizer=args.tokenizer, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, limit=args.limit, max_length=args.max_length,
        minhash=MinHashSettings(num_perm=args.minhash_perm, shingle_words=args.minhash_shingle, seed=args.minhash_seed),
        progress=not args.no_progress, trust_remote_code=args.trust_remote_code,
        merge_other_shards=args.merge_other_shards,
    )  # fmt: skip
    result = run_score(options)
    for note in result["notes"]:
        if result["rank"] == 0:
            print(f"mm-prep score: note: {note}", file=sys.stderr)
    if result["rank"] == 0:
        print(f"scored {result['scored']} samples (rank 0), {result['skipped_done']} already done; "
              f"{result['lines']} lines in {args.out}")  # fmt: skip
