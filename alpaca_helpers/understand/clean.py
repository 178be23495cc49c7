"""Cleaning rules for a training set: Alpaca's instruction filters (notebook 01) and broken outputs.

The rules, in the order they are checked (a record is dropped by the first rule that rejects it):

- `alpaca_filters`: the instruction fails one of the filters self-instruct applies to generated tasks
  (`self_instruct.parse.filter_reason`: too short or long, a blacklisted word such as "image", "Write a
  program", leading punctuation or a non-ASCII first character);
- `empty_output`: the output is empty or Alpaca's `<nooutput>` placeholder;
- `duplicate_task`: the same instruction and input (case and spacing ignored) as an earlier record;
- `duplicate_output`: an output of at least `MIN_DUPLICATE_WORDS` words that an earlier record already has
  (short answers such as "Yes" or "Positive" legitimately repeat);
- `truncated_output`: the output does not fit beside its prompt in `max_length` tokens, so training would cut
  it and still train an end-of-sequence at the cut: the model would learn to stop mid-answer (needs the
  tokenizer; the same length policy as training, `train.tokenize.build_dataset`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..self_instruct.parse import filter_reason
from ..train.tokenize import build_dataset

CLEANING_RULES = ("alpaca_filters", "empty_output", "duplicate_task", "duplicate_output", "truncated_output")
EMPTY_OUTPUTS = {"", "<nooutput>", "<no output>"}
MIN_DUPLICATE_WORDS = 5


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def truncated_indices(records: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int) -> set[int]:
    """Indices of the records whose output training would cut (or drop) at `max_length` tokens."""
    built = build_dataset(records, tokenizer, max_length=max_length)
    cut = {i for i, t in zip(built.dataset["example_id"], built.dataset["truncated"]) if t}
    return cut | set(built.stats.dropped_ids)


def clean_reasons(records: Sequence[Mapping[str, Any]], rules: Sequence[str] = CLEANING_RULES,
                  tokenizer: Any = None, max_length: int | None = None) -> list[str | None]:
    """For each record, the first of `rules` that rejects it, or None when it is kept. Of duplicates, the
    first copy is kept. `truncated_output` needs `tokenizer` and `max_length`."""
    unknown = sorted(set(rules) - set(CLEANING_RULES))
    if unknown:
        raise ValueError(f"unknown cleaning rule(s) {unknown} (rules: {', '.join(CLEANING_RULES)})")
    if "truncated_output" in rules and (tokenizer is None or max_length is None):
        raise ValueError("the truncated_output rule needs the tokenizer and max_length of training")
    cut = truncated_indices(records, tokenizer, max_length) if "truncated_output" in rules else set()
    tasks: set[tuple[str, str]] = set()
    outputs: set[str] = set()
    reasons: list[str | None] = []
    for i, r in enumerate(records):
        task, output = (_normal(r["instruction"]), _normal(r.get("input") or "")), _normal(r["output"])
        checks = {
            "alpaca_filters": lambda: filter_reason(r["instruction"].strip()) is not None,
            "empty_output": lambda: output in EMPTY_OUTPUTS,
            "duplicate_task": lambda: task in tasks,
            "duplicate_output": lambda: len(output.split()) >= MIN_DUPLICATE_WORDS and output in outputs,
            "truncated_output": lambda: i in cut,
        }
        reasons.append(next((rule for rule in CLEANING_RULES if rule in rules and checks[rule]()), None))
        tasks.add(task)
        outputs.add(output)
    return reasons
