"""Strict and loose IFEval verdicts for one response (the reference's evaluation_lib rules)."""

from __future__ import annotations

from eval.ifeval.errors import InstructionArgumentError
from eval.ifeval.registry import Instruction, validate


def clean_kwargs(kwargs: dict | None) -> dict:
    """Drop the ``None`` values the Hugging Face layout pads every kwargs dict with.

    Falsy values such as ``0``, ``""`` or ``[]`` are kept: they are real arguments.
    """
    return {key: value for key, value in (kwargs or {}).items() if value is not None}


def loose_variants(response: str) -> list[str]:
    """The eight texts the loose score tries, in the reference's order.

    The response itself, and with its first line, last line, or both removed (each then
    stripped); every one of the four also with all ``*`` removed.
    """
    lines = response.split("\n")
    trimmed = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *trimmed, *(t.replace("*", "") for t in trimmed)]


def _follows(instruction: Instruction, kwargs: dict, response: str) -> bool:
    """A blank response never follows; otherwise the instruction's rule decides."""
    return bool(response.strip()) and instruction.check(response, **kwargs)


def check_response(instruction_ids: list[str], kwargs_list: list[dict], prompt: str,
                   response: str) -> tuple[list[bool], list[bool]]:
    """Per instruction, whether ``response`` follows it: ``(strict, loose)``.

    ``kwargs_list[i]`` holds instruction i's arguments (``None`` values are dropped, see
    ``clean_kwargs``). ``prompt`` is accepted for parity with the reference, which passes the
    prompt only to instructions that have an argument named "prompt"; no registered
    instruction has one (repeat_prompt reads ``prompt_to_repeat``), so it never changes a verdict.
    Raises ``UnknownInstruction`` or ``InstructionArgumentError`` before checking anything.
    """
    if len(instruction_ids) != len(kwargs_list):
        raise InstructionArgumentError(
            "<all>", "kwargs_list", f"has {len(kwargs_list)} entries for {len(instruction_ids)} instruction ids")
    cleaned = [clean_kwargs(kwargs) for kwargs in kwargs_list]
    instructions = [validate(iid, kwargs) for iid, kwargs in zip(instruction_ids, cleaned)]
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction, kwargs in zip(instructions, cleaned):
        strict.append(_follows(instruction, kwargs, response))
        loose.append(any(_follows(instruction, kwargs, variant) for variant in variants))
    return strict, loose
