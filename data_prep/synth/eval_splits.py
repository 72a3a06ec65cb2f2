"""Held-out synthetic evaluation splits in the layouts `mm-eval` reads.

    eval/images/{image_id:012d}.png
    eval/scenes.json                                 {image_id: scene graph}
    eval/vqa/questions.json, annotations.json        VQAv2 layout (question_type = program name)
    eval/vqa/chance.json                             {question_type: chance accuracy, "overall": ...}
    eval/pope/synth_pope_{random,popular,adversarial}.json   POPE layout (JSON lines)
    eval/mc/seed.json                                SEED-Bench layout
    eval/ifeval/questions.jsonl                      ifeval_mm layout (IFEval records with images, multi-turn)

Evaluation scenes use their own random streams (`"{seed}:eval:{i}"`) and image ids from
`EVAL_IMAGE_ID_OFFSET`, disjoint from the training scene ids (0 .. num_train-1).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mm.atomic import write_bytes_atomic, write_json_atomic, write_jsonl_atomic
from data_prep.synth.generate import SynthConfig, ifeval_dialogue, scene_rng
from data_prep.synth.programs import VQA_PROGRAMS, answer_space_size, ask, get_program
from data_prep.synth.world import Scene, WorldConfig, render_png, sample_scene

EVAL_IMAGE_ID_OFFSET = 1_000_000
POPE_STRATEGIES = ("random", "popular", "adversarial")
MC_QUESTION_TYPES = {"color": 1, "count": 2}


@dataclass
class EvalScene:
    image_id: int
    file_name: str
    scene: Scene


def eval_scenes(config: SynthConfig) -> list[EvalScene]:
    scenes = []
    for index in range(config.num_eval):
        image_id = EVAL_IMAGE_ID_OFFSET + index
        scene = sample_scene(scene_rng(config.seed, "eval", index), config.world)
        scenes.append(EvalScene(image_id, f"{image_id:012d}.png", scene))
    return scenes


def vqa_split(config: SynthConfig, scenes: list[EvalScene]) -> tuple[list[dict], list[dict]]:
    """VQAv2 questions and annotations; the ten human answers are all the exact answer."""
    questions, annotations = [], []
    for index, item in enumerate(scenes):
        rng = scene_rng(config.seed, "eval", index, "vqa")
        asked: set[str] = set()
        for number in range(config.eval_questions_per_image):
            qa = ask(item.scene, rng, config.world, VQA_PROGRAMS, avoid=asked)
            if qa is None:
                break
            asked.add(qa.question)
            question_id = item.image_id * 100 + number
            questions.append({"question_id": question_id, "image_id": item.image_id, "question": qa.question})
            annotations.append({
                "question_id": question_id, "image_id": item.image_id, "question_type": qa.program,
                "answer_type": qa.answer_type, "multiple_choice_answer": qa.answer,
                "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
            })  # fmt: skip
    return questions, annotations


def chance_levels(annotations: list[dict], world: WorldConfig) -> dict[str, float]:
    """Expected VQA accuracy of a uniform random answer, per program and over the split."""
    chance = {program: 1 / answer_space_size(program, world) for program in VQA_PROGRAMS}
    counts = Counter(a["question_type"] for a in annotations)
    total = sum(counts.values())
    chance["overall"] = sum(chance[p] * n for p, n in counts.items()) / total if total else 0.0
    return chance


def _categories(scene: Scene) -> set[tuple[str, str]]:
    return {(o["color"], o["shape"]) for o in scene.objects}


def pope_negatives(strategy: str, present: set, absent: list, n: int, rng: random.Random,
                   frequency: Counter, cooccurrence: Counter) -> list[tuple[str, str]]:  # fmt: skip
    """`n` absent categories: uniformly at random, the most frequent ones, or the ones most
    similar to (sharing a colour or shape with) and then most co-occurring with present ones."""
    if strategy == "random":
        return rng.sample(absent, n)
    if strategy == "popular":
        return sorted(absent, key=lambda c: (-frequency[c], c))[:n]
    if strategy == "adversarial":
        def hardness(c):
            similar = sum(c[0] == p[0] or c[1] == p[1] for p in present)
            return (-similar, -sum(cooccurrence[(p, c)] for p in present), c)

        return sorted(absent, key=hardness)[:n]
    raise KeyError(f"unknown POPE strategy {strategy!r}; valid: {', '.join(POPE_STRATEGIES)}")


def pope_split(config: SynthConfig, scenes: list[EvalScene], strategy: str) -> list[dict]:
    """Balanced POPE questions: per image, up to k present categories and as many absent ones."""
    frequency = Counter(c for item in scenes for c in _categories(item.scene))
    cooccurrence = Counter((a, b) for item in scenes for a in _categories(item.scene) for b in _categories(item.scene) if a != b)
    rows = []
    for index, item in enumerate(scenes):
        rng = scene_rng(config.seed, "eval", index, f"pope-{strategy}")
        present = _categories(item.scene)
        absent = [c for c in config.world.categories if c not in present]
        n = min(config.pope_questions_per_image, len(present), len(absent))
        positives = rng.sample(sorted(present), n)
        negatives = pope_negatives(strategy, present, absent, n, rng, frequency, cooccurrence)
        pairs = [(c, "yes") for c in positives] + [(c, "no") for c in negatives]
        rng.shuffle(pairs)
        for (color, shape), label in pairs:
            rows.append({"question_id": len(rows) + 1, "image": item.file_name,
                         "text": f"Is there a {color} {shape} in the image?", "label": label})  # fmt: skip
    return rows


def mc_split(config: SynthConfig, scenes: list[EvalScene]) -> dict:
    """SEED-Bench-layout multiple choice: one colour or counting question per image."""
    questions = []
    program = get_program("multiple_choice")
    for index, item in enumerate(scenes):
        rng = scene_rng(config.seed, "eval", index, "mc")
        qa = next((q for q in (program(item.scene, rng, config.world) for _ in range(50)) if q is not None), None)
        if qa is None:
            continue
        variant = qa.program.removeprefix("multiple_choice_")
        questions.append({
            "question_id": str(item.image_id), "question": qa.question,
            **{f"choice_{letter}": choice for letter, choice in zip("abcd", qa.choices)},
            "answer": qa.answer, "data_id": item.file_name, "data_type": "image",
            "question_type_id": MC_QUESTION_TYPES[variant],
        })  # fmt: skip
    return {"questions": questions, "question_type": MC_QUESTION_TYPES}


def write_eval(config: SynthConfig, out_dir: str | Path) -> dict[str, int]:
    """Write every evaluation split under `out_dir/eval`; returns counts per split."""
    root = Path(out_dir) / "eval"
    scenes = eval_scenes(config)
    for item in scenes:
        write_bytes_atomic(root / "images" / item.file_name, render_png(item.scene, config.world))
    write_json_atomic(root / "scenes.json", {str(item.image_id): item.scene.to_json() for item in scenes}, indent=None)
    questions, annotations = vqa_split(config, scenes)
    info = {"description": "mm synthetic scene-graph evaluation split", "seed": config.seed}
    write_json_atomic(root / "vqa" / "questions.json", {
        "info": info, "task_type": "Open-Ended", "data_type": "synth", "data_subtype": "eval", "questions": questions,
    }, indent=None)  # fmt: skip
    write_json_atomic(root / "vqa" / "annotations.json", {
        "info": info, "data_type": "synth", "data_subtype": "eval", "annotations": annotations,
    }, indent=None)  # fmt: skip
    write_json_atomic(root / "vqa" / "chance.json", chance_levels(annotations, config.world))
    counts = {"images": len(scenes), "vqa": len(questions)}
    for strategy in POPE_STRATEGIES:
        rows = pope_split(config, scenes, strategy)
        write_jsonl_atomic(root / "pope" / f"synth_pope_{strategy}.json", rows)
        counts[f"pope_{strategy}"] = len(rows)
    seed = mc_split(config, scenes)
    write_json_atomic(root / "mc" / "seed.json", seed, indent=None)
    counts["mc"] = len(seed["questions"])
    if config.ifeval:
        records = ifeval_split(config, scenes)
        write_jsonl_atomic(root / "ifeval" / "questions.jsonl", records)
        counts["ifeval"] = len(records)
    if config.detail is not None:
        from data_prep.synth.detail_splits import write_detail_eval

        counts.update(write_detail_eval(config, out_dir))
    return counts


def ifeval_split(config: SynthConfig, scenes: list[EvalScene]) -> list[dict]:
    """One `ifeval_mm` record per image (every third one two turns); image paths relative to eval/ifeval/."""
    from data_prep.synth.constraints import ifeval_record

    records = []
    for index, item in enumerate(scenes):
        dialogue = ifeval_dialogue(config, "eval", index, item.scene)
        if dialogue:
            records.append(ifeval_record(str(item.image_id), f"../images/{item.file_name}", dialogue))
    return records
