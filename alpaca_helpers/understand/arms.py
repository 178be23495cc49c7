"""An ablation's arms: what an arm is, the table of arm kinds (`ARM_KINDS`), and each arm's training data, drawn
from one pool that every arm shares.

Each kind is one `ArmKind`: its parameters (with help), the required ones, its checks (run on the specification,
before any data loads), how it builds its records from the pool, the training settings it changes, and whether
its records change with the run seed or need the pool's grades. `spec`, this module and `ablate` look a kind up
there; a new kind is one more entry.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..paths import REPO_ROOT
from ..self_instruct.pipeline import GENERATED_SOURCE, SEED_SOURCE
from ..self_instruct.rouge import filter_similar
from ..train.batches import load_records, split_validation
from ..train.config import FIELDS, TrainConfigError
from ..train.tokenize import build_dataset
from .clean import CLEANING_RULES, clean_reasons
from .errors import AblationError

SOURCES = (SEED_SOURCE, GENERATED_SOURCE, "both")
METHODS = ("random", "longest", "graded")
# Settings an arm may not change: they would change what is measured, or what every arm shares.
EVALUATION_SETTINGS = ("data_path", "data_columns", "max_examples", "val_set_size", "eval_steps")
SHARED_SETTINGS = ("model_name_or_path", "seed", "output_dir", "max_steps", "num_train_epochs", "resume",
                   "stop_after_steps", "device", "report_to")


@dataclass(frozen=True)
class Arm:
    """One arm: a name, a kind (`ARM_KINDS`) and that kind's parameters."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pool:
    """The records arms draw from, the held-out records none of them trains on, and how many records of the base
    data were left out because training would drop them (their prompt alone fills `model_max_length`)."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    unfit: int = 0
    seed: int = 0  # the evaluation seed that held the records out; it also draws a mix arm's added records


@dataclass(frozen=True)
class Draw:
    """What an arm's records are drawn with: the pool, the run seed, the pool's grades (one per record; graded
    selection) and the tokenizer and max_length (the truncated_output cleaning rule)."""

    pool: Pool
    seed: int
    grades: Sequence[float | None] | None = None
    tokenizer: Any = None
    max_length: int | None = None


Params = Mapping[str, Any]
Records = list[dict[str, Any]]


def _no_checks(params: Params, where: str) -> None:
    """No checks beyond the names of the parameters."""


def _no_settings(params: Params) -> dict[str, Any]:
    return {}


def _never(params: Params) -> bool:
    return False


def _always(params: Params) -> bool:
    return True


@dataclass(frozen=True)
class ArmKind:
    """One kind of arm: its parameters and checks, the records it trains on, and the training settings it changes."""

    name: str
    records: Callable[[Arm, Draw], Records]  # the arm's training records
    params: Mapping[str, str] = field(default_factory=dict)  # parameter -> help
    required: frozenset[str] = frozenset()
    checks: Callable[[Params, str], None] = _no_checks  # the kind's own checks, after the parameters' names
    settings: Callable[[Params], dict[str, Any]] = _no_settings  # the training settings the arm changes
    any_setting: bool = False  # takes one training setting by its name instead of `params`
    seeded: Callable[[Params], bool] = _never  # whether its records change with the run seed
    graded: Callable[[Params], bool] = _never  # whether it needs the pool's grades
    count_param: str | None = None  # the parameter `load_spec`'s select_n (--select_n) sets: records kept

    def check(self, params: Params, where: str) -> None:
        """An arm's parameters for this kind (one-line `AblationError`s naming `where`)."""
        if not self.any_setting:
            unknown = sorted(set(params) - set(self.params))
            if unknown:
                raise AblationError(f"{where}: unknown parameter(s) {unknown} for kind {self.name} "
                                    f"(it takes: {', '.join(self.params) or 'none'})")
            missing = sorted(self.required - set(params))
            if missing:
                raise AblationError(f"{where}: kind {self.name} needs {', '.join(missing)}")
        self.checks(params, where)


# ---------------------------------------------------------------- each kind's checks


def _check_count(n: Any, where: str) -> None:
    if n is not None and (not isinstance(n, int) or n < 1):
        raise AblationError(f"{where}: the number of records must be a whole number >= 1, got {n!r}")


def _check_size(params: Params, where: str) -> None:
    if len(params) != 1:
        raise AblationError(f"{where}: kind size takes one of fraction or count")
    if "fraction" in params and not 0 < float(params["fraction"]) <= 1:
        raise AblationError(f"{where}: fraction must be in (0, 1], got {params['fraction']}")
    _check_count(params.get("count"), where)


