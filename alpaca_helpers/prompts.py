"""The two Alpaca prompt templates, character for character as in the Stanford Alpaca release."""

from __future__ import annotations

from collections.abc import Mapping

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
RESPONSE_MARKER = "### Response:"


def format_prompt(example: Mapping[str, str]) -> str:
    """Return the Alpaca prompt for an example (everything before the response).

    The template with input is used when `input` is a non-empty string, the other one otherwise.
    """
    instruction = example["instruction"]
    inp = example.get("input") or ""
    if inp:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=inp)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def format_training_text(example: Mapping[str, str], eos_token: str) -> str:
    """Return the full training text: prompt + output + eos (the loss covers output + eos only)."""
    return format_prompt(example) + example["output"] + eos_token
