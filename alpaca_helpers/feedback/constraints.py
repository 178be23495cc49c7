"""Prompts with verifiable constraints, built from the course's own instructions and never from IFEval's prompts.

Each prompt is a course instruction (by default the 175 self-instruct seed tasks) with one or two constraints
appended, each written by the `if-verifiable` instruction class that later checks it (`build_description`, with
arguments given here or drawn by the class itself): "all lowercase", "no commas", "exactly N bullet points", "end
with this phrase", "include these keywords", "JSON", "fewer than N words"... The types are those a 135M model
sometimes satisfies, so that its own samples differ in how many constraints they pass.

A prompt is an Alpaca record (`instruction` holds the constraints' text, `input` the task's input) plus the fields
IFEval's checks read: `key`, `instruction_id_list` and one `kwargs` dict per constraint. Everything is seeded: the
same seed gives the same prompts. Prompts that resemble one of IFEval's 541 (ROUGE-L above the self-instruct
filter's 0.7) are removed, so that IFEval stays a clean evaluation; the split into training and held-out prompts
keeps each instruction on one side.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..data import load_seed_tasks
from ..evaluate.ifeval import load_ifeval
from ..self_instruct.rouge import THRESHOLD, rouge_l_matrix

_STOPWORDS = frozenset(
    "about above after again against their there these those which while would could should other every where "
    "given write following using based provide create include explain describe answer sentence words below".split())


def _keywords_from(instruction: str, rng: random.Random) -> dict[str, Any]:
    words = list(dict.fromkeys(w.lower() for w in re.findall(r"[A-Za-z]{5,}", instruction)))
    words = [w for w in words if w not in _STOPWORDS]
    return {"keywords": rng.sample(words, min(2, len(words)))} if words else {}


# Arguments chosen here (the rest the class draws itself, from the seeded global `random`): ranges a short answer
# can meet, where the class's own (100 to 500 words, up to 20 sentences) are out of a small model's reach, and
# keywords the instruction itself uses, where the class's are random dictionary words.
_GIVEN: dict[str, Callable[[random.Random, str], dict[str, Any]]] = {
    "change_case:english_lowercase": lambda rng, text: {},
    "punctuation:no_comma": lambda rng, text: {},
    "detectable_format:number_bullet_lists": lambda rng, text: {},
    "startend:end_checker": lambda rng, text: {},
    "keywords:existence": lambda rng, text: _keywords_from(text, rng),
    "detectable_format:json_format": lambda rng, text: {},
    "length_constraints:number_words": lambda rng, text: {"num_words": rng.randint(20, 120)},
    "length_constraints:number_sentences": lambda rng, text: {"num_sentences": rng.randint(2, 6)},
    "detectable_content:postscript": lambda rng, text: {},
    "detectable_format:title": lambda rng, text: {},
}
CONSTRAINT_TYPES = tuple(_GIVEN)


@contextmanager
def _seeded_global_random(seed: int) -> Iterator[None]:
    """The instruction classes draw from the global `random`: seed it for the block, then put its state back."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _registry() -> tuple[dict[str, Any], dict[str, set[str]]]:
    from if_verifiable.ifeval.instructions_registry import (
        INSTRUCTION_CONFLICTS,
        INSTRUCTION_DICT,
    )

    return INSTRUCTION_DICT, INSTRUCTION_CONFLICTS


def build_constraint(instruction_id: str, rng: random.Random, instruction: str = "",
                     **given: Any) -> dict[str, Any]:
    """One constraint {id, kwargs, description}, written by if-verifiable's own class for `instruction_id`.

    Arguments in `given` are passed as they are; otherwise the course's choice for this type (drawn from `rng`,
    keywords from `instruction`), and whatever is still missing the class draws, seeded from `rng`.
    """
    classes, _ = _registry()
    if instruction_id not in classes:
        raise ValueError(f"unknown constraint type {instruction_id!r} (if-verifiable has {', '.join(classes)})")
    arguments = {**(_GIVEN[instruction_id](rng, instruction) if instruction_id in _GIVEN else {}), **given}
    checker = classes[instruction_id](instruction_id)
    with _seeded_global_random(rng.getrandbits(32)):
        description = checker.build_description(**arguments)
    return {"id": instruction_id, "kwargs": dict(checker.get_instruction_args() or {}), "description": description}


def conflicts(first: str, second: str) -> bool:
    """Whether two constraint types cannot be asked together (if-verifiable's conflict table, both ways)."""
    _, table = _registry()
    return first == second or second in table.get(first, set()) or first in table.get(second, set())


def _pick_types(rng: random.Random, types: Sequence[str], count: int) -> list[str]:
    picked: list[str] = []
    for candidate in rng.sample(list(types), len(types)):
        if len(picked) == count:
            break
        if not any(conflicts(candidate, p) for p in picked):
            picked.append(candidate)
    return picked


