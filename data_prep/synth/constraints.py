"""Verifiable formatting instructions (IFEval's ids) on scene-graph questions.

A constrained sample asks a scene question (the description, or a VQA program's question answered in a
sentence) with one or two IFEval instructions, and its answer is the scene's answer rewritten to follow
them. Every answer is checked with `eval.ifeval.check_response` before it is kept, so training data never
teaches a violation, and the held-out `ifeval_mm` split uses exactly the checkers that score it. A multi-turn
record gives instructions at its first turn that stay in force at the second (MMMT-IF's setting).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable

from data_prep.synth.programs import DESCRIBE_PROMPT, QA, VQA_PROGRAMS, ask, description, position_name
from data_prep.synth.world import Scene, WorldConfig
from eval.ifeval import check_response

END_PHRASE = "Is there anything else I can help with?"
STANDING = "From now on, in every answer: "
"""Opens the instructions of a multi-turn record's first turn: they hold for the rest of the conversation."""


@dataclass(frozen=True)
class Constraint:
    """One instruction: its IFEval id and kwargs, how the user words it, and how an answer is made to follow it.
    `stage` orders the rewrites: content first, then case, then what wraps the text."""

    instruction_id: str
    kwargs: dict
    phrase: str
    rewrite: Callable[[str], str]
    stage: int


def _sentences(scene: Scene, world: WorldConfig) -> str:
    return " ".join(f"There is a {o['size']} {o['color']} {o['shape']} at the {position_name(o['cell'], world.grid)}."
                    for o in scene.objects)


def _bullets(scene: Scene, world: WorldConfig) -> str:
    return "\n".join(f"* a {o['size']} {o['color']} {o['shape']} at the {position_name(o['cell'], world.grid)}"
                     for o in scene.objects)


def content_constraints(scene: Scene, world: WorldConfig, rng: random.Random) -> list[Constraint]:
    """Instructions that decide what the description looks like (at most one per answer)."""
    n = len(scene.objects)
    obj = rng.choice(scene.objects)
    return [
        Constraint("length_constraints:number_sentences", {"num_sentences": n, "relation": "at least"},
                   f"Your response should contain at least {n} sentence{'s' if n > 1 else ''}.",
                   lambda _: _sentences(scene, world), 0),
        Constraint("detectable_format:number_bullet_lists", {"num_bullets": n},
                   f"Your answer must contain exactly {n} bullet point{'s' if n > 1 else ''}. Use the markdown "
                   "bullet points such as:\n* This is point 1.", lambda _: _bullets(scene, world), 0),
        Constraint("keywords:existence", {"keywords": [obj["color"], obj["shape"]]},
                   f"Include the keywords {obj['color']}, {obj['shape']} in the response.", lambda text: text, 0),
    ]


def form_constraints(scene: Scene, rng: random.Random, question: str) -> list[Constraint]:
    """Instructions on case, punctuation, length and wrapping, for any answer."""
    words = rng.randint(20, 40)
    title = f"{len(scene.objects)} shape{'s' if len(scene.objects) > 1 else ''}"
    return [
        Constraint("change_case:english_lowercase", {}, "Your entire response should be in English, and in all "
                   "lowercase letters. No capital letters are allowed.", str.lower, 10),
        Constraint("change_case:english_capital", {}, "Your entire response should be in English, and in all "
                   "capital letters.", str.upper, 10),
        Constraint("punctuation:no_comma", {}, "Do not use any commas in your response.",
                   lambda text: text.replace(",", ""), 5),
        Constraint("length_constraints:number_words", {"num_words": words, "relation": "less than"},
                   f"Answer with less than {words} words.", lambda text: text, 5),
        Constraint("detectable_content:postscript", {"postscript_marker": "P.S."}, "At the end of your response, "
                   "please explicitly add a postscript starting with P.S.",
                   lambda text: f"{text}\nP.S. The background is dark.", 20),
        Constraint("startend:end_checker", {"end_phrase": END_PHRASE}, f"Finish your response with this exact phrase "
                   f"{END_PHRASE!r}. No other words should follow this phrase.",
                   lambda text: f"{text} {END_PHRASE}", 30),
        Constraint("detectable_format:title", {}, "Your answer must contain a title, wrapped in double angular "
                   "brackets, such as <<poem of joy>>.", lambda text: f"<<{title}>>\n{text}", 40),
        Constraint("startend:quotation", {}, "Wrap your entire response with double quotation marks.",
                   lambda text: f'"{text}"', 50),
        Constraint("detectable_format:json_format", {}, "Entire output should be wrapped in JSON format.",
                   lambda text: json.dumps({"answer": text}), 60),
        Constraint("combination:repeat_prompt", {"prompt_to_repeat": question}, "First repeat the request word for "
                   "word without change, then give your answer (1. do not say any words or characters before "
                   "repeating the request; 2. the request you need to repeat does not include this sentence)",
                   lambda text: f"{question}\n{text}", 70),
    ]


