"""Each arm's training data, drawn from one pool that every arm shares.

The pool is the base data (`base.data_path`, sampled to `base.max_examples` as training would), minus a seeded
held-out set that no arm trains on: the validation loss of every arm is measured on those records. An arm's
kind says how it draws from the pool (`arm_records`); `mask` and `setting` arms train on the whole pool, like
`base`. Random draws (`size`, `selection` with method random) use the run's seed, so the seeds also cover the
luck of the sample; the other kinds are the same for every seed. A `mix` arm (a dose of extra data, such as
safety examples) trains on the whole pool plus records drawn from another file with the evaluation seed (the pool's
`seed`), not the run seed: every run seed sees the same added records, and a larger share adds to a smaller one's.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import AblationError, Arm


@dataclass(frozen=True)
class Pool:
    """The records arms draw from, the held-out records none of them trains on, and how many records of the base
    data were left out because training would drop them (their prompt alone fills `model_max_length`)."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    unfit: int = 0
    seed: int = 0  # the evaluation seed that held the records out; it also draws a mix arm's added records


def make_pool(data_path: str, max_examples: int | None, columns: str | None, heldout: int, seed: int,
              tokenizer: Any, max_length: int) -> Pool:
    """Load the base data as training does (`train.batches.load_records`: validated, evaluation-set tasks
    refused, a seeded sample of `max_examples`), leave out the records training would drop at `max_length`, and
    hold out `heldout` of the rest (`split_validation`)."""
    from ..train.batches import load_records, split_validation
    from ..train.config import TrainConfigError
    from ..train.tokenize import build_dataset

    records = load_records(data_path, max_examples, seed, columns)
    unfit = set(build_dataset(records, tokenizer, max_length=max_length).stats.dropped_ids)
    records = [r for i, r in enumerate(records) if i not in unfit]
    try:
        train, held = split_validation(records, heldout, seed)
    except TrainConfigError as e:
        raise AblationError(f"evaluation.heldout: {e}") from None
    return Pool(train, held, len(unfit), seed)


def _task(record: Mapping[str, Any]) -> tuple[str, str]:
    return " ".join(record["instruction"].lower().split()), " ".join((record.get("input") or "").lower().split())


def _sample(records: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded random `n` of `records`, in their original order."""
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def _top(records: list[dict[str, Any]], n: int, score: Sequence[float]) -> list[dict[str, Any]]:
    """The `n` records of highest `score` (earlier records first among ties), in their original order."""
    order = sorted(range(len(records)), key=lambda i: (-score[i], i))[:n]
    return [records[i] for i in sorted(order)]


def _count(arm: Arm, n: int, available: int) -> int:
    if n > available:
        raise AblationError(f"arm {arm.name!r}: selects {n} records but the pool holds {available} "
                            "(after the held-out records)")
    return n


def arm_records(arm: Arm, pool: Pool, seed: int, grades: Sequence[float | None] | None = None,
                tokenizer: Any = None, max_length: int | None = None) -> list[dict[str, Any]]:
    """The training records of `arm` for run seed `seed` (see the module docstring). `grades` (one per pool
    record) are needed by graded selection, `tokenizer` and `max_length` by the truncated_output cleaning rule."""
    records, p = pool.train, arm.params
    if arm.kind in ("base", "mask", "setting"):
        return list(records)
    if arm.kind == "size":
        n = round(len(records) * float(p["fraction"])) if "fraction" in p else _count(arm, int(p["count"]), len(records))
        return _sample(records, max(n, 1), seed)
    if arm.kind == "selection":
        n = _count(arm, int(p["n"]), len(records))
        if p["method"] == "random":
            return _sample(records, n, seed)
        if p["method"] == "longest":
            return _top(records, n, [len(r["output"]) for r in records])
        if grades is None:
            raise AblationError(f"arm {arm.name!r}: graded selection needs the pool's grades")
        return _top(records, n, [g if g is not None else float("-inf") for g in grades])
    if arm.kind == "diversity":
        if p["threshold"] is None:
            return list(records)
        from ..self_instruct.rouge import filter_similar

        kept = filter_similar([r["instruction"] for r in records], [], threshold=float(p["threshold"]))
        return [r for r, keep in zip(records, kept) if keep]
    if arm.kind == "source":
        from ..self_instruct.pipeline import GENERATED_SOURCE, SEED_SOURCE

        wanted = {SEED_SOURCE, GENERATED_SOURCE} if p["source"] == "both" else {p["source"]}
        return [r for r in records if r.get("source") in wanted]
    if arm.kind == "cleaning":
        from .clean import CLEANING_RULES, clean_reasons

        reasons = clean_reasons(records, p.get("rules", CLEANING_RULES), tokenizer, max_length)
        return [r for r, why in zip(records, reasons) if why is None]
    if arm.kind == "dataset":
        from ..train.batches import load_records

        held = {_task(r) for r in pool.heldout}
        return [r for r in load_records(p["data_path"], None, seed, p.get("data_columns")) if _task(r) not in held]
    if arm.kind == "mix":
        return records + mixed_in(arm, pool)
    raise AblationError(f"arm {arm.name!r}: unknown kind {arm.kind!r}")


def mix_count(share: float, pool_size: int) -> int:
    """How many extra records make `share` of a mix arm's data: round(share * pool_size / (1 - share))."""
    return round(share * pool_size / (1 - share))


def mixed_in(arm: Arm, pool: Pool) -> list[dict[str, Any]]:
    """The extra records a mix arm adds to the pool: `mix_count` of its file's records (minus the held-out tasks),
    drawn with the pool's (evaluation) seed, in the file's order. They keep every field, `source` too. The draw is
    a seeded order of the whole file cut at k, so the records of a smaller share are among those of a larger."""
    from ..train.batches import load_records

    k = mix_count(float(arm.params["share"]), len(pool.train))
    if k == 0:
        return []
    held = {_task(r) for r in pool.heldout}
    extra = [r for r in load_records(arm.params["data_path"], None, pool.seed) if _task(r) not in held]
    if k > len(extra):
        raise AblationError(f"arm {arm.name!r}: share {arm.params['share']} of a pool of {len(pool.train)} needs {k} "
                            f"extra records but {arm.params['data_path']} holds {len(extra)}")
    order = list(range(len(extra)))
    random.Random(pool.seed).shuffle(order)
    return [extra[i] for i in sorted(order[:k])]
