"""Evaluation generation: samples/s of `mm-eval run`'s generation at batch 16 vs batch 1.

Both paths answer the same generated VQAv2-layout questions with the tiny model through the real
pipeline (image decoding, prompt encoding, left padding, KV-cached greedy generation, decoding and
appending to the predictions file); a round answers every question once into a fresh folder. The
two paths must produce identical predictions (fp32 by default, TF32 off), which is asserted.

    .venv/bin/python bench/bench_eval.py --quick [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from eval.distributed import Ranks  # noqa: E402
from eval.runner import GenerationSettings, Generator, generate_predictions  # noqa: E402
from mm.loading import resolve_dtype  # noqa: E402
from eval.tasks import get_task  # noqa: E402
from eval.tiny_bench import write_tiny_vqa_benchmark  # noqa: E402

TARGET = 2.0
BATCHED = 16


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--questions", type=int, default=None, help="questions per round (default 128; 32 with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default 16; 8 with --quick)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    args = parser.parse_args(argv)
    args.questions = args.questions or (32 if args.quick else 128)
    args.max_new_tokens = args.max_new_tokens or (8 if args.quick else 16)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.threads = args.threads or (None if args.device.startswith("cuda") else 1)
    return args


def build(work: Path, args):
    import mm
    from mm.tiny import tiny_vlm_config

    torch.manual_seed(0)
    mm.build_vlm(tiny_vlm_config()).save_pretrained(work / "ckpt")
    dtype = resolve_dtype(args.dtype, args.device)
    model = mm.load_pretrained(work / "ckpt", torch_dtype=dtype).to(args.device).eval()
    per_image = 4
    num_images = -(-args.questions // per_image)  # ceiling division
    options = write_tiny_vqa_benchmark(work / "data", num_images=num_images, questions_per_image=per_image)
    task = get_task("vqav2")
    questions = task.read(task.options_type(**options))[: args.questions]
    return model, dtype, questions


def make_path(model, dtype, questions, batch_size: int, work: Path, args, answers: dict):
    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                                  template=model.config.chat_template, image_workers=2)
    generator = Generator(model, settings, dtype)

    def run(round_index: int) -> dict[str, float]:
        out = work / f"b{batch_size}_r{round_index}"
        out.mkdir()
        generate_predictions(generator, questions, out, Ranks(), model_id="tiny", task_name="vqav2")
        lines = (out / "predictions.jsonl").read_text().splitlines()
        answers[batch_size] = {json.loads(line)["question_id"]: json.loads(line)["text"] for line in lines}
        return {"samples": len(lines)}

    return run


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.set_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, dtype, questions = build(work, args)
        answers: dict[int, dict] = {}
        paths = {f"batch {b}": make_path(model, dtype, questions, b, work, args, answers) for b in (BATCHED, 1)}
        results = common.alternate(paths, rounds=args.rounds, warmup=args.warmup, device=args.device)
    mismatched = [q for q in answers[1] if answers[1][q] != answers[BATCHED].get(q)]
    if mismatched or len(answers[1]) != len(questions):
        raise AssertionError(f"batch {BATCHED} and batch 1 disagree on {len(mismatched)} questions, e.g. {mismatched[:3]}")
    return report(args, results, len(questions))


def report(args, results, num_questions: int) -> dict:
    batched, single = results[f"batch {BATCHED}"], results["batch 1"]
    ratio = batched.rate("samples") / single.rate("samples")
    print(f"tiny model, {args.dtype}, {num_questions} questions, max {args.max_new_tokens} new tokens, "
          f"{args.rounds} rounds after {args.warmup} warmup, on {args.device}; predictions identical: yes")
    rows = [[r.name, r.rate("samples"), *r.spread("samples")] for r in (batched, single)]
    print(common.format_table(["path", "samples/s", "min samples/s", "max samples/s"], rows))
    print(f"batch {BATCHED} / batch 1: {ratio:.2f}x")
    result = {
        "bench": "eval_generation",
        "batch_size": BATCHED,
        "dtype": args.dtype,
        "questions": num_questions,
        "max_new_tokens": args.max_new_tokens,
        "batched_samples_per_s": round(batched.rate("samples"), 3),
        "batch1_samples_per_s": round(single.rate("samples"), 3),
        "identical_predictions": True,
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
    }
    common.emit(result, args.device)
    return result


if __name__ == "__main__":
    main()
