"""DPO (Rafailov et al. 2023) in the training recipe: pair features, response log-probabilities, the loss and the
metrics the field reads, from scratch.

For a pair (prompt x, chosen y_c, rejected y_r), with log pi(y | x) the summed log-probability of the response's
tokens under the model being trained and log ref(y | x) the same under the frozen starting model:

    loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))

Only the response's tokens count, plus the eos that ends it, tokenized exactly as supervised fine-tuning does
(`tokenize`: the prompt and the response tokenized apart, the prompt's labels -100). The reference
log-probabilities are computed once, before training (`feedback.dpo.reference_logps`), and stored with the pairs
as `ref_chosen_logps` and `ref_rejected_logps` (TRL's names), so no second model sits in memory while training.
The metrics carry TRL's names: `rewards/chosen` and `rewards/rejected` (beta times the log-ratio),
`rewards/accuracies` (share of pairs whose chosen reward is the higher), `rewards/margins`, `logps/chosen`,
`logps/rejected`.

In the recipe (`TrainConfig.loss` dpo) each pair is one example: `PairData` has `batches.TrainData`'s interface,
so the validation split, the global batches, the micro-batches per rank and the accumulation are the SFT ones; a
micro-batch of pairs collates to their chosen rows, then their rejected rows (TRL's order), with their stored
reference log-probabilities beside them. A pair with a row longer than `model_max_length` is dropped, never cut:
its stored reference counted all of its tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batches import AlpacaCollator, TrainData, sample_records
from .config import LOSS_ROWS, TrainConfigError
from .tokenize import (
    DEFAULT_MAX_LENGTH,
    IGNORE_INDEX,
    TokenizeStats,
    check_tokenizer,
    encode_continuation,
    encode_prompt,
)

if TYPE_CHECKING:
    import torch

DEFAULT_BETA = 0.1  # the DPO paper's and TRL's default (SmolLM2's own DPO used 0.5); TrainConfig.dpo_beta's too
PAIR_TEXT_FIELDS = ("prompt", "chosen", "rejected")
REFERENCE_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")  # TRL's column names
SIDES = ("chosen", "rejected")


# ---------------------------------------------------------------- features and batches


def _row(prompt_ids: list[int], response_ids: list[int], eos_id: int) -> dict[str, list[int]]:
    trained = list(response_ids) + [eos_id]
    return {"input_ids": prompt_ids + trained, "labels": [IGNORE_INDEX] * len(prompt_ids) + trained}


def response_features(tokenizer, prompt: str, response: str, max_length: int = DEFAULT_MAX_LENGTH,
                      prompt_format: str = "alpaca") -> dict[str, list[int]]:
    """`input_ids` and `labels` of prompt + response + eos, the prompt's labels -100, as the training recipe
    builds them; a response too long for `max_length` is cut (the eos stays)."""
    prompt_ids = encode_prompt(tokenizer, prompt, prompt_format)
    room = max_length - len(prompt_ids) - 1
    if room < 1:
        raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room for a response in {max_length}")
    return _row(prompt_ids, encode_continuation(tokenizer, [response])[0][:room], tokenizer.eos_token_id)


def collate_pairs(collator: AlpacaCollator, chosen: Sequence[Mapping[str, Any]],
                  rejected: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """The pairs' rows padded as one batch: the chosen rows first, then the rejected ones (TRL's order)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen rows for {len(rejected)} rejected ones")
    return collator(list(chosen) + list(rejected))


