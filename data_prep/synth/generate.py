"""`mm-prep synth`: training shards (align, instruct) through the common converter, and eval splits.

Every random choice comes from a `random.Random` seeded by a string naming its purpose
(`"{seed}:train:{i}"`, `"{seed}:eval:{i}:vqa"`, ...), so the output is a pure function of the
seed and the config, and training and evaluation scenes come from disjoint streams.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.convert import ConvertOptions, ConvertResult, convert
from data_prep.records import (
    IMAGE_TOKEN, MULTIPLE_CHOICE_SUFFIX, SHORT_ANSWER_SUFFIX, ImageRef, Sample, check_conversation,
)  # fmt: skip
from data_prep.synth.detail import DetailConfig
from data_prep.synth.programs import LETTERS, PROGRAMS, QA, ask, description
from data_prep.synth.world import Scene, WorldConfig, render_png, sample_scene

CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of the picture.",
    "What does the image show? Answer in one sentence.",
    "Summarize the scene.",
)
SOURCE = "synth"


@dataclass
class SynthConfig:
    """What `mm-prep synth` generates."""

    num_train: int = 2000
    """Training scenes (each gives one align and one instruct sample)."""
    num_eval: int = 300
    """Held-out evaluation scenes."""
    seed: int = 0
    """Seed of everything generated."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """What scenes may contain."""
    min_turns: int = 2
    """Fewest question/answer turns in an instruct sample."""
    max_turns: int = 5
    """Most question/answer turns in an instruct sample."""
    eval_questions_per_image: int = 3
    """VQA questions per evaluation image."""
    pope_questions_per_image: int = 3
    """POPE positives per evaluation image (as many negatives are added)."""
    noise: float = 0.0
    """Fraction of instruct samples given a wrong answer or another scene's image (listed in noise.jsonl)."""
    ifeval: bool = True
    """Also write `ifeval/` training shards (scene questions under IFEval instructions) and the held-out
    `eval/ifeval/` split of `ifeval_mm`."""
    pref: bool = True
    """Also write `pref/` preference shards: per scene a description or question with a faithful `chosen`
    and a `rejected` reply with one hallucinated object, attribute, count or relation (synth/preference.py)."""
    detail: DetailConfig | None = None
    """Also write the small-detail split (`detail/` shards, `eval/detail/` for `synth_detail`): large images
    with tiny objects (synth/detail.py); None = no such split, the others unchanged either way."""

    def __post_init__(self) -> None:
        if not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.num_train < 0 or self.num_eval < 0 or not 1 <= self.min_turns <= self.max_turns:
            raise ValueError("num_train and num_eval must be >= 0 and 1 <= min_turns <= max_turns")
        if not 1 <= self.eval_questions_per_image <= 99 or self.pope_questions_per_image < 1:
            raise ValueError("eval_questions_per_image must be in 1..99 and pope_questions_per_image >= 1")


def scene_rng(seed: int, split: str, index: int, purpose: str = "scene") -> random.Random:
    return random.Random(f"{seed}:{split}:{index}:{purpose}")


def format_question(qa: QA) -> str:
    """The human turn text, with LLaVA-1.5's answer-format suffixes."""
    if qa.choices:
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, qa.choices))
        return f"{qa.question}\n{options}\n{MULTIPLE_CHOICE_SUFFIX}"
    if qa.program == "describe":
        return qa.question
    return f"{qa.question}\n{SHORT_ANSWER_SUFFIX}"


def _train_scene(config: SynthConfig, index: int) -> tuple[Scene, bytes]:
    scene = sample_scene(scene_rng(config.seed, "train", index), config.world)
    return scene, render_png(scene, config.world)


def align_sample(config: SynthConfig, index: int, scene: Scene, png: bytes) -> Sample:
    """Stage 1: one caption (the scene description) per image."""
    rng = scene_rng(config.seed, "train", index, "align")
    prompt = rng.choice(CAPTION_PROMPTS)
    human = f"{IMAGE_TOKEN}\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n{IMAGE_TOKEN}"
    conversations = [{"from": "human", "value": human}, {"from": "gpt", "value": description(scene, config.world)}]
    return _sample(index, "align", scene, png, conversations, programs=["describe"])


def distinct_questions(config: SynthConfig, rng, ask_one) -> list:
    """Between min_turns and max_turns questions from `ask_one(the questions asked so far)`, none twice; fewer
    when `ask_one` has nothing new (None)."""
    turns, asked = [], set()
    for _ in range(rng.randint(config.min_turns, config.max_turns)):
        qa = ask_one(asked)
        if qa is None:
            break
        asked.add(qa.question)
        turns.append(qa)
    return turns


