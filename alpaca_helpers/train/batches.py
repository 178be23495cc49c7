"""The data side of a training run: records from any source, the validation split, and batches.

Order of operations (every rank does the same, seeded): load and validate the records (`load_source`),
refuse evaluation-set tasks, sample `max_examples` of them at random (so a capped run still sees every
source of a mixed set, such as the course's seed + self-instruct records), hold out `val_set_size` of
them, tokenize both parts. Held-out examples are a separate tokenized set: no training batch can hold one.

Batching (used by training and shown in notebook 03): `global_batches` is the seeded order of each epoch's
global batches; `micro_batches` cuts one global batch into micro-batches, grouping similar lengths when
asked. Grouping inside a global batch leaves the step's gradient unchanged and removes most padding.

Padding: right padding. `AlpacaCollator` pads `labels` with -100 by position, never by comparing ids with the
pad id, so a tokenizer whose pad equals its eos (the default model: both `<|im_end|>`, id 2) still trains
the real eos.

Packing: `pack_features` puts several examples in one row with `position_ids` restarting at 0 for each;
the collator then leaves `attention_mask` out, which is how transformers (5.x) recognises packed rows and
builds a block-diagonal causal mask, *provided the forward pass runs with `use_cache=False`* (with a
cache, the detection is skipped and examples would see each other).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..data import check_not_eval_set, load_source
from .config import BatchSplit, validation_count
from .tokenize import DEFAULT_MAX_LENGTH, IGNORE_INDEX

TRAINED_KEYS = ("trained_index", "trained_labels")  # what `trained_positions` adds to a batch
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")  # what of a collated batch the model is given


def load_records(data_path: str, max_examples: int | None = None, seed: int = 42,
                 columns: str | Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Training records from `data_path` (see `data.load_source`), refused if they hold evaluation-set
    tasks (notebook 06 compares on them), and a seeded random sample of `max_examples` of them (in their
    original order) when set."""
    records = load_source(data_path, columns)
    check_not_eval_set(records, source=data_path)
    return sample_records(records, max_examples, seed)


def sample_records(records: Sequence[Any], max_examples: int | None, seed: int) -> list[Any]:
    """A seeded random sample of `max_examples` records, in their original order (all of them when unset)."""
    if max_examples is not None and max_examples < len(records):
        keep = sorted(random.Random(seed).sample(range(len(records)), max_examples))
        return [records[i] for i in keep]
    return list(records)