def pair_batch(tokenizer, pairs: Sequence[Mapping[str, Any]],
               max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """One padded batch of the pairs: the chosen rows first, then the rejected ones (TRL's order), with
    `input_ids`, `attention_mask` and `labels` (-100 on prompts and padding); right padding."""
    rows = {side: [response_features(tokenizer, p["prompt"], p[side], max_length) for p in pairs] for side in SIDES}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return collate_pairs(AlpacaCollator(pad_token_id=pad), rows["chosen"], rows["rejected"])


# ---------------------------------------------------------------- log-probabilities, the loss, the metrics


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


def trained_row_logps(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                      n_rows: int) -> torch.Tensor:
    """`response_logps` from the logits at the trained positions only (`recipe.TrainedPositionsHead`: one
    (positions, vocabulary) matrix), `targets` the tokens they predict and `rows` the row each position is in."""
    import torch.nn.functional as F

    if logits.dtype.itemsize < 4:
        logits = logits.float()
    token_logps = -F.cross_entropy(logits, targets, reduction="none")
    return token_logps.new_zeros(n_rows).index_add(0, rows, token_logps)


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


def dpo_metric_sums(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, policy_chosen_logps: torch.Tensor,
                    policy_rejected_logps: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL's metrics summed over the pairs (0-dimensional tensors, where they were computed): divided by the number
    of pairs they are the means TRL logs. Sums add up over micro-batches and ranks."""
    return {"rewards/chosen": chosen_rewards.sum(), "rewards/rejected": rejected_rewards.sum(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
            "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
            "logps/chosen": policy_chosen_logps.detach().sum(), "logps/rejected": policy_rejected_logps.detach().sum()}


def dpo_metrics(losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor) -> dict[str, float]:
    """The batch's mean loss and TRL's metrics: rewards/chosen, rewards/rejected, rewards/accuracies,
    rewards/margins, logps/chosen, logps/rejected."""
    sums = dpo_metric_sums(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps)
    return {"loss": losses.mean().item(), **{name: value.item() / len(losses) for name, value in sums.items()}}


# ---------------------------------------------------------------- pairs in the training recipe


def load_preference_pairs(data_path: str, max_examples: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """The pairs of a `.jsonl` or `.json` file (what `feedback.pairs.save_pairs` writes once
    `feedback.dpo.with_reference_logps` has added the reference), each checked: prompt, chosen and rejected
    strings and finite reference log-probabilities; a seeded random sample of `max_examples` of them when set
    (as `batches.load_records` samples records). A missing or wrong field is one TrainConfigError line."""
    path = Path(data_path)
    if path.suffix not in (".jsonl", ".json"):
        raise TrainConfigError(f"loss dpo reads a .jsonl or .json file of preference pairs, not {data_path!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{data_path}: no such file")
    text = path.read_text(encoding="utf-8")
    pairs = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl"
             else json.loads(text))
    if not isinstance(pairs, list) or not pairs:
        raise TrainConfigError(f"{data_path}: expected a non-empty list of preference pairs")
    for i, pair in enumerate(pairs):
        check_preference_pair(pair, f"{data_path}: pair {i}")
    return sample_records(pairs, max_examples, seed)


def check_preference_pair(pair: Any, where: str) -> None:
    """TrainConfigError naming `where` and the field, unless `pair` has prompt, chosen and rejected strings and
    finite stored reference log-probabilities."""
    if not isinstance(pair, Mapping):
        raise TrainConfigError(f"{where}: expected an object, got {type(pair).__name__}")
    for name in PAIR_TEXT_FIELDS:
        if not isinstance(pair.get(name), str):
            raise TrainConfigError(f"{where}: {name!r} must be a string (loss dpo trains on prompt, chosen, rejected)")
    for name in REFERENCE_FIELDS:
        value = pair.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise TrainConfigError(f"{where}: no reference log-probability {name!r}: compute them once before "
                                   "training (feedback.dpo.reference_logps, then with_reference_logps)")


class PairData(TrainData):
    """Preference pairs tokenized for the recipe, with `TrainData`'s interface: each pair is one example, its
    `lengths` and `trained` counting both rows, `loss_items` 1 (the DPO loss is a mean over pairs), `input_ids` its
    chosen row's. A micro-batch collates to its pairs' chosen rows, then their rejected rows, with `ref_chosen_logps`
    and `ref_rejected_logps` (float64). A pair with a row over `max_length` is dropped (counted in `stats`)."""

    rows_per_example = LOSS_ROWS["dpo"]
    noun = "preference pairs"

    def __init__(self, pairs: Sequence[Mapping[str, Any]], tokenizer, pad_id: int,
                 max_length: int = DEFAULT_MAX_LENGTH, prompt_format: str = "alpaca"):
        check_tokenizer(tokenizer)
        responses = {side: encode_continuation(tokenizer, [p[side] for p in pairs]) for side in SIDES}
        self.records, self.chosen, self.rejected, self.ref, self.example_ids = [], [], [], [], []
        dropped = []
        for i, pair in enumerate(pairs):
            prompt_ids = encode_prompt(tokenizer, pair["prompt"], prompt_format)
            chosen, rejected = (_row(prompt_ids, responses[side][i], tokenizer.eos_token_id) for side in SIDES)
            if max(len(chosen["input_ids"]), len(rejected["input_ids"])) > max_length:
                dropped.append(i)
                continue
            self.records.append(pair)
            self.chosen.append(chosen)
            self.rejected.append(rejected)
            self.ref.append(tuple(float(pair[f]) for f in REFERENCE_FIELDS))
            self.example_ids.append(i)
        self.input_ids = [row["input_ids"] for row in self.chosen]
        self.lengths = [len(c["input_ids"]) + len(r["input_ids"]) for c, r in zip(self.chosen, self.rejected)]
        self.trained = [_trained(c["labels"]) + _trained(r["labels"]) for c, r in zip(self.chosen, self.rejected)]
        self.loss_items = [1] * len(self.chosen)  # the loss is the mean over the pairs
        self.collator = AlpacaCollator(pad_token_id=pad_id)
        self.packing = False
        self.stats = TokenizeStats(total=len(pairs), kept=len(self.chosen), truncated=0, dropped=len(dropped),
                                   max_length=max_length, overflow="drop", dropped_ids=dropped)

    def collate(self, ids: Sequence[int]) -> dict[str, Any]:
        import torch

        batch = collate_pairs(self.collator, [self.chosen[i] for i in ids], [self.rejected[i] for i in ids])
        ref = torch.tensor([self.ref[i] for i in ids], dtype=torch.float64).T.contiguous()
        batch[REFERENCE_FIELDS[0]], batch[REFERENCE_FIELDS[1]] = ref[0], ref[1]
        return batch


def _trained(labels: Sequence[int]) -> int:
    return sum(1 for t in labels[1:] if t != IGNORE_INDEX)
