"""Training configuration: recipe defaults, YAML presets, command-line overrides and batch arithmetic.

Precedence: the defaults below (Alpaca 7B's recipe) < a `--config` YAML preset < command-line flags.
Flag names follow the original recipe's `train.py` (Hugging Face `TrainingArguments` names) so that a
command from the Alpaca README reads the same here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..cli import ArgumentParser
from ..paths import REPO_ROOT, resolve
from ..precision import NativeBf16, PrecisionError, choose_training_precision
from ..prompts import PROMPT_FORMATS

CONFIGS_DIR = REPO_ROOT / "configs"


GROUPS = {  # a field's metadata["group"] -> the title `--help` lists it under, in the order of TrainConfig
    "model": "the model",
    "data": "the data and its tokenization",
    "optimisation": "the optimisation: the loss, steps, learning rate and AdamW",
    "batch": "the batch: its split over processes and micro-batches",
    "precision": "precision, memory and speed",
    "distributed": "devices and processes (FSDP)",
    "checkpoints": "the output folder, checkpoints and the final model",
    "lora": "LoRA",
    "logging": "evaluation, logging and tracking",
}
# TrainConfig.loss -> the rows of model_max_length one example is (a DPO pair: its chosen and rejected rows), which
# the memory plan counts; `recipe.Recipe.OBJECTIVES` has one entry for each
LOSS_ROWS = {"sft": 1, "dpo": 2}


class TrainConfigError(ValueError):
    """A configuration that cannot run (raised before any model loads); the message says what to change."""


@dataclass
class TrainConfig:
    """Every setting of a training run; defaults are the Alpaca 7B recipe.

    One flat command line (`--learning_rate`, as the original recipe's `train.py`), its fields in groups as TRL's
    `SFTConfig` sections are: each field's `metadata["group"]` is a key of `GROUPS`, under which `--help` lists it.
    """

    # The model
    model_name_or_path: str = field(default="default", metadata={"group": "model", "help": (
        "HF folder or Hub name; 'default' = embedded SmolLM2-135M"
    )})

    # The data and its tokenization
    data_path: str = field(default="seed", metadata={"group": "data", "help": (
        "seed | a .json/.jsonl/.parquet/.csv file | a folder (save_to_disk or Hub layout) | a Hub dataset "
        "name[:split]"
    )})
    data_columns: str | None = field(default=None, metadata={"group": "data", "help": (
        "map Alpaca fields to other column names, e.g. instruction=prompt,output=completion"
    )})
    max_examples: int | None = field(default=None, metadata={"group": "data", "help": (
        "use a seeded random sample of N records (before the validation split)"
    )})
    val_set_size: float = field(default=0.0, metadata={"group": "data", "help": (
        "held-out validation examples: a fraction below 1 or a count (0 = none)"
    )})
    model_max_length: int = field(default=512, metadata={"group": "data", "help": (
        "longer examples are dropped (as in Alpaca)"
    )})
    prompt_format: str = field(default="alpaca", metadata={"group": "data", "help": (
        "alpaca: Alpaca's prompt template (the recipe) | chat: the model's own chat template (apply_chat_template; "
        "ChatML for SmolLM2-Instruct)"
    )})
    train_on_prompt: bool = field(default=False, metadata={"group": "data", "help": (
        "also train on the prompt's tokens (false: the loss on the response only, as Alpaca); the validation loss "
        "stays on responses"
    )})
    num_proc: int = field(default=1, metadata={"group": "data", "help": "processes for tokenization"})

    # The optimisation: the loss, steps, learning rate and AdamW
    num_train_epochs: int = field(default=3, metadata={"group": "optimisation", "help": "passes over the data"})
    max_steps: int = field(default=-1, metadata={"group": "optimisation", "help": (
        "optimizer steps; overrides epochs when > 0"
    )})
    learning_rate: float = field(default=2e-5, metadata={"group": "optimisation", "help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"group": "optimisation", "help": (
        "AdamW weight decay (not on biases and norms)"
    )})
    warmup_ratio: float = field(default=0.03, metadata={"group": "optimisation", "help": (
        "fraction of steps with linear warm-up"
    )})
    lr_scheduler_type: str = field(default="cosine", metadata={"group": "optimisation", "help": (
        "any transformers scheduler name"
    )})
    adam_beta1: float = field(default=0.9, metadata={"group": "optimisation", "help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"group": "optimisation", "help": "AdamW beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"group": "optimisation", "help": "AdamW epsilon"})
    max_grad_norm: float = field(default=1.0, metadata={"group": "optimisation", "help": (
        "gradient clipping (0 = off)"
    )})
    seed: int = field(default=42, metadata={"group": "optimisation", "help": "data order and initialisation"})
    loss: str = field(default="sft", metadata={"group": "optimisation", "help": (
        "sft: the mean cross-entropy of the response tokens (Alpaca) | dpo: the DPO loss, the mean over preference "
        "pairs; data_path is then a .jsonl/.json of pairs {prompt, chosen, rejected, ref_chosen_logps, "
        "ref_rejected_logps}, the reference log-probabilities computed once before training "
        "(feedback.dpo.reference_logps, at this model_max_length); an example is a pair"
    )})
    dpo_beta: float = field(default=0.1, metadata={"group": "optimisation", "help": (
        "loss dpo: beta, how far the policy may move from the reference (the DPO paper's and TRL's 0.1)"
    )})

    # The batch: its split over processes and micro-batches
    global_batch_size: int = field(default=128, metadata={"group": "batch", "help": (
        "examples per optimizer step, whatever the number of processes"
    )})
    per_device_train_batch_size: int | None = field(default=4, metadata={"group": "batch", "help": (
        "examples per micro-batch on each process, or auto: the memory plan picks it before the weights load (GPUs: "
        "of 32, 16, 8, 4, 2, 1, the one with the least FSDP traffic per step among those that fit with 10% of the "
        "GPU's memory free, i.e. the largest; CPU: the largest of 4, 2, 1 that fits the process's share of RAM; where"
        " the plan cannot model the run, the largest of 4, 2, 1 that splits the batch); the GPU presets' default"
    )})
    gradient_accumulation_steps: int | None = field(default=None, metadata={"group": "batch", "help": (
        "derived from the global batch when unset"
    )})
    group_by_length: bool = field(default=True, metadata={"group": "batch", "help": (
        "micro-batches of similar length inside each global batch"
    )})
    packing: bool = field(default=False, metadata={"group": "batch", "help": (
        "concatenate each micro-batch into one row (no padding)"
    )})

    # Precision, memory and speed
    bf16: bool | None = field(default=None, metadata={"group": "precision", "help": (
        "auto (on where the device has native bf16: GPUs of compute capability 8.0+, CPUs with avx512_bf16 or AMX; "
        "ALPACA_BF16=false turns auto off) | true | false: bf16 compute, fp32 master weights"
    )})
    fp16: bool | None = field(default=None, metadata={"group": "precision", "help": (
        "auto (on where bf16 is off by auto on a GPU with fp16 tensor cores but no bf16: compute capability 7.x, T4 "
        "and V100) | true | false: fp16 compute with a dynamic loss scale, fp32 master weights; a step whose "
        "gradients overflow is skipped and logged. Not with bf16=true"
    )})
    tf32: bool | None = field(default=None, metadata={"group": "precision", "help": (
        "auto (on with GPUs) | true | false: TF32 matmuls on GPUs"
    )})
    activation_checkpointing: bool = field(default=False, metadata={"group": "precision", "help": (
        "recompute activations in backward (less memory)"
    )})
    logits_on_trained_only: bool = field(default=True, metadata={"group": "precision", "help": (
        "compute the LM head's logits only where a label is trained (same loss, less work); false = every position"
    )})
    torch_compile: bool = field(default=False, metadata={"group": "precision", "help": (
        "torch.compile each decoder layer (as torchtitan does): fused kernels after a compile in the first steps; off"
        " until its speed-up is measured on a GPU (scripts/gpu_check.sh measures MFU with it on and off)"
    )})
    ignore_plan: bool = field(default=False, metadata={"group": "precision", "help": (
        "start even where the memory plan says the run does not fit its devices (false: it stops before loading, in "
        "one line with the plan's figure and the first change that fits); for who knows better than the plan, which "
        "is an estimate"
    )})

    # Devices and processes (FSDP)
    device: str = field(default="auto", metadata={"group": "distributed", "help": "auto (GPUs when present) | cpu"})
    fsdp: str = field(default="auto", metadata={"group": "distributed", "help": (
        "auto (full_shard with > 1 process) | full_shard | off"
    )})
    fsdp_transformer_layer_cls_to_wrap: str | None = field(default=None, metadata={"group": "distributed", "help": (
        "layer class to shard as a unit; found from the model when unset"
    )})
    cpu_offload: bool = field(default=False, metadata={"group": "distributed", "help": (
        "FSDP: keep parameters and optimizer state in CPU memory"
    )})
    reduce_scatter_every_micro_batch: bool | None = field(default=None, metadata={"group": "distributed", "help": (
        "FSDP: auto | true | false: reduce-scatter gradients after every micro-batch (false: only after the last, "
        "keeping an unsharded fp32 gradient of the whole model per rank meanwhile; auto: false where the memory plan "
        "says that fits)"
    )})
    dist_timeout_minutes: float = field(default=120.0, metadata={"group": "distributed", "help": (
        "the long timeout of collectives: start-up, loading, the first step, checkpoints and the final save (rank 0 "
        "loads and saves alone while the others wait)"
    )})
    step_timeout_minutes: float = field(default=5.0, metadata={"group": "distributed", "help": (
        "the short timeout of collectives from the second step on (training, evaluation, logging): a rank that stops "
        "answering ends the run after this long, not after dist_timeout_minutes; fractions allowed"
    )})

    # The output folder, checkpoints and the final model
    output_dir: str = field(default="runs/train", metadata={"group": "checkpoints", "help": (
        "log, checkpoints and the final model (relative = repo root)"
    )})
    save_steps: int = field(default=0, metadata={"group": "checkpoints", "help": (
        "checkpoint every N steps (0 = only the final model)"
    )})
    save_total_limit: int = field(default=2, metadata={"group": "checkpoints", "help": "keep the last N checkpoints"})
    resume: bool = field(default=False, metadata={"group": "checkpoints", "help": (
        "continue from the latest checkpoint in output_dir"
    )})
    stop_after_steps: int = field(default=-1, metadata={"group": "checkpoints", "help": (
        "stop after N steps as if interrupted (schedule unchanged)"
    )})
    save_dtype: str = field(default="float32", metadata={"group": "checkpoints", "help": (
        "dtype of the final model's weights: float32 | bfloat16"
    )})
    save_check_logits: bool = field(default=False, metadata={"group": "checkpoints", "help": (
        "also write the live model's logits on one example (save_check.safetensors) to check the saved folder against"
    )})

    # LoRA
    lora: bool = field(default=False, metadata={"group": "lora", "help": (
        "train LoRA adapters (peft) on the frozen base, one process; merged into model/ at the end"
    )})
    lora_r: int = field(default=16, metadata={"group": "lora", "help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"group": "lora", "help": (
        "LoRA scaling numerator (scale = alpha / r)"
    )})
    lora_dropout: float = field(default=0.05, metadata={"group": "lora", "help": "dropout on the LoRA input"})
    lora_target_modules: str = field(default="all-linear", metadata={"group": "lora", "help": (
        "all-linear, or layer names such as q_proj,v_proj"
    )})

    # Evaluation, logging and tracking
    eval_steps: int = field(default=0, metadata={"group": "logging", "help": (
        "validation loss every N steps (also at each epoch's end and the run's); 0 = only those"
    )})
    logging_steps: int = field(default=1, metadata={"group": "logging", "help": (
        "console line every N steps (the JSONL log has every step)"
    )})
    report_to: str = field(default="none", metadata={"group": "logging", "help": (
        "none | tensorboard | wandb | a comma list (rank 0; train_log.jsonl is always written)"
    )})
    progress_bar: bool = field(default=True, metadata={"group": "logging", "help": (
        "a bar over the steps on rank 0 (false: the console lines only, as when the ablation runner sends a run's "
        "console to a file)"
    )})



FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)
AUTO_NUMBERS = {"per_device_train_batch_size"}  # number settings that also take auto (None)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, value: Any) -> Any:
    """Coerce a YAML or command-line value to the field's type, with a one-line error."""
    kind = _TYPES[name]
    args = typing.get_args(kind)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), kind) if args else kind
    if optional and (base is bool or name in AUTO_NUMBERS) and isinstance(value, str) and value.lower() == "auto":
        # bf16/tf32: None means "decide from the device"; reduce_scatter_every_micro_batch and
        # per_device_train_batch_size: "from the memory plan"
        return None
    if value is None or (optional and isinstance(value, str) and value.lower() in {"none", "null", ""}):
        if optional:
            return None
        raise TrainConfigError(f"{name}: a value is required")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise TrainConfigError(f"{name}: cannot read {value!r} as {base.__name__}") from None


