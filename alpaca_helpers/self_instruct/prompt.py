"""The self-instruct request: seed tasks shown as numbered blocks, and where the teacher should stop."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from .parse import NO_INPUT

NUM_PROMPT_INSTRUCTIONS = 3  # seed tasks shown in each prompt (Alpaca)
TASKS_PER_PROMPT = 20  # new tasks asked for in each prompt (Alpaca)

PROMPT_HEADER = """\
You are helping to build a training set for an assistant that follows instructions. Continue the list \
below until it holds {total} tasks: the first {shown} are examples, and the {new} you add must be new \
and different from them and from each other. Each task has an instruction, an input and an output.

What makes a good task:
1. Vary the opening verb: no two instructions should start with the same one.
2. Vary the kind of task: questions, rewriting, classification, brainstorming, extraction, editing, \
reasoning, open-ended writing and more.
3. Write everything in English.
4. An instruction is one or two sentences, either a command or a question.
5. The assistant reads and writes text only: no task may ask it to see, hear, draw or do anything \
outside the conversation.
6. When an instruction needs material to work on, give a realistic and specific input (a passage, a list, \
a sentence, a short code snippet), not a placeholder. When it needs none, the input is exactly {no_input}.
7. The output is a correct, helpful answer to the instruction and its input, under about 100 words.

Tasks:
"""


# ---------------------------------------------------------------------------------------------- prompt

def _clean_instruction(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(":")


def encode_prompt(examples: Sequence[Mapping[str, str]], tasks_per_prompt: int = TASKS_PER_PROMPT) -> str:
    """The generation prompt: requirements, the example tasks as numbered blocks, and the next open slot."""
    shown = len(examples)
    prompt = PROMPT_HEADER.format(total=shown + tasks_per_prompt, shown=shown, new=tasks_per_prompt,
                                  no_input=NO_INPUT)
    for i, task in enumerate(examples, start=1):
        inp = (task.get("input") or "").strip() or NO_INPUT
        prompt += (f"###\n{i}. Instruction: {_clean_instruction(task['instruction'])}\n"
                   f"{i}. Input:\n{inp}\n{i}. Output:\n{task['output'].strip()}\n")
    return prompt + f"###\n{shown + 1}. Instruction:"


def request_prompt(seeds: Sequence[Mapping[str, str]], seed: int, index: int,
                   num_prompt_instructions: int = NUM_PROMPT_INSTRUCTIONS,
                   tasks_per_prompt: int = TASKS_PER_PROMPT) -> str:
    """The prompt of request number `index` of a run: its example seed tasks depend only on (seed, index)."""
    examples = random.Random(f"{seed}:{index}:examples").sample(list(seeds), num_prompt_instructions)
    return encode_prompt(examples, tasks_per_prompt)


def stop_strings(num_examples: int, tasks_per_prompt: int = TASKS_PER_PROMPT) -> list[str]:
    """Where the teacher should stop: at the block after the last one asked for."""
    return [f"{num_examples + tasks_per_prompt + 1}. Instruction"]
