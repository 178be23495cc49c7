"""The two Alpaca prompt templates, character for character as in the Stanford Alpaca release, and the other
prompt format a run can use: the model's own chat template."""

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
# "alpaca": the recipe's template above; "chat": the tokenizer's chat template (ChatML for SmolLM2-Instruct).
PROMPT_FORMATS = ("alpaca", "chat")


class PromptFormatError(ValueError):
    """An unknown prompt format, or `chat` for a tokenizer that has no chat template."""


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


def chat_messages(example: Mapping[str, str]) -> list[dict[str, str]]:
    """The record as one user turn: the instruction, then the input (when there is one) after a blank line."""
    inp = example.get("input") or ""
    content = f"{example['instruction']}\n\n{inp}" if inp else example["instruction"]
    return [{"role": "user", "content": content}]


def prompt_text(example: Mapping[str, str], prompt_format: str = "alpaca", tokenizer=None) -> str:
    """Everything before the response, in `prompt_format`: Alpaca's template, or the tokenizer's chat template
    with the assistant's turn opened (`add_generation_prompt=True`), so the response follows directly."""
    if prompt_format == "alpaca":
        return format_prompt(example)
    if prompt_format != "chat":
        raise PromptFormatError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise PromptFormatError("prompt_format chat needs a tokenizer with a chat template (a base model usually "
                                "has none): use prompt_format alpaca")
    return tokenizer.apply_chat_template(chat_messages(example), tokenize=False, add_generation_prompt=True)
