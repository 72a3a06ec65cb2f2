"""Errors raised by the IFEval checkers."""

from __future__ import annotations


class UnknownInstruction(KeyError):
    """The instruction id is not one of ``INSTRUCTION_IDS``."""

    def __init__(self, instruction_id: str):
        super().__init__(instruction_id)
        self.instruction_id = instruction_id

    def __str__(self) -> str:
        return f"unknown IFEval instruction id {self.instruction_id!r}"


class InstructionArgumentError(ValueError):
    """An instruction's kwargs lack a required key, carry an unknown key, or hold a bad value.

    The message names the instruction id and the key.
    """

    def __init__(self, instruction_id: str, key: str, problem: str):
        super().__init__(f"{instruction_id}: argument {key!r} {problem}")
        self.instruction_id = instruction_id
        self.key = key
