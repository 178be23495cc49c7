"""DPO on a laptop, around the loss the training recipe uses (`train.preference`: pair features, response
log-probabilities, the loss and TRL's metrics): the reference log-probabilities computed once, before training, and
stored with the pairs (`reference_logps`, `with_reference_logps`; TRL's names `ref_chosen_logps` and
`ref_rejected_logps`), so no second model sits in memory while training; and the loss of a batch of pairs by hand
(`pair_losses`, `dpo_batch_loss`), as the notebook shows it once. A DPO run is the training recipe's:
`python -m alpaca_helpers.train --loss dpo --data_path pairs.jsonl ...` on pairs that carry their reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..train.preference import (
    DEFAULT_BETA,
    REFERENCE_FIELDS,
    dpo_loss,
    dpo_metrics,
    pair_batch,
    sequence_logps,
)
from ..train.tokenize import DEFAULT_MAX_LENGTH

if TYPE_CHECKING:
    import torch


def pair_losses(model, tokenizer, pairs: Sequence[Mapping[str, Any]], beta: float = DEFAULT_BETA,
                max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Per pair, for pairs that carry their stored reference log-probabilities: `losses` (with gradients),
    `chosen_rewards`, `rejected_rewards`, `chosen_logps` and `rejected_logps` under `model`."""
    import torch

    missing = [i for i, p in enumerate(pairs) if any(f not in p for f in REFERENCE_FIELDS)]
    if missing:
        raise ValueError(f"pair {missing[0]} has no reference log-probabilities: run reference_logps first")
    chosen, rejected = sequence_logps(model, pair_batch(tokenizer, pairs, max_length))
    ref = torch.tensor([[p[f] for f in REFERENCE_FIELDS] for p in pairs], dtype=torch.float64)
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta)
    return {"losses": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
            "chosen_logps": chosen, "rejected_logps": rejected}


def dpo_batch_loss(model, tokenizer, pairs: Sequence[Mapping[str, Any]], beta: float = DEFAULT_BETA,
                   max_length: int = DEFAULT_MAX_LENGTH) -> tuple[torch.Tensor, dict[str, float]]:
    """(mean loss with gradients, `dpo_metrics`) of a batch of pairs that carry their reference log-probabilities."""
    out = pair_losses(model, tokenizer, pairs, beta, max_length)
    metrics = dpo_metrics(out["losses"], out["chosen_rewards"], out["rejected_rewards"], out["chosen_logps"],
                          out["rejected_logps"])
    return out["losses"].mean(), metrics


def reference_logps(model, tokenizer, pairs: Sequence[Mapping[str, Any]], batch_size: int = 8,
                    max_length: int = DEFAULT_MAX_LENGTH) -> list[tuple[float, float]]:
    """(chosen, rejected) summed response log-probabilities of each pair under `model`, the frozen reference:
    computed once, in batches, without gradients, in eval mode."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                chosen, rejected = sequence_logps(model, pair_batch(tokenizer, pairs[start:start + batch_size],
                                                                    max_length))
                out.extend(zip(chosen.tolist(), rejected.tolist()))
    finally:
        model.train(was_training)
    return out


def with_reference_logps(pairs: Sequence[Mapping[str, Any]],
                         logps: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """Copies of the pairs with `ref_chosen_logps` and `ref_rejected_logps` (TRL's names) added."""
    if len(logps) != len(pairs):
        raise ValueError(f"{len(logps)} reference log-probabilities for {len(pairs)} pairs")
    return [{**p, REFERENCE_FIELDS[0]: c, REFERENCE_FIELDS[1]: r} for p, (c, r) in zip(pairs, logps)]
