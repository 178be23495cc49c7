"""The data side of a training run: records from any source, the validation split, and micro-batches.

Order of operations (every rank does the same, seeded): load and validate the records (`load_source`),
refuse evaluation-set tasks, sample `max_examples` of them at random (so a capped run still sees every
source of a mixed set, such as the course's seed + self-instruct records), hold out `val_set_size` of
them, tokenize both parts. Held-out examples are a separate tokenized set: no training batch can hold one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from .config import BatchPlan, validation_count
from .tokenize import IGNORE_INDEX, micro_batches

TRAINED_KEYS = ("trained_index", "trained_labels")  # what `trained_positions` adds to a batch


def load_records(data_path: str, max_examples: int | None = None, seed: int = 42,
                 columns: str | Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Training records from `data_path` (see `data.load_source`), refused if they hold evaluation-set
    tasks (notebook 06 compares on them), and a seeded random sample of `max_examples` of them (in their
    original order) when set."""
    from ..data import check_not_eval_set, load_source

    records = load_source(data_path, columns)
    check_not_eval_set(records, source=data_path)
    if max_examples is not None and max_examples < len(records):
        keep = sorted(random.Random(seed).sample(range(len(records)), max_examples))
        records = [records[i] for i in keep]
    return records


def split_validation(records: Sequence[dict[str, Any]], val_set_size: float,
                     seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, held-out) records: a seeded random `val_set_size` (fraction or count) is held out."""
    n_val = validation_count(len(records), val_set_size)
    held = set(random.Random(seed + 1).sample(range(len(records)), n_val))
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def rank_micro_batches(batch: Sequence[int], lengths: Sequence[int], plan: BatchPlan, rank: int,
                       group_by_length: bool, trained: Sequence[int] | None = None,
                       head_weight: float = 0.0) -> list[list[int]]:
    """This rank's micro-batches of one global batch: cut (grouped by length when asked), then dealt by
    `deal_micro_batches`."""
    cut = micro_batches(batch, lengths, plan.per_device, group_by_length)
    return deal_micro_batches(cut, lengths, plan.world_size, trained, head_weight)[rank]


def deal_micro_batches(cut: Sequence[Sequence[int]], lengths: Sequence[int], world_size: int,
                       trained: Sequence[int] | None = None, head_weight: float = 0.0) -> list[list[list[int]]]:
    """Every rank's micro-batches, so that ranks do about the same work.

    The work of a micro-batch: its padded positions, plus `head_weight` per trained token (`trained[i]` of
    example i) for the LM head computed at trained positions only (its FLOPs per token relative to the rest
    of the model's). The micro-batches go out in rounds of `world_size` consecutive ones: the k-th
    micro-batch of every rank comes from round k, and with length grouping those are of similar length
    (ranks wait for each other at every layer's collectives). Within a round the costliest goes to the rank
    with the least work so far. Dealt round-robin instead, rank 0 would get the longest of every round.
    """
    def cost(ids: Sequence[int]) -> float:
        head = head_weight * sum(trained[i] for i in ids) if trained is not None else 0.0
        return len(ids) * max(lengths[i] for i in ids) + head

    work = [0.0] * world_size
    dealt: list[list[list[int]]] = [[] for _ in range(world_size)]
    for start in range(0, len(cut), world_size):
        costliest_first = sorted(cut[start:start + world_size], key=cost, reverse=True)
        least_loaded = sorted(range(world_size), key=lambda r: (work[r], r))
        for ids, r in zip(costliest_first, least_loaded):
            dealt[r].append(list(ids))
            work[r] += cost(ids)
    return dealt


def eval_micro_batches(num_examples: int, lengths: Sequence[int], size: int, rank: int,
                       world_size: int) -> list[list[int]]:
    """This rank's share of the held-out set, grouped by length. Every rank gets the same number of
    micro-batches (a sharded forward is collective); a rank with nothing left gets an empty one."""
    cut = micro_batches(range(num_examples), lengths, size, group_by_length=True)
    rounds = math.ceil(len(cut) / world_size)
    mine = cut[rank::world_size]
    return mine + [[] for _ in range(rounds - len(mine))]


def trained_positions(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The positions whose next token is trained, for `recipe.TrainedPositionsHead`: `trained_index`, flat
    (row * length + position) indices, and `trained_labels`, the tokens they predict. Computed where `batch`
    is: on the CPU before the copy, `nonzero` costs no wait for the GPU."""
    labels = batch["labels"]
    targets = labels[:, 1:]  # position p predicts token p + 1
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    return {"trained_index": rows * labels.shape[1] + cols, "trained_labels": targets[rows, cols]}


def to_device(batch: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """A collated batch on `device`. On CUDA its tensors are pinned and copied with `non_blocking=True`: the
    copy is queued behind the GPU's running work and the CPU goes on to queue the forward, where a plain
    `.to` from pageable memory waits for the previous backward to end. Elsewhere a plain `.to` (nothing to
    pin for; the overlap itself only shows on a GPU)."""
    if getattr(device, "type", device) != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


class TrainData:
    """Tokenized examples held as Python lists, and micro-batch collation (padding or packing)."""

    def __init__(self, dataset: Any, records: Sequence[dict[str, Any]], pad_id: int, packing: bool):
        from .tokenize import AlpacaCollator

        self.records = records  # example_id indexes these
        self.input_ids = dataset["input_ids"]
        self.labels = dataset["labels"]
        self.example_ids = dataset["example_id"]
        self.lengths = [len(x) for x in self.input_ids]
        # Trained tokens: labels the model predicts (the first position is never predicted).
        self.trained = [sum(1 for t in lab[1:] if t != IGNORE_INDEX) for lab in self.labels]
        self.collator = AlpacaCollator(pad_token_id=pad_id)
        self.packing = packing

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, ids: Sequence[int]) -> dict[str, Any]:
        from .tokenize import pack_features

        features = [{"input_ids": self.input_ids[i], "labels": self.labels[i], "example_id": self.example_ids[i]}
                    for i in ids]
        if self.packing:  # one row per micro-batch: no padding; position_ids keep examples apart
            features = pack_features(features, sum(len(f["input_ids"]) for f in features))
        return self.collator(features)

    def device_batch(self, ids: Sequence[int], device: Any, trained: bool = False) -> dict[str, Any]:
        """Micro-batch `ids` collated, with its trained positions (`trained`: for the trained-positions head)
        computed on the CPU, then on `device` without a host wait (`to_device`)."""
        batch = self.collate(ids)
        if trained:
            batch |= trained_positions(batch)
        return to_device(batch, device)
