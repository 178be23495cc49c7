"""Preference pairs from a model's own samples, labelled by the verifier.

For each prompt, the chosen response satisfies strictly more constraints than the rejected one; when several
pairs qualify one is drawn, seeded by the seed and the prompt's key (so a prompt's pair does not depend on the
other prompts). A prompt whose samples all score the same gives no pair. Pairs are plain records
{key, prompt, chosen, rejected, chosen_score, rejected_score}, `prompt` being the Alpaca prompt text the samples
continued; the reference log-probabilities (`dpo.reference_logps`) can be added as `ref_chosen_logps` and
`ref_rejected_logps`, TRL's names. They are written atomically as JSONL.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, read_complete_jsonl
from ..prompts import format_prompt
from .verifier import verifier_scores

PAIR_FIELDS = ("prompt", "chosen", "rejected", "chosen_score", "rejected_score")


def preference_pair(prompt: Mapping[str, Any], responses: Sequence[str], seed: int = 0,
                    scores: Sequence[float] | None = None) -> dict[str, Any] | None:
    """One pair (chosen scores strictly higher than rejected) drawn from `responses`, or None when none
    qualifies. `scores` default to the verifier's."""
    scores = list(verifier_scores(prompt, responses) if scores is None else scores)
    if len(scores) != len(responses):
        raise ValueError(f"{len(scores)} scores for {len(responses)} responses")
    candidates = [(i, j) for i in range(len(responses)) for j in range(len(responses)) if scores[i] > scores[j]]
    if not candidates:
        return None
    i, j = random.Random(f"{seed}:{prompt.get('key')}").choice(candidates)
    return {"key": prompt.get("key"), "prompt": format_prompt(prompt), "chosen": responses[i],
            "rejected": responses[j], "chosen_score": scores[i], "rejected_score": scores[j]}


def build_pairs(prompts: Sequence[Mapping[str, Any]], samples: Sequence[Sequence[str]],
                seed: int = 0) -> list[dict[str, Any]]:
    """`preference_pair` for each prompt and its samples (same order), the prompts that give none left out."""
    if len(samples) != len(prompts):
        raise ValueError(f"{len(samples)} lists of samples for {len(prompts)} prompts")
    pairs = (preference_pair(p, s, seed) for p, s in zip(prompts, samples))
    return [pair for pair in pairs if pair is not None]


def check_pair(pair: Any, where: str) -> dict[str, Any]:
    """The pair as a dict, or a ValueError naming `where` and the missing or wrong field."""
    if not isinstance(pair, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(pair).__name__}")
    for name in PAIR_FIELDS:
        if name not in pair:
            raise ValueError(f"{where}: missing field {name!r}")
    if not all(isinstance(pair[n], str) for n in ("prompt", "chosen", "rejected")):
        raise ValueError(f"{where}: prompt, chosen and rejected must be strings")
    return dict(pair)


def save_pairs(pairs: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write pairs as JSONL in one atomic write (readers see the old file or the new one); returns the path."""
    path = Path(path)
    checked = [check_pair(p, f"pair {i}") for i, p in enumerate(pairs)]
    atomic_write_text(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in checked))
    return path


def load_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The pairs of a JSONL file written by `save_pairs`, each checked."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return [check_pair(p, f"{path}: pair {i}") for i, p in enumerate(read_complete_jsonl(path))]
