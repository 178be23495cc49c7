"""DPO (Rafailov et al. 2023): the loss, its inputs and the metrics the field reads, from scratch.

For a pair (prompt x, chosen y_c, rejected y_r), with log pi(y | x) the summed log-probability of the response's
tokens under the model being trained and log ref(y | x) the same under the frozen starting model:

    loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))

Only the response's tokens count, plus the eos that ends it, tokenized exactly as the training recipe does
(`train.tokenize`: the prompt and the response tokenized apart, the prompt's labels -100). The reference
log-probabilities are computed once, before training (`reference_logps`), and stored with the pairs, so no
second model sits in memory while training. The metrics carry TRL's names: `rewards/chosen` and
`rewards/rejected` (beta times the log-ratio), `rewards/accuracies` (share of pairs whose chosen reward is the
higher), `rewards/margins`, `logps/chosen`, `logps/rejected`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..train.tokenize import DEFAULT_MAX_LENGTH, IGNORE_INDEX, encode_continuation, encode_prompt

if TYPE_CHECKING:
    import torch

DEFAULT_BETA = 0.1  # the DPO paper's and TRL's default (SmolLM2's own DPO used 0.5)
REFERENCE_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")  # TRL's column names


def response_features(tokenizer, prompt: str, response: str,
                      max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, list[int]]:
    """`input_ids` and `labels` of prompt + response + eos, the prompt's labels -100, as the training recipe
    builds them; a response too long for `max_length` is cut (the eos stays)."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    room = max_length - len(prompt_ids) - 1
    if room < 1:
        raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room for a response in {max_length}")
    trained = encode_continuation(tokenizer, [response])[0][:room] + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + trained, "labels": [IGNORE_INDEX] * len(prompt_ids) + trained}


def pair_batch(tokenizer, pairs: Sequence[Mapping[str, Any]],
               max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """One padded batch of the pairs: the chosen rows first, then the rejected ones (TRL's order), with
    `input_ids`, `attention_mask` and `labels` (-100 on prompts and padding); right padding."""
    import torch

    rows = [response_features(tokenizer, p["prompt"], p[side], max_length)
            for side in ("chosen", "rejected") for p in pairs]
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = {"input_ids": torch.full((len(rows), width), pad, dtype=torch.long),
             "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
             "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)}
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
        batch["attention_mask"][i, :n] = 1
        batch["labels"][i, :n] = torch.tensor(row["labels"])
    return batch


def response_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's summed log-probability of its labelled tokens (each predicted from the previous position);
    positions labelled -100 (prompt, padding) count nothing."""
    import torch.nn.functional as F

    shifted = labels[:, 1:]
    predicting = logits[:, :-1]
    if predicting.dtype.itemsize < 4:  # bf16/fp16 logits: their log-softmax in fp32
        predicting = predicting.float()
    # Rows of (tokens, vocabulary): on CPU the (batch, vocabulary, tokens) layout takes a less exact kernel (~2e-4).
    token_nll = F.cross_entropy(predicting.reshape(-1, predicting.shape[-1]), shifted.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none")
    return -token_nll.view_as(shifted).sum(dim=-1)


def sequence_logps(model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed response log-probabilities of a `pair_batch` under `model` (with gradients
    when enabled)."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   use_cache=False).logits
    return response_logps(logits, batch["labels"].to(device)).chunk(2)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = DEFAULT_BETA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards): the loss -log sigmoid(beta * (chosen log-ratio -
    rejected log-ratio)), the rewards beta * log-ratio (detached). Take `.mean()` of the losses for a batch."""
    import torch.nn.functional as F

    chosen_logratios = policy_chosen_logps - ref_chosen_logps.to(policy_chosen_logps)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.to(policy_rejected_logps)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_metrics(losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor) -> dict[str, float]:
    """The batch's mean loss and TRL's metrics: rewards/chosen, rewards/rejected, rewards/accuracies,
    rewards/margins, logps/chosen, logps/rejected."""
    return {"loss": losses.mean().item(), "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "logps/chosen": policy_chosen_logps.detach().mean().item(),
            "logps/rejected": policy_rejected_logps.detach().mean().item()}


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