def _check_selection(params: Params, where: str) -> None:
    if params["method"] not in METHODS:
        raise AblationError(f"{where}: method {params['method']!r} unknown (methods: {', '.join(METHODS)})")
    _check_count(params["n"], where)


def _check_diversity(params: Params, where: str) -> None:
    if params["threshold"] is not None and not 0 <= float(params["threshold"]) <= 1:
        raise AblationError(f"{where}: threshold must be in [0, 1] or null (no filter), got {params['threshold']}")


def _check_source(params: Params, where: str) -> None:
    if params["source"] not in SOURCES:
        raise AblationError(f"{where}: source {params['source']!r} unknown (sources: {', '.join(SOURCES)})")


def _check_cleaning(params: Params, where: str) -> None:
    unknown_rules = sorted(set(params.get("rules", CLEANING_RULES)) - set(CLEANING_RULES))
    if unknown_rules:
        raise AblationError(f"{where}: unknown cleaning rule(s) {unknown_rules} (rules: {', '.join(CLEANING_RULES)})")


def _check_setting(params: Params, where: str) -> None:
    if len(params) != 1:
        raise AblationError(f"{where}: a setting arm changes exactly one training setting, "
                            f"got {sorted(params) or 'none'}")
    (name, _), = params.items()
    if name in EVALUATION_SETTINGS:
        raise AblationError(f"{where}: changes {name}, which would change the evaluation set every arm is measured "
                            "on (the pool and its held-out records come from base; another data set is kind: dataset)")
    if name in SHARED_SETTINGS:
        raise AblationError(f"{where}: changes {name}, which every arm shares (the model, seeds and budget are "
                            "fixed by the ablation)")
    if name not in FIELDS:
        raise AblationError(f"{where}: unknown training setting {name!r}")


