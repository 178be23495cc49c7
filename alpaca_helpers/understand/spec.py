"""An ablation's specification: a base training configuration, named arms, the budget, the seeds and the shared
evaluation, read from YAML or a dict and checked before any data or model loads.

    base:                      # the training settings every arm shares (any alpaca_helpers.train setting)
      config: cpu_default      # optional: a training preset (configs/) these settings override
      data_path: seed          # the pool every arm draws from; the held-out evaluation set comes from it too
    budget: {steps: 4}         # or {examples: 16}: the same optimizer steps, or examples seen, for every arm
    seeds: [0, 1]              # every arm is trained once per seed
    baseline: all              # the arm the others are compared with, paired by seed
    evaluation: {heldout: 16, teacher_items: 16, shape_items: 8, max_new_tokens: 64}
    grader: {base_url: "", model: default}   # scores the pool for `selection` arms with method `graded`
    arms:
      all: {kind: base}
      longest_n: {kind: selection, method: longest, n: 8}
      prompt_loss: {kind: mask, train_on_prompt: true}
      lr_high: {kind: setting, learning_rate: 3.0e-4}
      safety_3pc: {kind: mix, data_path: safety.json, share: 0.03}   # the pool plus 3% safety examples

Each arm changes the training data (its kind says how) or one training setting; the model, the seed, the budget
and the evaluation sets stay the same for all. The kinds, their parameters and checks are in `arms.ARM_KINDS`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..paths import REPO_ROOT
from ..train.config import TrainConfig, TrainConfigError, load_preset, make_config
from .arms import ARM_KINDS, Arm
from .errors import AblationError
from .grade import GraderConfig
from .metrics import DEFAULT_METRICS, METRICS

ABLATIONS_DIR = REPO_ROOT / "configs" / "ablations"


@dataclass(frozen=True)
class Budget:
    """The compute every arm gets: `steps` optimizer steps, or `examples` examples seen (steps = examples /
    global batch, so an arm that changes the global batch still sees as many examples)."""

    steps: int | None = None
    examples: int | None = None

    def steps_for(self, global_batch_size: int) -> int:
        if self.steps is not None:
            return self.steps
        assert self.examples is not None
        if self.examples % global_batch_size:
            raise AblationError(f"budget: {self.examples} examples are not a whole number of global batches of "
                                f"{global_batch_size}")
        return self.examples // global_batch_size


@dataclass(frozen=True)
class EvaluationConfig:
    """The held-out measurements every arm gets, the same for all."""

    heldout: int = 16  # records of the pool held out (seeded) for the validation loss; no arm trains on them
    teacher_items: int = 16  # evaluation instructions whose text-davinci-003 answers are scored (teacher agreement)
    shape_items: int = 8  # evaluation instructions each model answers greedily (answer shape)
    max_new_tokens: int = 64  # the answer limit (the share ending before it is measured)
    max_length: int | None = None  # tokens of prompt + answer when scoring; None = the base model_max_length
    seed: int = 0  # which records are held out and which evaluation items are used
    ifeval_items: int = 0  # IFEval prompts each model answers, for the `ifeval` metric (541 = all)
    xstest_items: int = 0  # XSTest prompts per group (safe and unsafe) for the `xstest` metric (200 = all unsafe)
    metrics: tuple[str, ...] = DEFAULT_METRICS  # names in `understand.metrics.METRICS`


@dataclass(frozen=True)
class AblationSpec:
    """A checked ablation: the base settings, the arms (in order), the baseline, seeds, budget, evaluation."""

    base: dict[str, Any]
    arms: dict[str, Arm]
    baseline: str
    seeds: tuple[int, ...]
    budget: Budget
    evaluation: EvaluationConfig = EvaluationConfig()
    grader: GraderConfig = GraderConfig()
    gpus: int = 0  # 0: every arm trains in this process on the CPU; N: each arm is an `accelerate launch` on N GPUs
    cpu_processes: int = 1  # with gpus=0: more than 1 launches each arm as that many CPU processes (FSDP over gloo)
    keep_models: bool = False  # keep every arm's trained model folder (false: removed once it is measured)

    def base_config(self) -> TrainConfig:
        """The base training configuration (preset, then the base settings), validated."""
        return _config(self.base, "base")

    def steps(self, cfg: TrainConfig) -> int:
        return self.budget.steps_for(cfg.global_batch_size)

    def arm_rows(self) -> list[dict[str, Any]]:
        """One row per arm to show as a table: its name, kind and every parameter any arm has ("" where this arm
        has none, so that a column never mixes numbers with missing values)."""
        columns = list(dict.fromkeys(k for a in self.arms.values() for k in a.params))
        return [{"arm": a.name, "kind": a.kind, **{k: a.params.get(k, "") for k in columns}}
                for a in self.arms.values()]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe copy (written next to the results)."""
        out = dataclasses.asdict(self)
        out["arms"] = {name: {"kind": a.kind, **a.params} for name, a in self.arms.items()}
        return out