def constrain(record: Mapping[str, Any], rng: random.Random, key: int, types: Sequence[str] = CONSTRAINT_TYPES,
              max_constraints: int = 2) -> dict[str, Any]:
    """One Alpaca record with 1 to `max_constraints` non-conflicting constraints of `types` appended to its
    instruction, on a line of their own (an instruction may end with "the following:", its input's cue)."""
    base = " ".join(record["instruction"].split())
    chosen = [build_constraint(t, rng, base) for t in _pick_types(rng, types, rng.randint(1, max_constraints))]
    return {
        "key": key, "source_id": record.get("id", key), "base_instruction": base,
        "instruction": base + "\n" + " ".join(c["description"] for c in chosen), "input": record.get("input") or "",
        "instruction_id_list": [c["id"] for c in chosen], "kwargs": [c["kwargs"] for c in chosen],
    }


def constrained_prompts(records: Sequence[Mapping[str, Any]] | None = None, seed: int = 0,
                        per_instruction: int = 1, types: Sequence[str] = CONSTRAINT_TYPES,
                        max_constraints: int = 2) -> list[dict[str, Any]]:
    """`per_instruction` constrained prompts for each record (default: the 175 seed tasks), keys 0, 1, ...;
    the same seed gives the same prompts."""
    records = load_seed_tasks() if records is None else records
    rng = random.Random(seed)
    return [constrain(r, rng, i * per_instruction + j, types, max_constraints)
            for i, r in enumerate(records) for j in range(per_instruction)]


def prompt_as_text(prompt: Mapping[str, Any]) -> str:
    """What a prompt asks, as one text (instruction, then input): what is compared with IFEval's prompts."""
    return f"{prompt['instruction']}\n\n{prompt['input']}" if prompt.get("input") else prompt["instruction"]


@dataclass
class Deduplicated:
    """Prompts kept and removed, each removed one with `ifeval_key` and `rouge_l` (its closest IFEval prompt)."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)


def remove_ifeval_duplicates(prompts: Sequence[Mapping[str, Any]],
                             ifeval: Sequence[Mapping[str, Any]] | None = None,
                             threshold: float = THRESHOLD) -> Deduplicated:
    """Remove the prompts whose ROUGE-L with some IFEval prompt (default: all 541) exceeds `threshold` (the
    self-instruct filter's 0.7), the course's prompt as ROUGE's target as in that filter."""
    ifeval = load_ifeval() if ifeval is None else ifeval
    out = Deduplicated()
    if not prompts:
        return out
    scores = rouge_l_matrix([prompt_as_text(p) for p in prompts], [row["prompt"] for row in ifeval])
    for prompt, row in zip(prompts, scores):
        best = int(row.argmax()) if row.size else -1
        if best >= 0 and row[best] > threshold:
            out.removed.append({**prompt, "ifeval_key": ifeval[best].get("key"), "rouge_l": float(row[best])})
        else:
            out.kept.append(dict(prompt))
    return out


def split_prompts(prompts: Sequence[Mapping[str, Any]], held_out_fraction: float = 0.25,
                  seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_out): a seeded share of the distinct instructions is held out with all its prompts, so no
    instruction is on both sides; each side keeps the prompts' order."""
    if not 0 <= held_out_fraction <= 1:
        raise ValueError(f"held_out_fraction must be within [0, 1], got {held_out_fraction}")
    instructions = list(dict.fromkeys(p["base_instruction"].lower() for p in prompts))
    random.Random(seed).shuffle(instructions)
    held = set(instructions[:math.ceil(held_out_fraction * len(instructions))])
    train = [dict(p) for p in prompts if p["base_instruction"].lower() not in held]
    return train, [dict(p) for p in prompts if p["base_instruction"].lower() in held]


@dataclass
class PromptSets:
    """The training and held-out prompts, and the prompts removed as IFEval look-alikes."""

    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    removed: list[dict[str, Any]]


def prompt_sets(records: Sequence[Mapping[str, Any]] | None = None, seed: int = 0, per_instruction: int = 1,
                held_out_fraction: float = 0.25, types: Sequence[str] = CONSTRAINT_TYPES,
                max_constraints: int = 2) -> PromptSets:
    """Constrained prompts from `records` (default: the seed tasks), IFEval look-alikes removed, split in two."""
    deduplicated = remove_ifeval_duplicates(
        constrained_prompts(records, seed, per_instruction, types, max_constraints))
    train, held_out = split_prompts(deduplicated.kept, held_out_fraction, seed)
    return PromptSets(train, held_out, deduplicated.removed)