def _check_mix(params: Params, where: str) -> None:
    share = params["share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise AblationError(f"{where}: share must be a number in [0, 1), got {share!r}")
    path = str(params["data_path"])
    if not any(p.is_file() for p in (Path(path).expanduser(), REPO_ROOT / path)):
        raise AblationError(f"{where}: data_path {path!r} is not a file (from here or the repository root)")


# ---------------------------------------------------------------- each kind's records


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


def _whole_pool(arm: Arm, draw: Draw) -> Records:
    return list(draw.pool.train)


def _size_records(arm: Arm, draw: Draw) -> Records:
    records, p = draw.pool.train, arm.params
    n = round(len(records) * float(p["fraction"])) if "fraction" in p else _count(arm, int(p["count"]), len(records))
    return _sample(records, max(n, 1), draw.seed)


def _selection_records(arm: Arm, draw: Draw) -> Records:
    records, p = draw.pool.train, arm.params
    n = _count(arm, int(p["n"]), len(records))
    if p["method"] == "random":
        return _sample(records, n, draw.seed)
    if p["method"] == "longest":
        return _top(records, n, [len(r["output"]) for r in records])
    if draw.grades is None:
        raise AblationError(f"arm {arm.name!r}: graded selection needs the pool's grades")
    return _top(records, n, [g if g is not None else float("-inf") for g in draw.grades])


def _diversity_records(arm: Arm, draw: Draw) -> Records:
    records, threshold = draw.pool.train, arm.params["threshold"]
    if threshold is None:
        return list(records)
    kept = filter_similar([r["instruction"] for r in records], [], threshold=float(threshold))
    return [r for r, keep in zip(records, kept) if keep]


def _source_records(arm: Arm, draw: Draw) -> Records:
    source = arm.params["source"]
    wanted = {SEED_SOURCE, GENERATED_SOURCE} if source == "both" else {source}
    return [r for r in draw.pool.train if r.get("source") in wanted]


def _cleaning_records(arm: Arm, draw: Draw) -> Records:
    records = draw.pool.train
    reasons = clean_reasons(records, arm.params.get("rules", CLEANING_RULES), draw.tokenizer, draw.max_length)
    return [r for r, why in zip(records, reasons) if why is None]


def _dataset_records(arm: Arm, draw: Draw) -> Records:
    held = {_task(r) for r in draw.pool.heldout}
    records = load_records(arm.params["data_path"], None, draw.seed, arm.params.get("data_columns"))
    return [r for r in records if _task(r) not in held]


def _mix_records(arm: Arm, draw: Draw) -> Records:
    return draw.pool.train + mixed_in(arm, draw.pool)


def mix_count(share: float, pool_size: int) -> int:
    """How many extra records make `share` of a mix arm's data: round(share * pool_size / (1 - share))."""
    return round(share * pool_size / (1 - share))


def mixed_in(arm: Arm, pool: Pool) -> list[dict[str, Any]]:
    """The extra records a mix arm adds to the pool: `mix_count` of its file's records (minus the held-out tasks),
    drawn with the pool's (evaluation) seed, in the file's order. They keep every field, `source` too. The draw is
    a seeded order of the whole file cut at k, so the records of a smaller share are among those of a larger."""
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


# ---------------------------------------------------------------- the table


ARM_KINDS: dict[str, ArmKind] = {kind.name: kind for kind in (
    ArmKind("base", _whole_pool),
    ArmKind("size", _size_records,
            {"fraction": "a seeded random share of the pool (0 < fraction <= 1)",
             "count": "a seeded random number of records of the pool"},
            checks=_check_size, seeded=_always),
    ArmKind("diversity", _diversity_records,
            {"threshold": "notebook 02's ROUGE-L filter over the pool's instructions: kept when the highest score "
                          "against every instruction kept before is at most this; null = no filter"},
            frozenset({"threshold"}), checks=_check_diversity),
    ArmKind("source", _source_records, {"source": "records whose `source` is seed, self-instruct, or both"},
            frozenset({"source"}), checks=_check_source),
    ArmKind("selection", _selection_records,
            {"method": "random (seeded), longest (longest responses, Long Is More) or graded (best grader score, "
                       "AlpaGasus)",
             "n": "records kept"},
            frozenset({"method", "n"}), checks=_check_selection, seeded=lambda p: p["method"] == "random",
            graded=lambda p: p["method"] == "graded", count_param="n"),
    ArmKind("cleaning", _cleaning_records,
            {"rules": f"cleaning rules applied (default all: {', '.join(CLEANING_RULES)})"}, checks=_check_cleaning),
    ArmKind("mask", _whole_pool,
            {"train_on_prompt": "true: the loss on prompt + response; false: on the response only (Alpaca)"},
            settings=lambda p: {"train_on_prompt": bool(p.get("train_on_prompt", True))}),
    ArmKind("setting", _whole_pool, checks=_check_setting, settings=dict, any_setting=True),
    ArmKind("dataset", _dataset_records,
            {"data_path": "another training set (file, folder or Hub name), minus the held-out tasks",
             "data_columns": "its column mapping, as the training setting"},
            frozenset({"data_path"}), seeded=_always),
    ArmKind("mix", _mix_records,
            {"data_path": "a file of extra records (e.g. safety data) added to the whole pool",
             "share": "the extra records' share of the arm's data, in [0, 1) (0: the pool alone)"},
            frozenset({"data_path", "share"}), checks=_check_mix),
)}


# ---------------------------------------------------------------- the pool and an arm's records


def make_pool(data_path: str, max_examples: int | None, columns: str | None, heldout: int, seed: int,
              tokenizer: Any, max_length: int) -> Pool:
    """Load the base data as training does (`train.batches.load_records`: validated, evaluation-set tasks
    refused, a seeded sample of `max_examples`), leave out the records training would drop at `max_length`, and
    hold out `heldout` of the rest (`split_validation`)."""
    records = load_records(data_path, max_examples, seed, columns)
    unfit = set(build_dataset(records, tokenizer, max_length=max_length).stats.dropped_ids)
    records = [r for i, r in enumerate(records) if i not in unfit]
    try:
        train, held = split_validation(records, heldout, seed)
    except TrainConfigError as e:
        raise AblationError(f"evaluation.heldout: {e}") from None
    return Pool(train, held, len(unfit), seed)


def arm_records(arm: Arm, pool: Pool, seed: int, grades: Sequence[float | None] | None = None,
                tokenizer: Any = None, max_length: int | None = None) -> list[dict[str, Any]]:
    """The training records of `arm` for run seed `seed` (see the module docstring). `grades` (one per pool
    record) are needed by graded selection, `tokenizer` and `max_length` by the truncated_output cleaning rule."""
    kind = ARM_KINDS.get(arm.kind)
    if kind is None:
        raise AblationError(f"arm {arm.name!r}: unknown kind {arm.kind!r}")
    return kind.records(arm, Draw(pool, seed, grades, tokenizer, max_length))
