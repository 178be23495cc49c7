"""Best-of-n at inference: sample n answers to a prompt and keep the one the verifier scores best.

The cheapest way to use a verifier: no training, n times the generation. Ties go to the earliest sample, so the
pick is deterministic for given samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .verifier import verifier_scores

Sampler = Callable[[Mapping[str, Any], int], Sequence[str]]


def pick_best(prompt: Mapping[str, Any], responses: Sequence[str]) -> dict[str, Any]:
    """{response, score, index, scores}: the best-scored response (the first among ties) and every score."""
    if not responses:
        raise ValueError(f"prompt {prompt.get('key')}: no responses to choose from")
    scores = verifier_scores(prompt, responses)
    index = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return {"response": responses[index], "score": scores[index], "index": index, "scores": scores}


def best_of_n(prompts: Sequence[Mapping[str, Any]], samples: Sampler | Sequence[Sequence[str]],
              n: int | None = None) -> list[dict[str, Any]]:
    """`pick_best` for each prompt, with its `key`. `samples` is either the responses per prompt (same order,
    the first `n` used when `n` is given) or a callable `samples(prompt, n)` returning n responses."""
    if callable(samples):
        if n is None or n < 1:
            raise ValueError(f"a sampler needs n >= 1, got {n}")
        lists = [list(samples(p, n)) for p in prompts]
    else:
        if len(samples) != len(prompts):
            raise ValueError(f"{len(samples)} lists of samples for {len(prompts)} prompts")
        lists = [list(s)[:n] if n is not None else list(s) for s in samples]
    return [{"key": p.get("key"), **pick_best(p, responses)} for p, responses in zip(prompts, lists)]
