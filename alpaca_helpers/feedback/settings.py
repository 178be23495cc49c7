"""The settings of a feedback comparison (notebook 09, `python -m alpaca_helpers.feedback`): one frozen object,
read from a preset of `configs/feedback/` (or a YAML path) with overrides, each setting checked once with a
one-line `FeedbackError`. `train` holds the DPO run's `TrainConfig` settings (`loss: dpo` is implied).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..paths import REPO_ROOT
from ..train.config import FIELDS, TrainConfigError, make_config

PRESETS_DIR = REPO_ROOT / "configs" / "feedback"
JUDGE_METHODS = ("logprobs", "text")
NOT_TRAIN_SETTINGS = ("loss", "data_path", "model_name_or_path", "output_dir", "seed")  # the comparison sets these


class FeedbackError(ValueError):
    """A feedback setting that cannot work, said in one line."""


@dataclass(frozen=True)
class FeedbackSettings:
    """What one feedback comparison does, per seed: constrained prompts from `data_path`, `samples` answers of the
    starting model to each training prompt, pairs by the verifier, the judge asked about them, DPO from the
    starting model on the pairs, and base, best-of-n and DPO measured on the same held-out sets."""

    model_name_or_path: str = "default"  # the starting (SFT) model: "default", a fine-tuned folder, a Hub name
    data_path: str = "seed"  # instructions the constrained prompts are built from ("seed": the 175 seed tasks)
    seeds: tuple[int, ...] = (0,)  # each seed draws its own prompts and samples and trains its own DPO run
    train_prompts: int = 12  # constrained prompts the starting model samples answers to (pairs come from these)
    held_out_prompts: int = 8  # constrained prompts of other instructions, measured on
    per_instruction: int = 1  # constrained prompts built from each instruction
    samples: int = 4  # n: answers sampled per prompt (pairs and best-of-n)
    temperature: float = 0.7  # sampling temperature of those answers
    max_new_tokens: int = 64  # answer limit, sampled and greedy
    ifeval_items: int = 6  # IFEval prompts (a seeded subset of the 541, never trained on) each arm answers
    teacher_items: int = 8  # text-davinci-003 answers scored for teacher agreement
    batch_size: int = 16  # answers generated together
    judge_base_url: str = ""  # "" runs the starting model in this process as judge; or an OpenAI-compatible endpoint
    judge_model: str = ""  # model name at that endpoint (ignored for the local judge)
    judge_api: str = "chat"  # "chat" or "completions" at that endpoint
    judge_method: str = "logprobs"  # "logprobs" (the verdict token's probabilities) or "text" (the verdict line)
    judge_pairs: int | None = None  # pairs the judge rates per seed (None: all)
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the environment variable with the endpoint's key
    gpus: int = 0  # 0: DPO trains in this process; N: its own `accelerate launch` on N GPUs
    cpu_processes: int = 1  # with gpus 0: DPO as N CPU processes
    train: dict[str, Any] = field(default_factory=dict)  # the DPO run's TrainConfig settings (loss dpo implied)

    def __post_init__(self) -> None:
        counts = {"train_prompts": self.train_prompts, "held_out_prompts": self.held_out_prompts,
                  "per_instruction": self.per_instruction, "batch_size": self.batch_size, "max_new_tokens":
                  self.max_new_tokens, "cpu_processes": self.cpu_processes}
        for name, value in counts.items():
            if not isinstance(value, int) or value < 1:
                raise FeedbackError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name in ("ifeval_items", "teacher_items", "gpus"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise FeedbackError(f"{name} must be a whole number of at least 0, got {getattr(self, name)!r}")
        if not isinstance(self.samples, int) or self.samples < 2:
            raise FeedbackError(f"samples must be at least 2 (a pair needs two answers), got {self.samples!r}")
        if not self.temperature > 0:
            raise FeedbackError(f"temperature must be above 0 (samples must differ), got {self.temperature}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise FeedbackError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.judge_method not in JUDGE_METHODS:
            raise FeedbackError(f"judge_method must be one of {', '.join(JUDGE_METHODS)}, got {self.judge_method!r}")
        if self.judge_base_url and not self.judge_model:
            raise FeedbackError("judge_model: name the model at judge_base_url")
        if self.judge_pairs is not None and self.judge_pairs < 0:
            raise FeedbackError(f"judge_pairs must be at least 0 or None, got {self.judge_pairs}")
        self.train_config("runs/check")  # the DPO run's settings, checked before anything runs

    def train_config(self, output_dir: str | os.PathLike, data_path: str = "pairs.jsonl", seed: int = 0):
        """The DPO run's `TrainConfig`: `train` on top of the recipe's defaults, with loss dpo, the starting model,
        the pairs, the seed and the output folder."""
        fixed = sorted(set(self.train) & set(NOT_TRAIN_SETTINGS))
        if fixed:
            raise FeedbackError(f"train: {fixed} are set by the comparison itself; leave them out")
        try:
            return make_config(**{**self.train, "loss": "dpo", "model_name_or_path": self.model_name_or_path,
                                  "data_path": str(data_path), "output_dir": str(output_dir), "seed": seed})
        except TrainConfigError as e:
            raise FeedbackError(f"train: {e}") from None


SETTING_NAMES = tuple(f.name for f in fields(FeedbackSettings))


def preset_path(preset: str | os.PathLike) -> Path:
    """A preset's YAML file: a path, or a name in `configs/feedback/`."""
    path = Path(preset)
    if path.is_file():
        return path
    candidate = PRESETS_DIR / (path.name if path.suffix else f"{path}.yaml")
    if not candidate.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise FeedbackError(f"{preset}: no such feedback preset (presets: {names})")
    return candidate


def load_settings(preset: str | os.PathLike = "cpu_course", **overrides: Any) -> FeedbackSettings:
    """A preset's settings with `overrides` on top (None keeps the preset's; `train` is merged key by key)."""
    path = preset_path(preset)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise FeedbackError(f"{path}: a preset is a mapping of setting: value")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted((set(values) | set(given)) - set(SETTING_NAMES))
    if unknown:
        raise FeedbackError(f"unknown setting(s) {unknown} (settings: {', '.join(SETTING_NAMES)})")
    train = {**values.pop("train", {}), **given.pop("train", {})}
    unknown_train = sorted(set(train) - set(FIELDS))
    if unknown_train:
        raise FeedbackError(f"train: unknown setting(s) {unknown_train}")
    merged = {**values, **given, "train": train}
    if "seeds" in merged:
        merged["seeds"] = tuple(merged["seeds"])
    try:
        return FeedbackSettings(**merged)
    except TypeError as e:
        raise FeedbackError(str(e)) from None