TOP_LEVEL = {"base", "arms", "baseline", "seeds", "budget", "evaluation", "grader", "gpus", "cpu_processes",
             "keep_models"}


def _config(settings: dict[str, Any], where: str) -> TrainConfig:
    values = dict(settings)
    preset = values.pop("config", None)
    try:
        return make_config(**{**(load_preset(preset) if preset else {}), **values})
    except TrainConfigError as e:
        raise AblationError(f"{where}: {e}") from None


def _dataclass(kind: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise AblationError(f"{where}: expected a mapping, got {values!r}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise AblationError(f"{where}: unknown key(s) {unknown} (known: {', '.join(sorted(names))})")
    return kind(**values)


def check_arm(arm: Arm, base: dict[str, Any]) -> None:
    """One arm's kind and parameters (one-line `AblationError`s), and the training settings it changes."""
    where = f"arm {arm.name!r}"
    kind = ARM_KINDS.get(arm.kind)
    if kind is None:
        raise AblationError(f"{where}: unknown kind {arm.kind!r} (kinds: {', '.join(ARM_KINDS)})")
    kind.check(arm.params, where)
    settings = kind.settings(arm.params)
    if settings:
        _config({**base, **settings}, where)


def parse_spec(raw: dict[str, Any]) -> AblationSpec:
    """A checked `AblationSpec` from a plain mapping (YAML's shape); every mistake is one `AblationError` line."""
    if not isinstance(raw, dict):
        raise AblationError("an ablation is a mapping with base, arms, baseline, seeds and budget")
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise AblationError(f"unknown key(s) {unknown} (known: {', '.join(sorted(TOP_LEVEL))})")
    base = dict(raw.get("base") or {})
    for name in sorted(set(base) & {"max_steps", "num_train_epochs", "val_set_size", "seed", "output_dir"}):
        where = {"max_steps": "budget", "num_train_epochs": "budget", "val_set_size": "evaluation.heldout",
                 "seed": "seeds", "output_dir": "the runner's output_dir"}[name]
        raise AblationError(f"base: {name} is set by the ablation ({where}), not in base")
    base_cfg = _config(base, "base")
    arms_raw = raw.get("arms") or {}
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise AblationError("arms: name at least one arm, e.g. all: {kind: base}")
    arms = {}
    for name, value in arms_raw.items():
        if not isinstance(value, dict) or "kind" not in value:
            raise AblationError(f"arm {name!r}: expected a mapping with a kind, e.g. {{kind: base}}")
        params = {k: v for k, v in value.items() if k != "kind"}
        arm = Arm(str(name), str(value["kind"]), params)
        check_arm(arm, base)
        arms[arm.name] = arm
    baseline = raw.get("baseline")
    if baseline not in arms:
        raise AblationError(f"baseline {baseline!r} is not one of the arms ({', '.join(arms)})")
    seeds = raw.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)):  # numpy's seed range
        raise AblationError(f"seeds: a list of distinct whole numbers from 0 to 2**32 - 1, got {seeds!r}")
    budget = _dataclass(Budget, raw.get("budget") or {}, "budget")
    if (budget.steps is None) == (budget.examples is None):
        raise AblationError("budget: give steps (equal optimizer steps) or examples (equal examples seen), not both")
    count = budget.steps if budget.steps is not None else budget.examples
    if not isinstance(count, int) or count < 1:
        raise AblationError(f"budget: a whole number >= 1, got {count!r}")
    evaluation = _dataclass(EvaluationConfig, raw.get("evaluation") or {}, "evaluation")
    evaluation = dataclasses.replace(evaluation, metrics=tuple(evaluation.metrics),
                                     max_length=evaluation.max_length or base_cfg.model_max_length)
    unknown_metrics = sorted(set(evaluation.metrics) - set(METRICS))
    if unknown_metrics:
        raise AblationError(f"evaluation: unknown metric(s) {unknown_metrics} (metrics: {', '.join(METRICS)})")
    if ("ifeval" in evaluation.metrics) != (evaluation.ifeval_items > 0):
        raise AblationError("evaluation: the ifeval metric needs ifeval_items >= 1, and ifeval_items needs the ifeval "
                            f"metric (metrics {list(evaluation.metrics)}, ifeval_items {evaluation.ifeval_items})")
    if ("xstest" in evaluation.metrics) != (evaluation.xstest_items > 0):
        raise AblationError("evaluation: the xstest metric needs xstest_items >= 1, and xstest_items needs the xstest "
                            f"metric (metrics {list(evaluation.metrics)}, xstest_items {evaluation.xstest_items})")
    if evaluation.xstest_items > 200:
        raise AblationError(f"evaluation: xstest_items is per group, at most 200 (XSTest's unsafe prompts), "
                            f"got {evaluation.xstest_items}")
    if evaluation.heldout < 1:
        raise AblationError("evaluation: heldout must be >= 1 (the validation loss needs held-out records)")
    spec = AblationSpec(base=base, arms=arms, baseline=baseline, seeds=tuple(seeds), budget=budget,
                        evaluation=evaluation, grader=_dataclass(GraderConfig, raw.get("grader") or {}, "grader"),
                        gpus=int(raw.get("gpus", 0)), cpu_processes=int(raw.get("cpu_processes", 1)),
                        keep_models=bool(raw.get("keep_models", False)))
    for arm in arms.values():  # every arm's budget must be whole (examples / its global batch)
        spec.steps(arm_config(spec, arm, spec.seeds[0], "data.json", "run"))
    return spec