def dialogue(turns) -> list[dict]:
    """The questions and answers as a conversation, the image before the first question."""
    conversations = []
    for position, qa in enumerate(turns):
        text = format_question(qa)
        conversations += [{"from": "human", "value": f"{IMAGE_TOKEN}\n{text}" if position == 0 else text},
                          {"from": "gpt", "value": qa.answer}]  # fmt: skip
    return conversations


def instruct_sample(config: SynthConfig, index: int, scene: Scene, png: bytes) -> Sample:
    """Stage 2: several question programs about one image, as a multi-turn dialogue."""
    rng = scene_rng(config.seed, "train", index, "instruct")
    turns = distinct_questions(config, rng, lambda asked: ask(scene, rng, config.world, tuple(PROGRAMS), avoid=asked))
    conversations = dialogue(turns)
    qa_meta = [dataclasses.asdict(qa) for qa in turns]
    return _sample(index, "instruct", scene, png, conversations, programs=[qa.program for qa in turns], qa=qa_meta)


def ifeval_dialogue(config: SynthConfig, split: str, index: int, scene: Scene):
    """A scene's constrained dialogue: two turns (instructions standing) for every third scene, else one."""
    from data_prep.synth.constraints import constrained_dialogue

    rng = scene_rng(config.seed, split, index, "ifeval")
    return constrained_dialogue(scene, config.world, rng, turns=2 if index % 3 == 0 else 1)


def ifeval_sample(config: SynthConfig, index: int, scene: Scene, png: bytes) -> Sample | None:
    """Scene questions under IFEval instructions, answers rewritten to follow every instruction in force."""
    dialogue = ifeval_dialogue(config, "train", index, scene)
    if not dialogue:
        return None
    conversations = []
    for position, turn in enumerate(dialogue):
        conversations += [{"from": "human", "value": f"{IMAGE_TOKEN}\n{turn.prompt}" if position == 0 else turn.prompt},
                          {"from": "gpt", "value": turn.answer}]  # fmt: skip
    instructions = [{"instruction_id_list": [c.instruction_id for c in turn.new], "kwargs": [c.kwargs for c in turn.new]}
                    for turn in dialogue]
    return _sample(index, "ifeval", scene, png, conversations, instructions=instructions)


def _sample(index: int, split: str, scene: Scene, png: bytes, conversations: list[dict], **extra) -> Sample:
    name = f"synth/train/{index:07d}.png"
    meta = {"index": index, "scene_id": index, "image_paths": [name], "scene": scene.to_json(), **extra}
    return Sample(index, f"synth-{split}-{index:07d}", SOURCE, conversations, [ImageRef(name=name, data=png)], meta)


def _noisy(config: SynthConfig, samples: list[Sample], scenes: list, noise_file: Path) -> list[Sample]:
    from data_prep.synth.noise import add_noise
    from mm.atomic import write_jsonl_atomic

    descriptions = [description(scene, config.world) for scene, _ in scenes]
    samples, records = add_noise(samples, config.noise, config.world, random.Random(f"{config.seed}:noise"), descriptions)
    write_jsonl_atomic(noise_file, records)
    return samples


def write_train(config: SynthConfig, options: ConvertOptions) -> dict[str, ConvertResult]:
    """`align/` and `instruct/` shard sets under `options.out_dir`, via the common converter."""
    scenes = [_train_scene(config, i) for i in range(config.num_train)]
    results = {}
    builders = [("align", align_sample), ("instruct", instruct_sample)] + [("ifeval", ifeval_sample)] * config.ifeval
    if config.pref:
        from data_prep.synth.preference import preference_sample  # imports this module

        builders.append(("pref", preference_sample))  # checks its own pairs (prompt, chosen, rejected)
    for split, build in builders:
        samples = []
        for index, (scene, png) in enumerate(scenes):
            sample = build(config, index, scene, png)
            if sample is None:  # no compatible instructions drawn for this scene
                continue
            if split != "pref":
                check_conversation(sample.conversations, len(sample.images))  # generator bug, not bad input: raise
            samples.append(sample)
        if split == "instruct" and config.noise > 0:
            samples = _noisy(config, samples, scenes, Path(options.out_dir) / "noise.jsonl")
        split_options = dataclasses.replace(options, out_dir=str(Path(options.out_dir) / split))
        results[split] = convert(samples, [], split_options, num_input_records=len(samples), source=SOURCE,
                                 input_info={"generator": "synth", "split": split, "seed": config.seed})  # fmt: skip
    if config.detail is not None:
        from data_prep.synth.detail_splits import write_detail_train  # imports this module

        results["detail"] = write_detail_train(config, options)
    return results