def load_preset(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML preset (a flat mapping of field names to values); unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        candidate = CONFIGS_DIR / path.name if path.suffix else CONFIGS_DIR / f"{path}.yaml"
        if not candidate.is_file():
            raise TrainConfigError(f"{path}: no such preset (presets: {', '.join(list_presets())})")
        path = candidate
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: a preset is a mapping of setting: value")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise TrainConfigError(f"{path}: unknown setting(s) {unknown}")
    return {k: _convert(k, v) for k, v in data.items()}


def list_presets() -> list[str]:
    """Names of the shipped presets (`configs/*.yaml`)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def build_parser() -> ArgumentParser:
    """The training command line: `--config`, then one flag per `TrainConfig` field, listed by group."""
    parser = ArgumentParser(
        prog="python -m alpaca_helpers.train",
        description="Alpaca supervised fine-tuning (FSDP2 across processes). Launch with "
                    "`accelerate launch [--multi_gpu --num_processes N] -m alpaca_helpers.train ...`.",
        epilog="Precedence: recipe defaults < --config preset < flags. Presets: " + ", ".join(list_presets()),
    )
    parser.add_argument("--config", help="YAML preset (a path, or a name from configs/)")
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for name, f in FIELDS.items():
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})".replace("%", "%%")  # argparse formats %
        groups[f.metadata["group"]].add_argument(f"--{name}", default=argparse.SUPPRESS, metavar=name.upper(),
                                                 help=help_text)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then the preset named by `--config`, then flags."""
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("config", None)
    values: dict[str, Any] = load_preset(preset) if preset else {}
    values.update({k: _convert(k, v) for k, v in args.items()})
    return make_config(**values)


def make_config(**values: Any) -> TrainConfig:
    """A validated `TrainConfig` from keyword values (coerced to the field types)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise TrainConfigError(f"unknown setting(s) {unknown}")
    cfg = TrainConfig(**{k: _convert(k, v) for k, v in values.items()})
    unknown_trackers = sorted(set(report_targets(cfg.report_to)) - set(TRACKERS))
    if unknown_trackers:
        raise TrainConfigError(
            f"report_to: {unknown_trackers} unknown (use none, {', '.join(TRACKERS)} or a comma list)")
    if cfg.val_set_size < 0 or (cfg.val_set_size >= 1 and not float(cfg.val_set_size).is_integer()):
        raise TrainConfigError(f"val_set_size: a fraction below 1 or a whole count, got {cfg.val_set_size}")
    if cfg.eval_steps < 0:
        raise TrainConfigError(f"eval_steps must be >= 0, got {cfg.eval_steps}")
    if cfg.device not in {"auto", "cpu"}:
        raise TrainConfigError(f"device: expected auto or cpu, got {cfg.device!r}")
    if cfg.fsdp not in {"auto", "full_shard", "off"}:
        raise TrainConfigError(f"fsdp: expected auto, full_shard or off, got {cfg.fsdp!r}")
    if cfg.prompt_format not in PROMPT_FORMATS:
        raise TrainConfigError(f"prompt_format: expected {' or '.join(PROMPT_FORMATS)}, got {cfg.prompt_format!r}")
    if cfg.save_dtype not in {"float32", "bfloat16", "float16"}:
        raise TrainConfigError(f"save_dtype: expected float32, bfloat16 or float16, got {cfg.save_dtype!r}")
    if cfg.num_train_epochs < 1 and cfg.max_steps <= 0:
        raise TrainConfigError("num_train_epochs must be >= 1 (or set max_steps)")
    check_loss(cfg)
    return cfg


def check_loss(cfg: TrainConfig) -> None:
    """The loss and the settings that go with it, each refusal in one line (before any data or model loads)."""
    if cfg.loss not in LOSS_ROWS:
        raise TrainConfigError(f"loss: expected {' or '.join(LOSS_ROWS)}, got {cfg.loss!r}")
    if cfg.loss != "dpo":
        return
    if not cfg.dpo_beta > 0:
        raise TrainConfigError(f"dpo_beta must be > 0, got {cfg.dpo_beta}")
    refused = {"packing": "packing=true (a pair's chosen and rejected rows are scored apart)",
               "train_on_prompt": "train_on_prompt=true (DPO scores the responses only)",
               "data_columns": "data_columns (pairs are read by their own names: prompt, chosen, rejected)"}
    for name, why in refused.items():
        if getattr(cfg, name):
            raise TrainConfigError(f"loss dpo does not take {why}: unset it")


@dataclass(frozen=True)
class BatchSplit:
    """How the global batch splits: global = per_device × accumulation × processes."""

    global_batch_size: int
    per_device: int
    accumulation: int
    world_size: int


def plan_batch(global_batch_size: int, per_device: int, world_size: int,
               accumulation: int | None = None) -> BatchSplit:
    """Check (before any model loads) that the global batch splits evenly over processes and micro-batches."""
    for name, v in (("global_batch_size", global_batch_size), ("per_device_train_batch_size", per_device),
                    ("number of processes", world_size)):
        if v < 1:
            raise TrainConfigError(f"{name} must be >= 1, got {v}")
    per_step = per_device * world_size
    if accumulation is not None:
        if accumulation < 1 or per_step * accumulation != global_batch_size:
            raise TrainConfigError(
                f"per_device_train_batch_size {per_device} × gradient_accumulation_steps {accumulation} × "
                f"{world_size} process(es) = {per_step * max(accumulation, 0)}, not the global batch "
                f"{global_batch_size}: leave gradient_accumulation_steps unset to derive it")
        return BatchSplit(global_batch_size, per_device, accumulation, world_size)
    if global_batch_size % per_step:
        fitting = [d for d in range(1, global_batch_size + 1) if global_batch_size % (d * world_size) == 0]
        hint = (f"per_device_train_batch_size in {fitting}" if fitting
                else "a global batch divisible by the process count")
        raise TrainConfigError(
            f"global batch {global_batch_size} is not divisible by per_device_train_batch_size {per_device} × "
            f"{world_size} process(es) = {per_step}: choose {hint}")
    return BatchSplit(global_batch_size, per_device, global_batch_size // per_step, world_size)


# per_device_train_batch_size auto: the micro-batches the memory plan weighs (`plan.choose_micro_batch`), and the
# largest of them on CPU and where the memory plan cannot decide
MICRO_BATCH_OPTIONS = (32, 16, 8, 4, 2, 1)
CPU_AUTO_MICRO_BATCH = 4


def micro_batch_is_auto(cfg: TrainConfig) -> bool:
    """per_device_train_batch_size auto, left to the memory plan (a gradient_accumulation_steps fixes it instead)."""
    return cfg.per_device_train_batch_size is None and cfg.gradient_accumulation_steps is None


def split_batch(cfg: TrainConfig, world_size: int) -> BatchSplit:
    """`plan_batch` of `cfg` over `world_size` processes. With per_device_train_batch_size auto: the micro-batch
    that gradient_accumulation_steps gives where set; else, until the memory plan picks one (in the run before the
    weights load, `Recipe.plan_memory`), the largest of 4, 2, 1 that splits the batch."""
    per_device = cfg.per_device_train_batch_size
    if per_device is None:
        per_step = cfg.global_batch_size // max(1, world_size)
        if cfg.gradient_accumulation_steps:
            per_device = max(1, per_step // max(1, cfg.gradient_accumulation_steps))
        else:
            per_device = next((m for m in MICRO_BATCH_OPTIONS
                               if m <= min(per_step, CPU_AUTO_MICRO_BATCH) and per_step % m == 0), 1)
    return plan_batch(cfg.global_batch_size, per_device, world_size, cfg.gradient_accumulation_steps)


TRACKERS = ("tensorboard", "wandb")


def report_targets(report_to: str) -> list[str]:
    """The trackers named by `report_to` (`none` = none)."""
    names = [n.strip().lower() for n in report_to.split(",") if n.strip()]
    return [n for n in names if n != "none"]


@dataclass(frozen=True)
class Precision:
    """How the run computes: `bf16` (bf16 matmuls, fp32 master weights), `fp16` (fp16 matmuls with a dynamic
    loss scale, fp32 master weights) and `tf32` (GPU matmuls in TF32); `reason` says why
    (`precision.choose_training_precision`)."""

    bf16: bool
    tf32: bool
    reason: str = ""
    fp16: bool = False


@dataclass(frozen=True)
class RunSetup:
    """What the checks decided for this process count and device, before any model loads."""

    batch: BatchSplit
    fsdp: bool
    precision: Precision

    def with_micro_batch(self, per_device: int) -> "RunSetup":
        """The same run with another micro-batch (what per_device_train_batch_size auto decides)."""
        batch = plan_batch(self.batch.global_batch_size, per_device, self.batch.world_size)
        return dataclasses.replace(self, batch=batch)


def check_lora(cfg: TrainConfig, world_size: int) -> None:
    """LoRA here is for one process (one GPU, or the CPU); checked before any model loads."""
    if not cfg.lora:
        return
    if world_size > 1:
        raise TrainConfigError(f"lora runs on a single process (one GPU or the CPU), not {world_size}: "
                               "launch 1 process, or train all weights with FSDP across several")
    if cfg.fsdp == "full_shard" or cfg.cpu_offload:
        raise TrainConfigError("lora is not combined with FSDP or cpu_offload here: use fsdp=auto, cpu_offload=false")
    if cfg.lora_r < 1:
        raise TrainConfigError(f"lora_r must be >= 1, got {cfg.lora_r}")


ASSUMED_NATIVE = NativeBf16(True, "native bf16 assumed (no device read)")


def check_run(cfg: TrainConfig, world_size: int, on_gpu: bool, native: NativeBf16 = ASSUMED_NATIVE) -> RunSetup:
    """Every check that needs the process count or the device, run before any model loads.

    `bf16` left unset (auto) is on where the device computes bf16 natively (`native`, read by
    `precision.native_bf16`: GPUs of compute capability 8.0+, CPUs with avx512_bf16 or AMX); `fp16` auto is on
    where bf16 auto is off on a GPU of compute capability 7.x; `tf32` auto is on with GPUs. bf16=true is also
    allowed on a CPU without native bf16 (emulated, slow), refused on such a GPU; bf16=true with fp16=true is refused.
    """
    batch = split_batch(cfg, world_size)
    check_lora(cfg, world_size)
    fsdp = cfg.fsdp == "full_shard" or (cfg.fsdp == "auto" and world_size > 1)
    if world_size > 1 and not fsdp:
        raise TrainConfigError("fsdp=off needs a single process: several processes always shard")
    if cfg.cpu_offload and not fsdp:
        raise TrainConfigError("cpu_offload is an FSDP option: it needs fsdp on")
    if not cfg.dist_timeout_minutes > 0:
        raise TrainConfigError(f"dist_timeout_minutes must be > 0, got {cfg.dist_timeout_minutes}")
    if not cfg.step_timeout_minutes > 0:
        raise TrainConfigError(f"step_timeout_minutes must be > 0, got {cfg.step_timeout_minutes}")
    try:
        chosen = choose_training_precision(cfg.bf16, cfg.fp16, native, on_gpu)
    except PrecisionError as e:
        raise TrainConfigError(str(e)) from None
    if chosen.fp16 and cfg.cpu_offload:
        raise TrainConfigError("fp16 with cpu_offload is not supported here: use fp16=false (fp32) with cpu_offload")
    precision = Precision(bf16=chosen.bf16, tf32=on_gpu if cfg.tf32 is None else cfg.tf32, reason=chosen.reason,
                          fp16=chosen.fp16)
    if precision.tf32 and not on_gpu:
        raise TrainConfigError("tf32 is a GPU setting: use tf32=auto or false on CPU")
    return RunSetup(batch, fsdp, precision)


def validation_count(num_records: int, val_set_size: float) -> int:
    """Held-out examples for `val_set_size` (a fraction below 1, rounded, at least 1; or a count)."""
    if val_set_size <= 0:
        return 0
    n = max(1, round(num_records * val_set_size)) if val_set_size < 1 else int(val_set_size)
    if n >= num_records:
        raise TrainConfigError(f"val_set_size {val_set_size} holds out {n} of {num_records} records: "
                               "nothing would be left to train on")
    return n


def total_steps(num_examples: int, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total steps). The last incomplete global batch of each epoch is dropped."""
    per_epoch = num_examples // cfg.global_batch_size
    if per_epoch == 0:
        raise TrainConfigError(
            f"{num_examples} examples make no full global batch of {cfg.global_batch_size}: "
            "lower global_batch_size or add data")
    total = cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.num_train_epochs
    return per_epoch, total


def warmup_steps(total: int, ratio: float) -> int:
    """Warm-up steps as Hugging Face computes them from a ratio (rounded up)."""
    return math.ceil(total * ratio)


def output_path(cfg: TrainConfig) -> Path:
    """The run's output folder, resolved against the repository root."""
    return resolve(cfg.output_dir)


# --- what notebook 04 asks for ------------------------------------------------------------------------


def choose_preset(preset: str, gpus: int, lora: bool = False) -> Path:
    """The preset file for notebook 04: `auto` is cpu_default on CPU (gpus=0), alpaca_7b_lora with LoRA on
    GPUs, else alpaca_7b; any other value names a preset in configs/ (or a YAML path)."""
    if preset == "auto":
        preset = "cpu_default" if gpus == 0 else "alpaca_7b_lora" if lora else "alpaca_7b"
    path = Path(preset)
    if path.suffix and path.is_file():
        return path
    candidate = CONFIGS_DIR / (path.name if path.suffix else f"{preset}.yaml")
    if not candidate.is_file():
        raise TrainConfigError(f"{preset}: no such preset (presets: {', '.join(list_presets())})")
    return candidate


def overrides(max_steps: int = -1, lora: bool = False, **values: Any) -> dict[str, Any]:
    """The settings a user gave to override the preset: None means "keep the preset's"; `max_steps` counts
    only when > 0 and `lora` only when true."""
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise TrainConfigError(f"unknown setting(s) {unknown}")
    if max_steps > 0:
        given["max_steps"] = max_steps
    if lora:
        given["lora"] = True
    return given


def train_args(preset_file: Path, settings: dict[str, Any], output_dir: str | os.PathLike,
               extra_args: str = "") -> list[str]:
    """The `alpaca_helpers.train` arguments for a preset, overriding settings, an output folder and extra flags."""
    return (["--config", str(preset_file)] + [f"--{k}={v}" for k, v in settings.items()]
            + ["--output_dir", str(output_dir)] + shlex.split(extra_args))