def split_validation(records: Sequence[dict[str, Any]], val_set_size: float,
                     seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, held-out) records: a seeded random `val_set_size` (fraction or count) is held out."""
    n_val = validation_count(len(records), val_set_size)
    held = set(random.Random(seed + 1).sample(range(len(records)), n_val))
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


# ---------------------------------------------------------------- global batches and micro-batches


def global_batches(num_examples: int, global_batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches: a seeded random permutation cut into full batches (same on every rank).
    The last incomplete batch is dropped."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(num_examples, generator=gen).tolist()
    steps = num_examples // global_batch_size
    return [order[i * global_batch_size:(i + 1) * global_batch_size] for i in range(steps)]


def micro_batches(batch: Sequence[int], lengths: Sequence[int], size: int, group_by_length: bool) -> list[list[int]]:
    """One global batch cut into micro-batches of `size`; with `group_by_length`, longest first, so that
    each micro-batch holds similar lengths (the global batch, hence the gradient, is unchanged)."""
    ids = sorted(batch, key=lambda i: (-lengths[i], i)) if group_by_length else list(batch)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def rank_micro_batches(batch: Sequence[int], lengths: Sequence[int], split: BatchSplit, rank: int,
                       group_by_length: bool, trained: Sequence[int] | None = None,
                       head_weight: float = 0.0) -> list[list[int]]:
    """This rank's micro-batches of one global batch: cut (grouped by length when asked), then dealt by
    `deal_micro_batches`."""
    cut = micro_batches(batch, lengths, split.per_device, group_by_length)
    return deal_micro_batches(cut, lengths, split.world_size, trained, head_weight)[rank]


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


def padding_waste(lengths: Sequence[int], batches: Sequence[Sequence[int]],
                  pad_to_multiple_of: int | None = None) -> float:
    """Fraction of the padded batch tensors that is padding (0 = none)."""
    real = total = 0
    for batch in batches:
        width = _round_up(max(lengths[i] for i in batch), pad_to_multiple_of)
        real += sum(lengths[i] for i in batch)
        total += width * len(batch)
    return 1 - real / total if total else 0.0


# ---------------------------------------------------------------- padding and packing


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


@dataclass
class AlpacaCollator:
    """Right-pad a list of features into tensors: `input_ids` with `pad_token_id`, `labels` with -100.

    Plain rows get an `attention_mask`. Packed rows (features with `position_ids`) get `position_ids`
    (padding continues as its own short sequence) and no 2D mask, so that transformers builds the
    block-diagonal mask from the position restarts (run the model with `use_cache=False`).
    Other keys (example_id, truncated, ...) are ignored.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        width = _round_up(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        packed = "position_ids" in features[0]
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        positions = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            if len(f["labels"]) != n:
                raise ValueError(f"row {row}: {n} input_ids but {len(f['labels'])} labels")
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[row, :n] = 1
            if packed:
                positions[row, :n] = torch.as_tensor(f["position_ids"], dtype=torch.long)
                positions[row, n:] = torch.arange(width - n)
        batch = {"input_ids": input_ids, "labels": labels}
        if not packed:
            batch["attention_mask"] = mask
            return batch
        batch["position_ids"] = positions
        return batch


def pack_lengths(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group item indices into bins whose lengths sum to at most `max_length` (best-fit decreasing).

    Items longer than `max_length` raise. Each bin lists its items in ascending index order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining room, bin number)
    for i in order:
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"item {i} has length {n} > max_length {max_length}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return [sorted(b) for b in bins]


def pack_features(features: Sequence[Mapping[str, Any]], max_length: int = DEFAULT_MAX_LENGTH) -> list[dict]:
    """Pack tokenized examples into rows of at most `max_length` tokens.

    Each row has `input_ids`, `labels` (each example's first label forced to -100: it would otherwise be
    predicted from the previous example's last token), `position_ids` restarting at 0 per example,
    `example_ids` and `lengths`.
    """
    rows = []
    for group in pack_lengths([len(f["input_ids"]) for f in features], max_length):
        row: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "example_ids": [], "lengths": []}
        for i in group:
            f = features[i]
            n = len(f["input_ids"])
            row["input_ids"].extend(f["input_ids"])
            row["labels"].extend([IGNORE_INDEX] + list(f["labels"][1:]))
            row["position_ids"].extend(range(n))
            row["example_ids"].append(f.get("example_id", i))
            row["lengths"].append(n)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- on the device


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
    """Tokenized examples held as Python lists, and micro-batch collation (padding or packing). Each example is
    `rows_per_example` rows of a collated batch (`preference.PairData`: 2) and counts `loss_items[i]` in the mean
    the loss takes (here its trained tokens)."""

    rows_per_example = 1
    noun = "examples"  # what an example is, in the run's first line

    def __init__(self, dataset: Any, records: Sequence[dict[str, Any]], pad_id: int, packing: bool):
        self.records = records  # example_id indexes these
        self.input_ids = dataset["input_ids"]
        self.labels = dataset["labels"]
        self.example_ids = dataset["example_id"]
        self.lengths = [len(x) for x in self.input_ids]
        # Trained tokens: labels the model predicts (the first position is never predicted).
        self.trained = [sum(1 for t in lab[1:] if t != IGNORE_INDEX) for lab in self.labels]
        self.loss_items = self.trained  # the loss is the mean over the trained tokens
        self.collator = AlpacaCollator(pad_token_id=pad_id)
        self.packing = packing

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, ids: Sequence[int]) -> dict[str, Any]:
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
