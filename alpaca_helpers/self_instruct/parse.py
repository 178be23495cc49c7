"""Parsing a teacher's completion into (instruction, input, output) tasks, and Alpaca's task filters."""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field

NO_INPUT = "<noinput>"

# Tasks a text-only model cannot do (Alpaca's list); matched as whole words, case-insensitive.
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_BLACKLIST_RE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.I)

# Why a task was dropped; parse failures first, then filters in the order they are applied.
PARSE_REASONS = ("truncated", "missing_input", "missing_output", "empty_instruction", "empty_output",
                 "no_task_found")
FILTER_REASONS = ("too_short", "too_long", "blacklisted_word", "write_a_program", "starts_with_punctuation",
                  "starts_non_ascii", "too_similar")

# ---------------------------------------------------------------------------------------------- parser

@dataclass
class ParseResult:
    """The tasks found in one completion, and a count of every block that could not be used, by reason."""

    tasks: list[dict[str, str]] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)


_NUM = r"(?:\d+[ \t]*[.)][ \t]*)?"
_BLOCK_START = re.compile(rf"^[ \t]*{_NUM}Instruction[ \t]*:", re.M | re.I)
_LABEL = re.compile(rf"^[ \t]*{_NUM}(Instruction|Input|Output)[ \t]*:", re.M | re.I)
_SEPARATOR = re.compile(r"^[ \t]*#{3,}[ \t]*$", re.M)
# A chat reply often restates the slot's label ("4. Instruction:" + " 4. Instruction: Write...").
_RESTATED_LABEL = re.compile(rf"^(?:[ \t]*{_NUM}Instruction[ \t]*:[ \t]*)+", re.I)


def _parse_block(block: str) -> tuple[dict[str, str] | None, str | None]:
    """One `N. Instruction / N. Input / N. Output` block -> (task, None) or (None, failure reason)."""
    block = _SEPARATOR.split(block)[0]  # anything after a ### line is not part of this task
    labels = list(_LABEL.finditer(block))
    names = [m.group(1).lower() for m in labels]
    fields: dict[str, str] = {}
    for k, m in enumerate(labels):
        end = labels[k + 1].start() if k + 1 < len(labels) else len(block)
        fields.setdefault(names[k], block[m.end():end].strip())
    if "input" not in fields:
        return None, "missing_input"
    if "output" not in fields:
        return None, "missing_output"
    instruction = re.sub(r"\s+", " ", _RESTATED_LABEL.sub("", fields["instruction"].strip())).strip()
    if not instruction:
        return None, "empty_instruction"
    if not fields["output"]:
        return None, "empty_output"
    inp = fields["input"]
    if inp.lower().replace(" ", "") in (NO_INPUT, "noinput", "<none>"):
        inp = ""
    return {"instruction": instruction, "input": inp, "output": fields["output"]}, None


def split_blocks(text: str, first_number: int) -> list[str]:
    """A completion that continues the prompt after `"{first_number}. Instruction:"`, cut into one block per
    task: blocks start at each `N. Instruction:` line (numbers optional, `###` separators optional, so merged
    blocks are split too)."""
    full = f"{first_number}. Instruction:" + text
    starts = [m.start() for m in _BLOCK_START.finditer(full)]
    return [full[a:b] for a, b in zip(starts, starts[1:] + [len(full)])]


def parse_completion(text: str, first_number: int, finish_reason: str | None = None) -> ParseResult:
    """Parse a completion that continues the prompt after `"{first_number}. Instruction:"`.

    Blocks as `split_blocks` cuts them. When the completion stopped for length, the last block is dropped as
    truncated.
    """
    blocks = split_blocks(text, first_number)
    result = ParseResult()
    if finish_reason == "length" and blocks:
        blocks.pop()
        result.failures["truncated"] += 1
    for block in blocks:
        task, reason = _parse_block(block)
        if task is None:
            result.failures[reason] += 1
        else:
            result.tasks.append(task)
    if not blocks and not result.failures:
        result.failures["no_task_found"] += 1
    return result


_WHY_NOTHING_PARSED = {
    "truncated": "it had not finished its first task when it hit the {max_tokens}-token limit (small models ramble "
                 "or repeat a line)",
    "missing_input": "it wrote an instruction but no `Input:` line",
    "missing_output": "it wrote an instruction but no `Output:` line",
    "empty_instruction": "it left the instruction empty",
    "empty_output": "it left the output empty",
    "no_task_found": "it wrote no `Instruction:` block at all",
}


def no_task_note(failures: Counter | dict[str, int], max_tokens: int, teacher: str = "the teacher") -> str:
    """One line saying why a reply parsed to no task (its most common failure) and what a strong teacher gives."""
    reason = max(failures, key=lambda r: (failures[r], -PARSE_REASONS.index(r))) if failures else "no_task_found"
    why = _WHY_NOTHING_PARSED.get(reason, reason).format(max_tokens=max_tokens)
    return (f"Nothing parsed: {teacher}'s reply failed as `{reason}`: {why}. A strong teacher (text-davinci-003, "
            f"gpt-4o-mini) keeps the numbered Instruction / Input / Output format, so nearly every block parses; "
            f"the run below asks again and again, and section 6 shows the tasks it kept.")


def parse_instructions(text: str, first_number: int, finish_reason: str | None = None) -> ParseResult:
    """Parse a completion that continues a list of bare instructions after `"{first_number}. Instruction:"`.

    Blocks as `split_blocks` cuts them; each task is `{"instruction": ...}`: the block's text up to its first
    blank line, `###` separator or other label (a teacher that goes on with an Input or Output has them
    dropped). A block cut by the length limit is dropped as truncated.
    """
    blocks = split_blocks(text, first_number)
    result = ParseResult()
    if finish_reason == "length" and blocks:
        blocks.pop()
        result.failures["truncated"] += 1
    for block in blocks:
        block = _SEPARATOR.split(block)[0]
        labels = list(_LABEL.finditer(block))
        end = labels[1].start() if len(labels) > 1 else len(block)
        body = _RESTATED_LABEL.sub("", block[labels[0].end():end].strip()) if labels else ""
        instruction = re.sub(r"\s+", " ", re.split(r"\n[ \t]*\n", body.strip())[0]).strip()
        if instruction:
            result.tasks.append({"instruction": instruction})
        else:
            result.failures["empty_instruction"] += 1
    if not blocks and not result.failures:
        result.failures["no_task_found"] += 1
    return result


# --------------------------------------------------------------------------------------------- filters

def filter_reason(instruction: str) -> str | None:
    """Why Alpaca's filters reject `instruction` (a key of FILTER_REASONS), or None if it passes them.

    ROUGE-L similarity is checked separately, against the pool (see `rouge.filter_similar_detailed`).
    """
    words = len(instruction.split())
    if words <= 3:
        return "too_short"
    if words > 150:
        return "too_long"
    if _BLACKLIST_RE.search(instruction):
        return "blacklisted_word"
    if instruction.startswith("Write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "starts_with_punctuation"
    if not instruction[0].isascii():
        return "starts_non_ascii"
    return None
