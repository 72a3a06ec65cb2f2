"""Question programs: (scene graph, rng) -> a question and its answer, computed from the graph.

A program returns None when the scene does not allow an unambiguous question of its kind; the
caller then draws another program. Objects are referred to by the shortest attribute combination
that matches exactly one object (never by the attribute being asked about). Yes/no programs pick
the answer first (a fair coin) and then a question with that answer, so yes and no are balanced.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable

from data_prep.synth.world import RELATIONS, SIZE_SCALES, Scene, WorldConfig, relation_holds

ATTRIBUTES = ("size", "color", "shape")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
DESCRIBE_PROMPT = "Describe the image briefly."
LETTERS = "ABCD"


@dataclass
class QA:
    """One question with its answer."""

    program: str
    question: str
    answer: str
    answer_type: str
    """VQAv2 answer type: 'yes/no', 'number' or 'other'."""
    choices: list[str] = field(default_factory=list)
    """Options of a multiple-choice question (the answer is then a letter)."""


def refer(obj: dict, scene: Scene, rng: random.Random, exclude: str | None = None) -> str | None:
    """'the small red circle'-style expression matching only `obj`, or None if none exists."""
    attributes = [a for a in ATTRIBUTES if a != exclude]
    for length in range(1, len(attributes) + 1):
        unique = [
            combo for combo in itertools.combinations(attributes, length)
            if sum(all(o[a] == obj[a] for a in combo) for o in scene.objects) == 1
        ]  # fmt: skip
        if unique:
            combo = rng.choice(unique)
            words = [obj[a] for a in ATTRIBUTES if a in combo and a != "shape"]
            return "the " + " ".join([*words, obj["shape"] if "shape" in combo else "object"])
    return None


def plural(shape: str) -> str:
    return shape + "s"


def _yes_no(answer: bool) -> str:
    return "yes" if answer else "no"


def attribute(name: str) -> Callable[[Scene, random.Random, WorldConfig], QA | None]:
    """'What color/shape/size is <ref>?'"""

    def program(scene: Scene, rng: random.Random, world: WorldConfig) -> QA | None:
        obj = rng.choice(scene.objects)
        ref = refer(obj, scene, rng, exclude=name)
        return QA(f"attribute_{name}", f"What {name} is {ref}?", obj[name], "other") if ref else None

    return program


def _count_filter(scene: Scene, rng: random.Random, world: WorldConfig) -> tuple[dict, str]:
    """A filter (attribute -> value) and its plural noun phrase; values mostly from the scene."""
    kind = rng.choice(["all", "color", "shape", "size", "color+shape"])
    source = rng.choice(scene.objects) if rng.random() < 0.7 else None
    pick = {a: source[a] if source else rng.choice(getattr(world, a + "s")) for a in ATTRIBUTES}
    if kind == "all":
        return {}, "objects"
    if kind == "shape":
        return {"shape": pick["shape"]}, plural(pick["shape"])
    if kind == "color+shape":
        return {"color": pick["color"], "shape": pick["shape"]}, f"{pick['color']} {plural(pick['shape'])}"
    return {kind: pick[kind]}, f"{pick[kind]} objects"


def count(scene: Scene, rng: random.Random, world: WorldConfig) -> QA | None:
    """'How many <filter> are there?'"""
    where, noun = _count_filter(scene, rng, world)
    number = sum(all(o[a] == v for a, v in where.items()) for o in scene.objects)
    return QA("count", f"How many {noun} are there?", str(number), "number")


def exist(scene: Scene, rng: random.Random, world: WorldConfig) -> QA | None:
    """'Is there a <color> <shape> in the image?' (the POPE question)."""
    present = {(o["color"], o["shape"]) for o in scene.objects}
    want = rng.random() < 0.5
    options = sorted(present) if want else [c for c in world.categories if c not in present]
    if not options:
        return None
    color, shape = rng.choice(options)
    return QA("exist", f"Is there a {color} {shape} in the image?", _yes_no(want), "yes/no")


def _pair_program(name: str, exclude: str | None, variants: tuple[str, ...], template: Callable[[str, str, str], str],
                  holds: Callable[[dict, dict, str], bool], applies: Callable[[dict, dict, str], bool]):  # fmt: skip
    """A yes/no question about an ordered pair of uniquely referable objects.

    `applies(a, b, variant)`: the pair can be asked about; `holds(a, b, variant)`: the answer is yes.
    """

    def program(scene: Scene, rng: random.Random, world: WorldConfig) -> QA | None:
        variant, want = rng.choice(variants), rng.random() < 0.5
        pairs = [(a, b) for a in scene.objects for b in scene.objects
                 if a is not b and applies(a, b, variant) and holds(a, b, variant) == want]  # fmt: skip
        rng.shuffle(pairs)
        for a, b in pairs:
            ref_a, ref_b = refer(a, scene, rng, exclude), refer(b, scene, rng, exclude)
            if ref_a and ref_b:
                return QA(name, template(ref_a, ref_b, variant), _yes_no(want), "yes/no")
        return None

    return program


def _on_different_lines(a: dict, b: dict, relation: str) -> bool:
    axis = 1 if relation in ("left of", "right of") else 0  # left/right compare columns
    return a["cell"][axis] != b["cell"][axis]


def _larger(a: dict, b: dict, word: str) -> bool:
    difference = SIZE_SCALES[a["size"]] - SIZE_SCALES[b["size"]]
    return difference > 0 if word == "larger" else difference < 0


spatial = _pair_program(
    "spatial", None, RELATIONS, lambda a, b, rel: f"Is {a} {RELATION_PHRASES[rel]} {b}?",
    holds=relation_holds, applies=_on_different_lines,
)
compare_size = _pair_program(
    "compare_size", "size", ("larger", "smaller"), lambda a, b, word: f"Is {a} {word} than {b}?",
    holds=_larger, applies=lambda a, b, word: True,
)
compare_color = _pair_program(
    "compare_color", "color", ("same",), lambda a, b, _: f"Do {a} and {b} have the same color?",
    holds=lambda a, b, _: a["color"] == b["color"], applies=lambda a, b, _: True,
)


def multiple_choice(scene: Scene, rng: random.Random, world: WorldConfig) -> QA | None:
    """A colour or counting question with four lettered options."""
    if rng.random() < 0.5 and len(world.colors) >= 4:
        base = attribute("color")(scene, rng, world)
        space = list(world.colors)
    elif world.max_objects >= 3:
        base = count(scene, rng, world)
        space = [str(n) for n in range(world.max_objects + 1)]
    else:
        return None
    if base is None:
        return None
    choices = rng.sample([v for v in space if v != base.answer], 3) + [base.answer]
    rng.shuffle(choices)
    variant = "color" if base.program.startswith("attribute") else "count"
    return QA(f"multiple_choice_{variant}", base.question, LETTERS[choices.index(base.answer)], "other", choices)


def position_name(cell: list[int], grid: int) -> str:
    """'top left', 'center', 'bottom center', ... (grid split in thirds)."""
    row, col = (min(2, index * 3 // grid) for index in cell)
    vertical, horizontal = ("top", "middle", "bottom")[row], ("left", "center", "right")[col]
    return "center" if (vertical, horizontal) == ("middle", "center") else f"{vertical} {horizontal}"


def description(scene: Scene, world: WorldConfig) -> str:
    """One sentence listing every object in reading order (also the stage-1 caption)."""
    parts = [f"a {o['size']} {o['color']} {o['shape']} at the {position_name(o['cell'], world.grid)}" for o in scene.objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    head = "There is one object" if len(parts) == 1 else f"There are {len(parts)} objects"
    return f"{head}: {listed}."


def describe(scene: Scene, rng: random.Random, world: WorldConfig) -> QA | None:
    return QA("describe", DESCRIBE_PROMPT, description(scene, world), "other")


PROGRAMS: dict[str, Callable[[Scene, random.Random, WorldConfig], QA | None]] = {
    "attribute_color": attribute("color"),
    "attribute_shape": attribute("shape"),
    "attribute_size": attribute("size"),
    "count": count,
    "exist": exist,
    "spatial": spatial,
    "compare_size": compare_size,
    "compare_color": compare_color,
    "multiple_choice": multiple_choice,
    "describe": describe,
}
VQA_PROGRAMS = ("attribute_color", "attribute_shape", "attribute_size", "count", "exist", "spatial", "compare_size", "compare_color")
"""Programs with short exact answers: the VQA-style evaluation split."""


def get_program(name: str) -> Callable[[Scene, random.Random, WorldConfig], QA | None]:
    if name not in PROGRAMS:
        raise KeyError(f"unknown question program {name!r}; valid: {', '.join(PROGRAMS)}")
    return PROGRAMS[name]


def answer_space_size(program: str, world: WorldConfig) -> int:
    """How many answers a VQA program can give (for the chance level)."""
    sizes = {
        "attribute_color": len(world.colors), "attribute_shape": len(world.shapes), "attribute_size": len(world.sizes),
        "count": world.max_objects + 1, "exist": 2, "spatial": 2, "compare_size": 2, "compare_color": 2,
    }  # fmt: skip
    if program not in sizes:
        raise KeyError(f"no answer space for {program!r}; valid: {', '.join(sizes)}")
    return sizes[program]


def ask(scene: Scene, rng: random.Random, world: WorldConfig, programs: tuple[str, ...], *,
        avoid: set[str] = frozenset(), tries: int = 50) -> QA | None:  # fmt: skip
    """A question from a random program of `programs` (uniform), not already in `avoid`."""
    for _ in range(tries):
        qa = get_program(rng.choice(programs))(scene, rng, world)
        if qa is not None and qa.question not in avoid:
            return qa
    return None
