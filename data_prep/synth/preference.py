"""Hallucination preference pairs from the training scene graphs: the `pref/` shards of `mm-prep synth`.

One pair per training scene, in the manner of POVID / HA-DPO: the prompt is a description request or a
VQA question about the scene; `chosen` is the faithful reply computed from the scene graph; `rejected` is
the same text with one thing changed to something the scene does not have:

    kind       describe (one object of the description changed)      vqa (a wrong short answer)
    object     its colour and shape -> a category absent from scene  exist: the other yes/no
    attribute  its colour, shape or size -> another value            attribute_*: another value;
                                                                      compare_size/color: the other yes/no
    count      (vqa only)                                             count: another number
    relation   its position -> a position it does not hold            spatial: the other yes/no

A description is true when it lists exactly the scene's (size, colour, shape, position) objects, so
changing one field of one listed object makes it false; a short answer has one true value. The
corruption is recorded as `meta.corruption` = {"kind", "form", ...}. Randomness comes from
`scene_rng(seed, "train", i, "pref")`: deterministic per seed, training scenes only (never eval's).
"""

from __future__ import annotations

import dataclasses
import random

from data_prep.pref import check_pair_sample
from data_prep.records import IMAGE_TOKEN, Sample
from data_prep.synth.generate import CAPTION_PROMPTS, SynthConfig, _sample, format_question, scene_rng
from data_prep.synth.noise import wrong_answer
from data_prep.synth.programs import ask, description, position_name
from data_prep.synth.world import Scene, WorldConfig

KINDS = ("object", "attribute", "count", "relation")
VQA_PROGRAMS_BY_KIND = {
    "object": ("exist",),
    "attribute": ("attribute_color", "attribute_shape", "attribute_size", "compare_size", "compare_color"),
    "count": ("count",),
    "relation": ("spatial",),
}


def corrupt_description(scene: Scene, world: WorldConfig, kind: str, rng: random.Random) -> tuple[str, dict] | None:
    """The scene's description with one listed object changed (`kind`), and what changed; None if the
    world allows no such change (e.g. every category present, a single colour, a 1x1 grid)."""
    objects = [dict(o) for o in scene.objects]
    order = list(range(len(objects)))
    rng.shuffle(order)
    present = {(o["color"], o["shape"]) for o in objects}
    for position in order:
        obj = objects[position]
        if kind == "object":
            options = [c for c in world.categories if c not in present]
            if not options:
                return None
            color, shape = rng.choice(options)
            change = {"attribute": "category", "from": f"{obj['color']} {obj['shape']}", "to": f"{color} {shape}"}
            obj["color"], obj["shape"] = color, shape
        elif kind == "attribute":
            attributes = [a for a in ("color", "shape", "size") if len(getattr(world, a + "s")) > 1]
            if not attributes:
                return None
            attribute = rng.choice(attributes)
            value = rng.choice([v for v in getattr(world, attribute + "s") if v != obj[attribute]])
            change = {"attribute": attribute, "from": obj[attribute], "to": value}
            obj[attribute] = value
        elif kind == "relation":  # moved to a cell named differently (an empty one when there is one)
            here = position_name(obj["cell"], world.grid)
            taken = {tuple(o["cell"]) for o in objects}
            cells = [(r, c) for r in range(world.grid) for c in range(world.grid) if position_name([r, c], world.grid) != here]
            if not cells:
                return None
            cell = list(rng.choice([c for c in cells if c not in taken] or cells))
            change = {"attribute": "position", "from": here, "to": position_name(cell, world.grid)}
            obj["cell"] = cell
        else:
            return None
        return description(Scene(objects), world), {"object": obj["id"], **change}
    return None


def _describe_pair(config: SynthConfig, scene: Scene, kind: str, rng: random.Random):
    corrupted = corrupt_description(scene, config.world, kind, rng)
    if corrupted is None:
        return None
    rejected, change = corrupted
    return rng.choice(CAPTION_PROMPTS), description(scene, config.world), rejected, {"program": "describe", **change}


def _vqa_pair(config: SynthConfig, scene: Scene, kind: str, rng: random.Random):
    qa = ask(scene, rng, config.world, VQA_PROGRAMS_BY_KIND[kind])
    if qa is None:
        return None
    wrong = wrong_answer(dataclasses.asdict(qa), config.world, rng, other_description="")
    return format_question(qa), qa.answer, wrong, {"program": qa.program, "from": qa.answer, "to": wrong}


def preference_sample(config: SynthConfig, index: int, scene: Scene, png: bytes) -> Sample | None:
    """A hallucination pair for training scene `index`: the drawn kind and form first, then the others
    in a fixed order when the scene allows no such pair (None when it allows none)."""
    rng = scene_rng(config.seed, "train", index, "pref")
    kind = rng.choice(KINDS)
    form = "vqa" if kind == "count" else rng.choice(("describe", "vqa"))
    attempts = [(kind, form), (kind, "vqa" if form == "describe" else "describe")]
    attempts += [(k, f) for k in KINDS for f in ("describe", "vqa") if (k, f) not in attempts]
    for kind, form in attempts:
        if (kind, form) == ("count", "describe"):
            continue
        pair = (_describe_pair if form == "describe" else _vqa_pair)(config, scene, kind, rng)
        if pair is not None:
            break
    else:
        return None
    prompt, chosen, rejected, change = pair
    conversations = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}]
    sample = _sample(index, "pref", scene, png, conversations, corruption={"kind": kind, "form": form, **change})
    sample.fields = {"chosen": chosen, "rejected": rejected}
    check_pair_sample(sample)  # a generator bug, not bad input: raise
    return sample