def arm_config(spec: AblationSpec, arm: Arm, seed: int, data_file: str | os.PathLike,
               run_dir: str | os.PathLike) -> TrainConfig:
    """The training configuration of one arm and seed: the base, the arm's setting (mask or setting arms), its
    data file, the seed, the budget's steps and no held-out split of its own (the ablation measures that)."""
    settings = ARM_KINDS[arm.kind].settings(arm.params)
    cfg = _config({**spec.base, **settings, "data_path": str(data_file), "max_examples": None, "data_columns": None,
                   "val_set_size": 0, "seed": seed, "output_dir": str(run_dir),
                   **({"device": "cpu"} if spec.gpus == 0 else {})}, f"arm {arm.name!r}")
    return dataclasses.replace(cfg, max_steps=spec.steps(cfg))


def preset_path(name: str | os.PathLike) -> Path:
    """An ablation preset: a YAML path, or a name in configs/ablations/."""
    path = Path(name)
    if path.suffix and path.is_file():
        return path
    candidate = ABLATIONS_DIR / (path.name if path.suffix else f"{name}.yaml")
    if not candidate.is_file():
        names = sorted(p.stem for p in ABLATIONS_DIR.glob("*.yaml"))
        raise AblationError(f"{name}: no such ablation (presets: {', '.join(names)}; or a YAML path)")
    return candidate


MERGED = ("base", "evaluation", "grader", "arms")


def load_spec(source: str | os.PathLike | dict[str, Any], select_n: int | None = None,
              budget_steps: int | None = None, budget_examples: int | None = None, **overrides: Any) -> AblationSpec:
    """Read an ablation (a preset name, a YAML path or a mapping), apply overrides, and check it.

    `base`, `evaluation` and `grader` overrides are merged into the spec's, leaving out None values (None keeps
    the spec's); `arms` overrides add or replace arms, and an arm set to None is dropped. Other keys replace the
    spec's unless None. `select_n` sets `n` of every selection arm; `budget_steps` or `budget_examples` replace
    the budget.
    """
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        raw = yaml.safe_load(preset_path(source).read_text()) or {}
        if not isinstance(raw, dict):
            raise AblationError(f"{source}: an ablation is a mapping")
    for key, value in overrides.items():
        if value is None:
            continue
        if key in MERGED:
            if not isinstance(value, dict):
                raise AblationError(f"{key}: an override is a mapping, got {value!r}")
            merged = {**(raw.get(key) or {}), **(value if key == "arms" else
                                                   {k: v for k, v in value.items() if v is not None})}
            raw[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            raw[key] = value
    if budget_steps is not None or budget_examples is not None:
        raw["budget"] = {"steps": budget_steps} if budget_steps is not None else {"examples": budget_examples}
    if select_n is not None:
        for arm in (raw.get("arms") or {}).values():
            kind = ARM_KINDS.get(str(arm.get("kind"))) if isinstance(arm, dict) else None
            if kind is not None and kind.count_param is not None:
                arm[kind.count_param] = select_n
    return parse_spec(raw)
