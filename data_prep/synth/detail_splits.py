"""The small-detail split on disk: `detail/` training shards and the held-out `eval/detail/` split.

    detail/                                  shards: multi-turn detail questions about one large image each
    eval/detail/images/{image_id:012d}.png
    eval/detail/scenes.json                  {image_id: scene}
    eval/detail/questions.json, annotations.json   VQAv2 layout (question_type = program name), `synth_detail`
    eval/detail/chance.json                  {question_type: chance accuracy, "overall": ...}

Scenes come from their own random streams (`"{seed}:detail:{i}"`, `"{seed}:detail-eval:{i}"`), so turning the
split on changes nothing in the other splits; evaluation image ids start at `DETAIL_IMAGE_ID_OFFSET`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from data_prep.convert import ConvertOptions, ConvertResult, convert
from data_prep.records import ImageRef, Sample, check_conversation
from data_prep.synth.detail import DETAIL_PROGRAMS, DetailScene, answer_space_size, ask_detail, render_detail_png, sample_detail_scene
from data_prep.synth.generate import SOURCE, SynthConfig, dialogue, distinct_questions, scene_rng
from mm.atomic import write_bytes_atomic, write_json_atomic

DETAIL_IMAGE_ID_OFFSET = 2_000_000


def detail_scene(config: SynthConfig, split: str, index: int) -> DetailScene:
    return sample_detail_scene(scene_rng(config.seed, split, index), config.world, config.detail)


def detail_sample(config: SynthConfig, index: int) -> Sample:
    """Several detail questions about one scene, as a multi-turn dialogue (the instruct split's turn counts)."""
    scene = detail_scene(config, "detail", index)
    rng = scene_rng(config.seed, "detail", index, "questions")
    turns = distinct_questions(config, rng, lambda asked: ask_detail(scene, rng, config.world, avoid=asked))
    conversations = dialogue(turns)
    name = f"synth/detail/{index:07d}.png"
    meta = {"index": index, "scene_id": index, "image_paths": [name], "scene": scene.to_json(),
            "programs": [qa.program for qa in turns], "qa": [dataclasses.asdict(qa) for qa in turns]}  # fmt: skip
    image = ImageRef(name=name, data=render_detail_png(scene, config.world, config.detail))
    return Sample(index, f"synth-detail-{index:07d}", SOURCE, conversations, [image], meta)


def write_detail_train(config: SynthConfig, options: ConvertOptions) -> ConvertResult:
    """`detail/` shards under `options.out_dir`, via the common converter."""
    num_train, _ = config.detail.counts(config.num_train, config.num_eval)
    samples = [detail_sample(config, index) for index in range(num_train)]
    samples = [s for s in samples if s.conversations]  # a scene no question fits (none placed) teaches nothing
    for sample in samples:
        check_conversation(sample.conversations, len(sample.images))  # generator bug, not bad input: raise
    split_options = dataclasses.replace(options, out_dir=str(Path(options.out_dir) / "detail"))
    return convert(samples, [], split_options, num_input_records=len(samples), source=SOURCE,
                   input_info={"generator": "synth", "split": "detail", "seed": config.seed})  # fmt: skip


def detail_questions(config: SynthConfig, scenes: list[tuple[int, DetailScene]]) -> tuple[list[dict], list[dict]]:
    """VQAv2 questions and annotations, as `synth_vqa`'s: the ten human answers are all the exact answer."""
    questions, annotations = [], []
    for index, (image_id, scene) in enumerate(scenes):
        rng = scene_rng(config.seed, "detail-eval", index, "questions")
        asked: set[str] = set()
        for number in range(config.eval_questions_per_image):
            qa = ask_detail(scene, rng, config.world, avoid=asked)
            if qa is None:
                break
            asked.add(qa.question)
            question_id = image_id * 100 + number
            questions.append({"question_id": question_id, "image_id": image_id, "question": qa.question})
            annotations.append({
                "question_id": question_id, "image_id": image_id, "question_type": qa.program,
                "answer_type": qa.answer_type, "multiple_choice_answer": qa.answer,
                "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
            })  # fmt: skip
    return questions, annotations


def detail_chance(config: SynthConfig, annotations: list[dict]) -> dict[str, float]:
    """Expected accuracy of a uniform random answer, per program and over the split."""
    chance = {p: 1 / answer_space_size(p, config.world, config.detail) for p in DETAIL_PROGRAMS}
    counts = Counter(a["question_type"] for a in annotations)
    total = sum(counts.values())
    chance["overall"] = sum(chance[p] * n for p, n in counts.items()) / total if total else 0.0
    return chance


def write_detail_eval(config: SynthConfig, out_dir: str | Path) -> dict[str, int]:
    """Write `eval/detail/` under `out_dir`; returns its counts."""
    root = Path(out_dir) / "eval" / "detail"
    _, num_eval = config.detail.counts(config.num_train, config.num_eval)
    scenes = [(DETAIL_IMAGE_ID_OFFSET + i, detail_scene(config, "detail-eval", i)) for i in range(num_eval)]
    for image_id, scene in scenes:
        write_bytes_atomic(root / "images" / f"{image_id:012d}.png", render_detail_png(scene, config.world, config.detail))
    write_json_atomic(root / "scenes.json", {str(i): scene.to_json() for i, scene in scenes}, indent=None)
    questions, annotations = detail_questions(config, scenes)
    info = {"description": "mm synthetic small-detail evaluation split", "seed": config.seed}
    write_json_atomic(root / "questions.json", {
        "info": info, "task_type": "Open-Ended", "data_type": "synth", "data_subtype": "detail", "questions": questions,
    }, indent=None)  # fmt: skip
    write_json_atomic(root / "annotations.json", {
        "info": info, "data_type": "synth", "data_subtype": "detail", "annotations": annotations,
    }, indent=None)  # fmt: skip
    write_json_atomic(root / "chance.json", detail_chance(config, annotations))
    return {"detail_images": len(scenes), "detail": len(questions)}