def follows_all(constraints: list[Constraint], prompt: str, answer: str) -> bool:
    strict, _ = check_response([c.instruction_id for c in constraints], [c.kwargs for c in constraints], prompt, answer)
    return all(strict)


def apply(constraints: list[Constraint], answer: str) -> str:
    for constraint in sorted(constraints, key=lambda c: c.stage):
        answer = constraint.rewrite(answer)
    return answer


def base_question(scene: Scene, world: WorldConfig, rng: random.Random) -> tuple[str, str, bool]:
    """(question, answer sentence, is a description): the description, or a VQA question answered in a sentence."""
    if rng.random() < 0.5:
        return DESCRIBE_PROMPT, description(scene, world), True
    qa: QA | None = ask(scene, rng, world, VQA_PROGRAMS)
    if qa is None:
        return DESCRIBE_PROMPT, description(scene, world), True
    return qa.question, f"The answer is {qa.answer}.", False


def draw_constraints(scene: Scene, world: WorldConfig, rng: random.Random, question: str, answer: str,
                     content: bool, given: list[Constraint] = (), count: int = 1, tries: int = 30
                     ) -> list[Constraint] | None:
    """`count` new instructions, compatible with the `given` ones in force, that the rewritten answer follows;
    `content`: the answer is a description, which content instructions may reshape."""
    taken = {c.instruction_id for c in given}
    pool = form_constraints(scene, rng, question)
    if content:
        pool = content_constraints(scene, world, rng) + pool
    pool = [c for c in pool if c.instruction_id not in taken]
    for _ in range(tries):
        picked = rng.sample(pool, min(count, len(pool)))
        if sum(c.stage == 0 for c in picked) > 1:
            continue
        everything = [*given, *picked]
        if follows_all(everything, question, apply(everything, answer)):
            return picked
    return None


def prompt_text(question: str, constraints: list[Constraint], standing: bool = False) -> str:
    phrases = " ".join(c.phrase for c in constraints)
    return f"{question}\n{STANDING if standing else ''}{phrases}"


@dataclass
class ConstrainedTurn:
    prompt: str
    answer: str
    new: list[Constraint]
    """Instructions this turn gives (earlier turns' stay in force)."""


def constrained_dialogue(scene: Scene, world: WorldConfig, rng: random.Random, turns: int) -> list[ConstrainedTurn]:
    """One or more turns; each turn's instructions hold for the later ones. Content instructions (which reshape
    a description) only in single-turn dialogues, since a standing one would reshape later answers too.
    Ends early where no compatible draw exists."""
    dialogue, in_force = [], []
    for number in range(turns):
        question, answer, is_description = base_question(scene, world, rng)
        new = draw_constraints(scene, world, rng, question, answer, is_description and turns == 1, in_force,
                               count=rng.randint(1, 2) if number == 0 else 1)
        if new is None:
            return dialogue
        in_force += new
        dialogue.append(ConstrainedTurn(prompt_text(question, new, standing=turns > 1 and number == 0),
                                        apply(in_force, answer), new))
    return dialogue


def ifeval_record(key: str, image: str, dialogue: list[ConstrainedTurn]) -> dict:
    """An `ifeval_mm` record: IFEval's single-turn layout for one turn, `turns` for more."""
    turns = [{"prompt": t.prompt, "instruction_id_list": [c.instruction_id for c in t.new],
              "kwargs": [c.kwargs for c in t.new]} for t in dialogue]
    return {"key": key, "image": image, **turns[0]} if len(turns) == 1 else {"key": key, "image": image, "turns": turns}
