"""Alpaca supervised fine-tuning (and DPO, `--loss dpo`): the recipe's loop, sharded with FSDP2 on several processes.

    accelerate launch -m alpaca_helpers.train --config configs/cpu_default.yaml          # laptop CPU
    accelerate launch --multi_gpu --num_processes 2 -m alpaca_helpers.train ...          # 2 CPU procs (gloo)
    accelerate launch --multi_gpu --num_processes 8 -m alpaca_helpers.train \\
        --config configs/alpaca_7b.yaml --model_name_or_path huggyllama/llama-7b --data_path tatsu-lab/alpaca

The recipe reads as torchtune's do: `Recipe.setup` (precision, model and sharding, data, optimizer and
schedule, resume), then `Recipe.run`, whose loop calls `train_step`, `evaluate`, `log` and the saves.

What differs from the original recipe's `Trainer` run, and why:
- The loss of a step is the mean over the trained (response) tokens of the whole global batch, whatever
  the number of processes and micro-batches, so 1 process and N processes compute the same gradient.
- Inside each global batch, micro-batches group examples of similar length (`group_by_length`, on by
  default): the global batch and hence the gradient are unchanged, the padding work mostly goes away.
  `packing` removes the rest by concatenating a micro-batch's examples into rows.
- The last incomplete global batch of each epoch is dropped.
- `val_set_size` holds out examples; their loss (same masking) is measured every `eval_steps`, at the end
  of each epoch and of the run.
- `loss` dpo trains on preference pairs through the same loop (`preference`): a pair is one example, the step's
  loss is the mean DPO loss over the global batch's pairs, and each log row adds TRL's metrics (`rewards/...`,
  `logps/...`). `Recipe.OBJECTIVES` is the table of what differs: how the data is built and the loss computed.

Outputs in `output_dir`: `train_log.jsonl` (one row per step, with `eval_loss` when measured),
`checkpoint-<step>/` (with `save_steps`), `model/` (a plain Hugging Face folder), `train_summary.json`,
and `tensorboard/` or `wandb/` with `report_to`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from ..data import source_counts
from ..files import append_durable, atomic_write_text, read_complete_jsonl
from ..models import load_model_config
from ..precision import NativeBf16, native_bf16
from .batches import (
    MODEL_INPUTS,
    TrainData,
    eval_micro_batches,
    global_batches,
    load_records,
    rank_micro_batches,
    split_validation,
    trained_positions,
)
from .config import (
    CPU_AUTO_MICRO_BATCH,
    RunSetup,
    TrainConfig,
    TrainConfigError,
    check_run,
    micro_batch_is_auto,
    output_path,
    parse_config,
    report_targets,
    split_batch,
    total_steps,
    warmup_steps,
)
from .distributed import (
    RankTimeoutError,
    all_reduce_sum,
    barrier,
    broadcast_weights,
    close_process_group,
    collective_phase,
    dist_env,
    find_layer_class,
    init_distributed,
    latest_checkpoint,
    load_checkpoint,
    load_model_for_sharding,
    per_rank,
    save_checkpoint,
    save_hf_folder,
    shard_model,
)
from .lora import ADAPTER_DIR, apply_lora, save_adapter_and_merge, trainable_parameters
from .plan import (
    ModelShape,
    Plan,
    PlanError,
    PlanSettings,
    checkpoint_disk,
    choose_micro_batch,
    explain_fsdp,
    flops_per_token,
    format_plan,
    link_bandwidth,
    load_model_shape,
    memory_plan,
    model_shape,
    note_unknown_gpu,
    peak_bf16_flops,
    peak_fp16_flops,
    refusal,
    suggestions,
    trained_vocab,
    with_loss_scaler,
)
from .preference import (
    REFERENCE_FIELDS,
    PairData,
    dpo_loss,
    dpo_metric_sums,
    load_preference_pairs,
    response_logps,
    trained_row_logps,
)
from .tokenize import IGNORE_INDEX, build_dataset, ensure_pad_token, resize_embeddings_mean
from .tracking import Tracker

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
MODEL_DIR = "model"


FP16_MAX_SKIPS_IN_A_ROW = 20  # the loss scale falls from 2^16 below 1: no gradient overflow is left to explain it


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (in fp16: every step overflowed for `FP16_MAX_SKIPS_IN_A_ROW` steps);
    the message names the step and the batch's example ids."""


def peak_flops(device: Any, dtype: str = "bf16", note: bool = True) -> float | None:
    """Peak dense FLOP/s of a CUDA device by its exact name (`plan.GPUS`): bf16's, or fp16's with `dtype`
    "fp16"; None on CPU, or for a GPU the table does not have (no MFU then), which `note` says once per process."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if note:
        note_unknown_gpu(name)
    return peak_fp16_flops(name) if dtype == "fp16" else peak_bf16_flops(name)


def peak_memory_gb(device: Any) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def peak_reserved_gb(device: Any) -> float | None:
    """Peak memory CUDA's caching allocator held (`max_memory_reserved`: what it allocated plus the free blocks it
    kept, which fragmentation grows); this, not the allocated peak, is what runs out. None on CPU, where
    `peak_memory_gb` is already all the process holds (its resident set)."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**30
    return None


class TrainedPositionsHead:
    """Makes the LM head compute logits only at positions whose next token is trained.

    Prompt and padding positions carry no loss, yet a plain forward computes their vocabulary-sized logits
    (49K wide for SmolLM2, 32K for LLaMA) and the cross-entropy over them. A forward pre-hook on the output
    layer keeps just the trained positions, flattened to one row; the loss is then the same sum over the
    same tokens. A hook rather than a wrapper keeps parameter names, weight tying and FSDP untouched.

    The trained positions come with the batch (`batches.trained_positions`, computed on the CPU before the copy
    to the device: a `nonzero` on GPU labels would make the CPU wait for the GPU); a batch without them (the
    held-out loss, notebook cells) has them computed here from its labels.
    """

    def __init__(self, model: Any):
        self.index: Any = None  # flat (row * length + position) indices, or None for a plain forward
        model.get_output_embeddings().register_forward_pre_hook(self._select)

    def _select(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.index is None:
            return None
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.index).unsqueeze(0),) + args[1:]

    def logits(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(the logits at the trained positions, one (positions, vocabulary) matrix; the batch's trained positions,
        `trained_index` and `trained_labels`)."""
        found = inputs if "trained_index" in inputs else trained_positions(inputs)
        self.index = found["trained_index"]
        try:
            logits = model(**model_inputs(inputs), use_cache=False).logits
        finally:
            self.index = None
        return logits[0], found

    def loss(self, model: Any, inputs: dict[str, Any], num_items: float) -> Any:
        """Sum of the trained tokens' cross-entropy / `num_items` (what `labels=` gives, minus the waste)."""
        import torch.nn.functional as F

        logits, found = self.logits(model, inputs)
        return F.cross_entropy(logits.float(), found["trained_labels"], reduction="sum") / num_items


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What of a collated batch the model is given (not the labels, trained positions or reference log-probs)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def make_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """The recipe's AdamW: weight decay on matrices only (none on biases and norms), at `cfg.learning_rate`
    (the schedule then scales it step by step)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_epsilon)


def compile_layers(model: Any, layer_cls: type) -> int:
    """`torch.compile` each `layer_cls` module in place (`nn.Module.compile`), as torchtitan compiles each
    transformer block; returns how many. The layers run the same code with their own weights, so they share
    compiled graphs: one compile serves every layer, where compiling the whole model would trace all of them.
    Graph breaks are allowed: any Hugging Face layer compiles, the rest of its code runs eagerly (FSDP2's hooks
    do so by design)."""
    layers = [m for m in model.modules() if isinstance(m, layer_cls)]
    for layer in layers:
        # dynamic: group_by_length and packing give every micro-batch a new length, so a graph for one shape
        # (torchtitan's fixed-length case) would be compiled once, then thrown away for a dynamic one
        layer.compile(dynamic=True)
    return len(layers)


def train_step_by_hand(model: Any, batch: dict[str, Any], optimizer: Any, max_grad_norm: float = 1.0,
                       rows_at_once: int = 16) -> float:
    """One optimizer step on one batch, written out; returns its loss. `Recipe.train_step` computes the same
    loss and update, split into micro-batches and processes (tests/test_train.py checks it). The batch goes
    through the model `rows_at_once` examples at a time, so that a large batch's logits fit in memory."""
    import torch
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]  # the logits at position p predict the token at p + 1
    n_trained = (targets != IGNORE_INDEX).sum()  # the response and its eos; prompt and padding are -100
    step_loss = 0.0
    for rows in torch.arange(len(targets)).split(rows_at_once):
        logits = model(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows]).logits
        trained = targets[rows] != IGNORE_INDEX
        loss = F.cross_entropy(logits[:, :-1][trained].float(), targets[rows][trained], reduction="sum") / n_trained
        loss.backward()  # gradients add up over the chunks: the step's is that of the mean over trained tokens
        step_loss += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()  # AdamW moves every weight against its gradient
    optimizer.zero_grad(set_to_none=True)  # the next step starts from zero
    return step_loss


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing of every decoder layer. transformers 5.x renamed the switch
    (`gradient_checkpointing_enable` warns and goes in v6); older 5.x releases only have the old name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def quiet_library_bars() -> None:
    """One progress bar per run, ours: no `datasets` map bars or transformers weight-loading bars."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def first_step_inputs(cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """The model and the examples of the recipe's step 1, for one step by hand: the model in fp32 on the CPU,
    its embeddings grown as `Recipe.setup_model` grows them when a pad token is added (LLaMA has none); the
    examples are the same records, split, tokenization and seeded order, collated as one batch
    (`Recipe.train_step` cuts them into micro-batches)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_library_bars()
    batch = split_batch(cfg, 1)
    recipe = Recipe(cfg, dist_env(force_cpu=True), RunSetup(batch, False, None))  # only the data is set up
    recipe.model_path = load_model_config(cfg.model_name_or_path)[0]
    recipe.tokenizer = AutoTokenizer.from_pretrained(recipe.model_path)
    recipe.setup_data()
    model = AutoModelForCausalLM.from_pretrained(recipe.model_path, dtype=torch.float32)
    if recipe.pad_added:
        resize_embeddings_mean(model, len(recipe.tokenizer))
    return model, recipe.data.collate(recipe.global_batch(1))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training job as configured (every process calls this); returns the run summary.

    The process group is destroyed only after a clean run. On an error in one rank (a CUDA OOM, a full disk
    in rank 0's save) `destroy_process_group` would wait for the peers still inside a collective (under NCCL,
    pytorch/pytorch#141510) and keep every GPU idle for `dist_timeout_minutes`; instead the exception ends this
    process and the launcher (torchrun) stops the others, as torchtitan does (pytorch/torchtitan#1342).
    A rank that hangs rather than fails is caught by the collectives' timeouts (`Recipe.phase`): the long
    `dist_timeout_minutes` while one rank loads or saves alone, the short `step_timeout_minutes` from the second step.
    """
    env = dist_env(force_cpu=cfg.device == "cpu")
    on_gpu = env.device.type == "cuda"
    # before any model loads
    run_setup = check_run(cfg, env.world_size, on_gpu=on_gpu, native=device_native_bf16(env.device))
    if run_setup.fsdp:
        init_distributed(env, cpu_offload=cfg.cpu_offload, minutes=cfg.dist_timeout_minutes)
    recipe = Recipe(cfg, env, run_setup)
    recipe.setup()
    summary = recipe.run()
    close_process_group()
    return summary


def device_native_bf16(device: Any) -> NativeBf16:
    """Native bf16 on this process's device (`precision.native_bf16`). On a GPU, read after
    `torch.cuda.set_device(device)`, so that each rank asks its own GPU and none opens a context on GPU 0."""
    import torch

    if device.type == "cuda":
        torch.cuda.set_device(device)
    return native_bf16(device)


def precision_summary(bf16: bool, fsdp: bool, lora: bool, fp16: bool = False) -> str:
    """How a run computes, in words: what is bf16 or fp16, what stays fp32, and which mechanism does it."""
    if not (bf16 or fp16):
        return "fp32"
    half = "bf16" if bf16 else "fp16"
    how = "FSDP mixed precision, gradients reduced in fp32" if fsdp else "autocast"
    scaler = ", dynamic loss scale (GradScaler; an overflowing step is skipped)" if fp16 else ""
    kept = f"frozen base in {half}, fp32 adapters and optimizer state" if lora else \
        "fp32 master weights and optimizer state"
    return f"{half} compute ({how}){scaler}, {kept}"


def memory_budget_gib(device: Any, processes_per_machine: int) -> float:
    """What one process may hold, GiB: its GPU's memory, or on CPU its share of this machine's RAM."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 / max(1, processes_per_machine)


def memory_plan_for_run(cfg: TrainConfig, shape: ModelShape, run: RunSetup, world_size: int, num_machines: int,
                        gpu_memory_gb: float, device: str = "gpu", gpu_name: str | None = None) -> Plan:
    """`plan.memory_plan` for this run's settings: what each device holds, as the code does it (including
    `reduce_scatter_every_micro_batch`, which the plan decides when auto). `device` "cpu": processes against
    their share of RAM (`gpu_memory_gb`), no CUDA context. With per_device_train_batch_size auto the plan
    chooses the micro-batch (`plan.choose_micro_batch`; on CPU up to `CPU_AUTO_MICRO_BATCH`), weighing its FSDP
    traffic at the link of `gpu_name` (`plan.link_bandwidth`)."""
    auto = micro_batch_is_auto(cfg)
    half = run.precision.bf16 or run.precision.fp16  # fp16 holds bf16's bytes, plus the loss scaler
    settings = PlanSettings.from_config(cfg, world_size, gpu_memory_gb=gpu_memory_gb, num_machines=num_machines,
                                        per_device=None if auto else run.batch.per_device, bf16=half, device=device)
    if auto:
        link = link_bandwidth(gpu_name, num_machines) if gpu_name and device == "gpu" else None
        memory = choose_micro_batch(shape, settings, link=link,
                                    largest=None if device == "gpu" else CPU_AUTO_MICRO_BATCH)
    else:
        memory = memory_plan(shape, settings)
    return with_loss_scaler(memory) if run.precision.fp16 else memory


def explain_fsdp_for_run(config: Any, processes: int, on_gpu: bool, num_machines: int = 1) -> str:
    """`explain_fsdp` for a training config sharded over `processes` (at least 2: what `cpu_processes=2` or the
    GPUs would shard), with the run's own precision and gradient-sync rule; LoRA, never sharded here, says so."""
    import torch

    if config.lora:
        return "LoRA trains in one process here: nothing is sharded (FSDP shards full fine-tuning)."
    ranks = max(2, processes)
    run = check_run(config, ranks, on_gpu=on_gpu, native=native_bf16("cuda" if on_gpu else "cpu"))
    budget = memory_budget_gib(torch.device("cuda", 0) if on_gpu else torch.device("cpu"), ranks // num_machines)
    shape = load_model_shape(config.model_name_or_path)
    plan = memory_plan_for_run(config, shape, run, ranks, num_machines, budget, "gpu" if on_gpu else "cpu",
                               torch.cuda.get_device_name(0) if on_gpu else None)
    return explain_fsdp(shape, plan)


class Objective(NamedTuple):
    """What a run minimises (`TrainConfig.loss`, a key of `Recipe.OBJECTIVES`): how its examples are built and
    what its loss is; everything else (the split, batches, sharding, plan, checkpoints, logs) is the same."""

    data: Any  # (recipe, pad id) -> (training data, held-out data or None, TokenizeStats): `TrainData`s
    loss: Any  # (recipe, micro-batch, num_items) -> the micro-batch's loss sum / num_items


@dataclass
class StepTotals:
    """Running sums over the steps this process ran (for the summary's throughput)."""

    tokens: float = 0.0
    trained_tokens: float = 0.0
    seconds: float = 0.0


class Recipe:
    """One training run: `setup()` builds everything, `run()` trains, evaluates, logs and saves."""

    def __init__(self, cfg: TrainConfig, env: Any, run_setup: RunSetup):
        self.cfg, self.env, self.run_setup = cfg, env, run_setup
        self.out = output_path(cfg)
        self.log_path = self.out / LOG_FILE
        self.totals = StepTotals()
        self.eval_loss_at_start: float | None = None
        self.metric_sums: dict[str, Any] = {}  # the objective's metric sums of the current step (`pair_loss`)
        self.last_eval_loss: float | None = None
        self._epoch_batches: dict[int, list[list[int]]] = {}

    # --- setup: precision, model source, data, model and sharding, optimizer and schedule, resume ---------

    def setup(self) -> None:
        from transformers import set_seed

        quiet_library_bars()
        set_seed(self.cfg.seed)
        with self.phase("setup (rank 0 loads the weights, then any checkpoint loads)", long=True):
            self.setup_precision()
            self.setup_model_source()
            self.setup_data()
            self.setup_model()
            self.setup_optimizer()
            self.setup_resume()
            self.setup_tracking()

    def phase(self, what: str, long: bool = False) -> Any:
        """A phase of the run whose collectives time out after the long limit (`dist_timeout_minutes`: where one
        rank works alone, and ranks may drift apart) or the short one (`step_timeout_minutes`); long phases end
        with a barrier. A timeout ends the run with one line (`distributed.collective_phase`)."""
        setting = "dist_timeout_minutes" if long else "step_timeout_minutes"
        return collective_phase(what, getattr(self.cfg, setting), setting, self.env.rank, barrier_after=long)

    def setup_precision(self) -> None:
        """bf16 or fp16 compute with fp32 master weights: FSDP's mixed-precision policy when sharded, autocast
        in one process. LoRA keeps its frozen base in bf16 or fp16 (the adapters train in fp32). fp16 adds a
        dynamic loss scaler (`torch.amp.GradScaler`); torch 2.13's plain scaler serves FSDP2 too: DTensor
        gradients all-reduce its inf/NaN check over the mesh (`found_inf_reduce_handler` in
        torch/distributed/tensor/_dispatch.py), so every rank skips the same steps."""
        import torch

        precision = self.run_setup.precision
        if precision.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        half = torch.bfloat16 if precision.bf16 else torch.float16 if precision.fp16 else None
        self.base_dtype = half if self.cfg.lora and half is not None else torch.float32
        use_autocast = half is not None and not self.run_setup.fsdp
        self.autocast = torch.autocast(self.env.device.type, dtype=half) if use_autocast else nullcontext()
        self.scaler = torch.amp.GradScaler(self.env.device.type) if precision.fp16 else None
        self.skipped_in_a_row = self.skipped_steps = 0
        if self.env.is_main:
            summary = precision_summary(precision.bf16, self.run_setup.fsdp, self.cfg.lora, precision.fp16)
            print(f"precision: {summary} ({precision.reason})", flush=True)

    def setup_model_source(self) -> None:
        """The model's folder, config and tokenizer, and the memory plan (which also decides the gradient sync);
        a wrong layer class fails here, before any weights load."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path, model_config = load_model_config(self.cfg.model_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        with torch.device("meta"):  # a weightless skeleton
            skeleton = AutoModelForCausalLM.from_config(model_config)
        self.layer_cls = find_layer_class(skeleton, self.cfg.fsdp_transformer_layer_cls_to_wrap)
        shape = model_shape(skeleton)
        self.shape = shape.with_vocab(trained_vocab(shape.vocab, self.tokenizer))  # a pad token added later
        self.memory = self.plan_memory()
        # Off: FSDP2 keeps an unsharded fp32 gradient of the whole model until the last micro-batch.
        setting = self.cfg.reduce_scatter_every_micro_batch
        self.sync_every = self.memory.sync_every_micro_batch if self.memory is not None else setting is not False
        misfit = self.memory is not None and not self.memory.fits
        # every rank must decide alike: where one rank's memory is short, all sync (and all stop)
        if self.run_setup.fsdp:
            sync, misfits, micro = all_reduce_sum([float(self.sync_every), float(misfit),
                                                   float(self.run_setup.batch.per_device)], self.env.device)
            self.sync_every, misfit = sync > 0, misfits > 0
            if micro != self.run_setup.batch.per_device * self.env.world_size:
                raise TrainConfigError("per_device_train_batch_size auto: the ranks' memory plans chose different "
                                       "micro-batches (devices of different memory?); set a number")
        self.print_plan()
        self.check_fits(misfit)

    def check_fits(self, misfit: bool) -> None:
        """Stop before the data and weights load where the memory plan says the run does not fit its devices (on
        any rank), in one line (`plan.refusal`), unless `ignore_plan`."""
        if not misfit:
            return
        if self.cfg.ignore_plan:
            if self.env.is_main:
                print("plan: the run does not fit its devices by the plan; starting anyway (ignore_plan=true)",
                      flush=True)
            return
        memory = self.memory
        if memory is None or memory.fits:
            raise TrainConfigError("another rank's memory plan does not fit its device: the run does not fit; "
                                   "ignore_plan=true starts it anyway")
        raise TrainConfigError(refusal(memory, suggestions(self.shape, memory)))

    def plan_memory(self) -> Any:
        """The memory plan (`alpaca_helpers.train.plan`) of this run, against this process's memory; None (and a
        note) where the plan does not model a setting."""
        import torch

        env = self.env
        machines = max(1, int(os.environ.get("WORLD_SIZE", "1"))
                       // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        budget = memory_budget_gib(env.device, env.world_size // machines)
        on_gpu = env.device.type == "cuda"
        try:
            memory = memory_plan_for_run(self.cfg, self.shape, self.run_setup, env.world_size, machines, budget,
                                         device="gpu" if on_gpu else "cpu",
                                         gpu_name=torch.cuda.get_device_name(env.device) if on_gpu else None)
        except PlanError as e:  # a setting the plan does not model: the run itself decides
            if env.is_main:
                auto = (f"; per_device_train_batch_size auto: {self.run_setup.batch.per_device}"
                        if micro_batch_is_auto(self.cfg) else "")
                print(f"plan: not available ({e}){auto}", flush=True)
            return None
        if micro_batch_is_auto(self.cfg):  # the plan chose the micro-batch: the run uses it from here on
            self.run_setup = self.run_setup.with_micro_batch(memory.per_device)
            self.cfg = dataclasses.replace(self.cfg, per_device_train_batch_size=memory.per_device)
        return memory

    def print_plan(self) -> None:
        """Rank 0 prints the memory plan; on CPU, one short line."""
        memory = self.memory
        if memory is None or not self.env.is_main:
            return
        if self.env.device.type == "cuda":
            disk = checkpoint_disk(memory, self.cfg.save_total_limit, 2 if self.cfg.save_dtype == "bfloat16" else 4)
            print("plan: " + format_plan(memory, [], disk, None), flush=True)
            return
        sync = ""
        if memory.fsdp and memory.accumulation > 1:
            sync = (f"; gradient sync {'every micro-batch' if memory.sync_every_micro_batch else 'once per step'} "
                    f"({memory.sync_reason})")
        auto = (f"; micro-batch {memory.per_device} (per_device_train_batch_size auto: the largest of at most 4 "
                "that fits)" if memory.micro_batch_reason else "")
        print(f"plan: {memory.parameters / 1e6:.1f}M parameters, {memory.mode}; about "
              f"{memory.per_device_gb:.2f} GiB per process{sync}{auto}", flush=True)

    def setup_data(self) -> None:
        """Examples (the objective's: `OBJECTIVES`), the held-out split, tokenization, and the step counts."""
        cfg = self.cfg
        self.pad_added = self.tokenizer.pad_token_id is None  # then the model's embeddings grow in setup_model
        pad_id = ensure_pad_token(self.tokenizer)
        self.data, self.val, self.tokenize_stats = self.OBJECTIVES[cfg.loss].data(self, pad_id)
        self.per_epoch, self.steps = total_steps(len(self.data), cfg)
        self.last_step = min(self.steps, cfg.stop_after_steps) if cfg.stop_after_steps > 0 else self.steps

    def setup_model(self) -> None:
        """Load the weights, add LoRA adapters, compile the layers (`torch_compile`), shard with FSDP (or move to the
        device), hook the loss head."""
        from transformers import AutoModelForCausalLM

        cfg, env = self.cfg, self.env
        # Other ranks get their shards from rank 0's copy (with cpu_offload too: their shards are made in CPU
        # memory), so a machine holds one full copy of the weights, not one per rank.
        self.from_rank0 = self.run_setup.fsdp and env.world_size > 1
        if self.from_rank0:
            model = load_model_for_sharding(self.model_path, self.base_dtype, env.is_main)
        else:
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.base_dtype)
        if self.pad_added:
            resize_embeddings_mean(model, len(self.tokenizer))
        model.config.use_cache = False
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        if cfg.lora:
            model = apply_lora(model, cfg)
        # after checkpointing and LoRA wrap the layers, before FSDP shards them: torchtitan's order
        if cfg.torch_compile:
            compiled = compile_layers(model, self.layer_cls)
            if env.is_main:
                print(f"torch_compile: {compiled} {self.layer_cls.__name__} layers compiled (the first steps include "
                      "the compile)", flush=True)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.n_trainable = trainable_parameters(model)
        if self.run_setup.fsdp:
            full_state = model.state_dict() if self.from_rank0 and env.is_main else {}
            shard_model(model, self.layer_cls, env.device, env.world_size, self.run_setup.precision.bf16,
                        cfg.cpu_offload, fp16=self.run_setup.precision.fp16)
            if self.from_rank0:
                broadcast_weights(model, full_state, env.device, env.is_main, cfg.cpu_offload)
                del full_state
        else:
            model.to(env.device)
        self.head = TrainedPositionsHead(model) if cfg.logits_on_trained_only else None
        # The LM head's FLOPs per trained token against the rest's per position (it runs at trained positions
        # only): how `batches.deal_micro_batches` weighs a micro-batch's trained tokens.
        self.head_weight = (self.shape.hidden * self.shape.vocab / max(1, self.shape.non_embedding) if self.head
                            else 0.0)
        held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
        self.parameters_per_rank = [int(x) for x in per_rank(held, env.rank, env.world_size, env.device)]
        self.model = model

    def setup_optimizer(self) -> None:
        """AdamW (no weight decay on biases and norms) and the learning-rate schedule."""
        from transformers import get_scheduler

        cfg = self.cfg
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer, num_training_steps=self.steps,
                                       num_warmup_steps=warmup_steps(self.steps, cfg.warmup_ratio))

    def setup_resume(self) -> None:
        """With `resume`, restore the latest checkpoint and cut the log back to it; else start afresh."""
        env, out = self.env, self.out
        self.start = 0
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
        barrier()
        if self.cfg.resume:
            ckpt = latest_checkpoint(out)
            if ckpt is None:
                raise FileNotFoundError(f"--resume: no complete checkpoint in {out}")
            state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler, env.rank)
            self.start = state["step"]
            if self.scaler is not None and "grad_scaler" in state:  # fp16: the loss scale it had reached
                self.scaler.load_state_dict(state["grad_scaler"])
            if env.is_main:
                print(f"resumed from {ckpt} at step {self.start}", flush=True)
                truncate_log(self.log_path, self.start)
        elif env.is_main:
            self.log_path.unlink(missing_ok=True)
            if latest_checkpoint(out) is not None:
                print(f"note: {out} holds checkpoints of an earlier run; they stay until newer ones replace them "
                      "(--resume true continues from them)", flush=True)

    def setup_tracking(self) -> None:
        """TensorBoard / W&B on rank 0 (`report_to`); the run's config is reported once."""
        targets = report_targets(self.cfg.report_to) if self.env.is_main else []
        self.tracker = Tracker(targets, self.out, {k: str(v) if v is None else v for k, v in vars(self.cfg).items()})

    # --- the loop --------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train from `start` to the last step; returns the run summary."""
        self.announce()
        if self.val is not None and self.start == 0:  # where the validation loss starts from
            with self.phase("the evaluation before training", long=True):
                self.eval_loss_at_start = self.evaluate()
                self.tracker.log({"eval_loss": self.eval_loss_at_start}, 0)
        row: dict[str, Any] = {}
        for step in range(self.start + 1, self.last_step + 1):
            # The first step under the long timeout (lazy initialisation and compilation may keep ranks apart),
            # every later one under the short one: a rank that stops answering ends the run in minutes.
            with self.phase(f"training step {step}", long=step == self.start + 1):
                # forward and backward over this rank's share of the global batch, then one optimizer step
                row = self.train_step(step)
                # the held-out loss: every eval_steps, at each epoch's end and at the run's
                if self.should_evaluate(step):
                    row["eval_loss"] = self.last_eval_loss = self.evaluate()
                # train_log.jsonl (the source of truth), the console, the trackers
                self.log(row)
            # a checkpoint to resume from
            if self.cfg.save_steps > 0 and step % self.cfg.save_steps == 0 and step < self.steps:
                self.save_checkpoint(step, row)
        with self.phase("the final save", long=True):
            return self.finish(row)

    def global_batch(self, step: int) -> list[int]:
        """Example indices of global batch `step` (1-based), in the epoch's seeded order."""
        epoch, in_epoch = divmod(step - 1, self.per_epoch)
        if epoch not in self._epoch_batches:
            self._epoch_batches = {epoch: global_batches(len(self.data), self.run_setup.batch.global_batch_size,
                                                         self.cfg.seed, epoch)}
        return self._epoch_batches[epoch][in_epoch]

    def loss(self, inputs: dict[str, Any], num_items: float) -> Any:
        """The micro-batch's loss sum / `num_items`: the objective's (`OBJECTIVES`)."""
        return self.OBJECTIVES[self.cfg.loss].loss(self, inputs, num_items)

    # --- the objectives: supervised fine-tuning and DPO -------------------------------------------------

    def sft_data(self, pad_id: int) -> tuple[TrainData, TrainData | None, Any]:
        """Alpaca records (any source), the held-out split and their tokenization, the prompt masked."""
        cfg = self.cfg
        records = load_records(cfg.data_path, cfg.max_examples, cfg.seed, cfg.data_columns)
        train_records, val_records = split_validation(records, cfg.val_set_size, cfg.seed)
        self.sources = source_counts(train_records)
        self.built = build_dataset(train_records, self.tokenizer, max_length=cfg.model_max_length,
                                   prompt_format=cfg.prompt_format, train_on_prompt=cfg.train_on_prompt,
                                   num_proc=cfg.num_proc)
        val = None
        if val_records:
            built_val = build_dataset(val_records, self.tokenizer, max_length=cfg.model_max_length,
                                      prompt_format=cfg.prompt_format)
            val = TrainData(built_val.dataset, val_records, pad_id, cfg.packing)
        return TrainData(self.built.dataset, train_records, pad_id, cfg.packing), val, self.built.stats

    def token_loss(self, inputs: dict[str, Any], num_items: float) -> Any:
        """Sum of the trained tokens' cross-entropy / `num_items` (trained tokens)."""
        with self.autocast:
            if self.head is not None:
                return self.head.loss(self.model, inputs, num_items)
            return self.model(**inputs, use_cache=False, num_items_in_batch=num_items).loss

    def pair_data(self, pad_id: int) -> tuple[PairData, PairData | None, Any]:
        """Preference pairs with their stored reference log-probabilities, the held-out split (of pairs) and
        their tokenization, masked as SFT masks (`preference.PairData`)."""
        cfg = self.cfg
        pairs = load_preference_pairs(cfg.data_path, cfg.max_examples, cfg.seed)
        train_pairs, val_pairs = split_validation(pairs, cfg.val_set_size, cfg.seed)
        self.sources = source_counts(train_pairs)
        data = PairData(train_pairs, self.tokenizer, pad_id, cfg.model_max_length, cfg.prompt_format)
        val = (PairData(val_pairs, self.tokenizer, pad_id, cfg.model_max_length, cfg.prompt_format) if val_pairs
               else None)
        return data, val, data.stats

    def pair_loss(self, inputs: dict[str, Any], num_items: float) -> Any:
        """The DPO loss summed over the micro-batch's pairs / `num_items` (pairs); their metric sums (TRL's names)
        are added to `metric_sums`. The response log-probabilities come from the logits at trained positions
        only when the head is on, as SFT's loss does."""
        with self.autocast:
            if self.head is not None:
                logits, found = self.head.logits(self.model, inputs)
                rows = found["trained_index"] // inputs["labels"].shape[1]
                logps = trained_row_logps(logits, found["trained_labels"], rows, len(inputs["labels"]))
            else:
                logps = response_logps(self.model(**model_inputs(inputs), use_cache=False).logits, inputs["labels"])
        chosen, rejected = logps.chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, inputs[REFERENCE_FIELDS[0]],
                                                            inputs[REFERENCE_FIELDS[1]], self.cfg.dpo_beta)
        for name, value in dpo_metric_sums(chosen_rewards, rejected_rewards, chosen, rejected).items():
            self.metric_sums[name] = self.metric_sums.get(name, 0.0) + value
        return losses.sum() / num_items

    OBJECTIVES = {"sft": Objective(sft_data, token_loss), "dpo": Objective(pair_data, pair_loss)}

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step on global batch `step`; returns its log row (the same on every rank)."""
        import torch

        env, data, batch = self.env, self.data, self.global_batch(step)
        trained_total = sum(data.trained[i] for i in batch)
        items_total = sum(data.loss_items[i] for i in batch)  # what the loss is a mean over: tokens or pairs
        self.metric_sums = {}  # the objective's metrics, summed over this rank's micro-batches (DPO's)
        micro = rank_micro_batches(batch, data.lengths, self.run_setup.batch, env.rank, self.cfg.group_by_length,
                                   data.trained, self.head_weight)
        t0, cpu0 = time.perf_counter(), time.process_time()
        tokens = padded = 0.0
        loss_sum: Any = 0.0  # a device tensor after the first micro-batch: read once per step
        for k, ids in enumerate(micro):
            # pinned and copied without a host wait; the head's trained positions found on the CPU first
            inputs = data.device_batch(ids, env.device, trained=self.head is not None)
            if self.run_setup.fsdp:  # chosen by the plan (`setup_model_source`)
                self.model.set_requires_gradient_sync(self.sync_every or k == len(micro) - 1)
            # Sum over this micro-batch's tokens (or pairs) / (global trained tokens (pairs) / world): FSDP averages
            # gradients over ranks, so the step's gradient is that of the global token (pair) mean.
            loss = self.loss(inputs, items_total / env.world_size)
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            loss_sum = loss_sum + loss.detach().float()
            tokens += sum(data.lengths[i] for i in ids)
            padded += inputs["input_ids"].numel()
        grad_norm = _clip(self.model, self.cfg.max_grad_norm, self.scaler, self.optimizer)
        # One all-reduce: the step's sums, the objective's metric sums, and each rank's tokens and trained tokens
        # (how balanced the ranks are)
        world, mine = env.world_size, sum(data.trained[i] for ids in micro for i in ids)
        per_rank = [0.0] * (2 * world)
        per_rank[env.rank], per_rank[world + env.rank] = tokens, mine
        names = sorted(self.metric_sums)
        metric_sums = torch.stack([self.metric_sums[n].float() for n in names]).tolist() if names else []
        sums = all_reduce_sum([float(loss_sum), tokens, padded, *metric_sums, *per_rank], env.device)
        (loss_sum, tokens, padded), sums = sums[:3], sums[3:]
        metrics = {name: value / items_total for name, value in zip(names, sums)}  # means over the global batch
        rank_tokens, rank_trained = sums[len(names):len(names) + world], sums[len(names) + world:]
        step_loss = loss_sum / env.world_size
        lr = self.scheduler.get_last_lr()[0]
        scaled = self.optimizer_step(step, step_loss, grad_norm, batch)
        self.optimizer.zero_grad(set_to_none=True)
        if env.device.type == "cuda":  # the optimizer's kernels belong to this step's time, not the next one's
            torch.cuda.synchronize(env.device)
        seconds = time.perf_counter() - t0
        self.totals.tokens += tokens
        self.totals.trained_tokens += trained_total
        self.totals.seconds += seconds
        return {"step": step, "epoch": round(step / self.per_epoch, 4), "loss": step_loss, "lr": lr,
                "grad_norm": grad_norm, **metrics, **scaled, "tokens": int(tokens),
                "trained_tokens": int(trained_total),
                "rank_tokens": [int(x) for x in rank_tokens], "rank_trained_tokens": [int(x) for x in rank_trained],
                "padding": round(1 - tokens / padded, 4), "seconds": round(seconds, 4),
                "cpu_seconds": round(time.process_time() - cpu0, 4),  # this process, all its threads
                "tokens_per_s": tokens / seconds, "trained_tokens_per_s": trained_total / seconds,
                "tokens_per_s_per_device": tokens / seconds / env.world_size,
                "mfu": self.mfu(tokens / (len(batch) * data.rows_per_example), tokens / seconds,
                                trained_total / max(tokens, 1.0)),
                "peak_memory_gb": round(peak_memory_gb(env.device), 3), **memory_reserved_field(env.device)}

    def optimizer_step(self, step: int, step_loss: float, grad_norm: float, batch: list[int]) -> dict[str, Any]:
        """The optimizer and schedule step; returns the log row's fp16 fields (`loss_scale`, `skipped`; none
        without a loss scaler).

        bf16 and fp32: a non-finite loss or gradient norm stops the run (NonFiniteLossError, naming the batch).
        fp16: the scaler decides. A step whose gradients hold inf or NaN (seen as they were unscaled) is skipped:
        weights, optimizer state and schedule stay, the scale halves, one console line says so.
        `FP16_MAX_SKIPS_IN_A_ROW` skipped steps in a row stop the run: then the forward itself overflows fp16.
        """
        def stop(why: str) -> NonFiniteLossError:
            ids = sorted(self.data.example_ids[i] for i in batch)
            return NonFiniteLossError(f"step {step}: {why}; example ids of the batch: {ids}")

        finite = math.isfinite(step_loss) and math.isfinite(grad_norm)
        if self.scaler is None:
            if not finite:
                raise stop(f"loss {step_loss} / grad norm {grad_norm} is not finite")
            self.optimizer.step()
            self.scheduler.step()
            return {}
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)  # no optimizer step where unscale_ found inf or NaN (on any rank)
        self.scaler.update()
        new_scale = self.scaler.get_scale()
        if new_scale >= scale:  # the step was taken
            if not finite:
                raise stop(f"loss {step_loss} / grad norm {grad_norm} is not finite")
            self.scheduler.step()
            self.skipped_in_a_row = 0
            return {"loss_scale": scale, "skipped": False}
        self.skipped_in_a_row += 1
        self.skipped_steps += 1
        if self.skipped_in_a_row >= FP16_MAX_SKIPS_IN_A_ROW:
            raise stop(f"fp16 gradients overflowed in {self.skipped_in_a_row} steps in a row (loss scale down to "
                       f"{new_scale:g}): the forward overflows fp16; train in fp32 (fp16=false)")
        if self.env.is_main:
            tqdm.write(f"step {step}: fp16 gradients overflowed (inf/NaN), step skipped; loss scale {scale:g} -> "
                       f"{new_scale:g}")
        return {"loss_scale": scale, "skipped": True}

    def mfu(self, mean_length: float, tokens_per_s: float, trained_fraction: float) -> float | None:
        """Model FLOPs utilisation on known GPUs (None on CPU): `plan.flops_per_token` (non-embedding
        parameters, the LM head at trained positions only) against `plan.peak_bf16_flops`; an unknown GPU is
        named once, by rank 0."""
        device_flops = peak_flops(self.env.device, note=getattr(self.env, "is_main", True))
        if device_flops is None:
            return None
        head_fraction = trained_fraction if self.head is not None else 1.0
        per_token = flops_per_token(self.shape, mean_length, head_fraction, frozen=self.cfg.lora)
        return per_token * tokens_per_s / (device_flops * self.env.world_size)

    def should_evaluate(self, step: int) -> bool:
        if self.val is None:
            return False
        every = self.cfg.eval_steps > 0 and step % self.cfg.eval_steps == 0
        return every or step % self.per_epoch == 0 or step == self.last_step

    def evaluate(self) -> float:
        """Mean loss per trained (response) token of the held-out examples, masked as in training. Each rank
        computes its share; the sums are reduced."""
        import torch

        env, val = self.env, self.val
        assert val is not None
        count = 0.0
        loss_sum: Any = 0.0  # on the device, read once at the end
        self.model.eval()
        with torch.no_grad():
            for ids in eval_micro_batches(len(val), val.lengths, self.run_setup.batch.per_device,
                                          env.rank, env.world_size):
                inputs = val.device_batch(ids or [0], env.device, trained=self.head is not None)
                loss = self.loss(inputs, 1.0)  # a rank with no share still joins the sharded forward
                if ids:
                    loss_sum = loss_sum + loss.detach().float()
                    count += sum(val.loss_items[i] for i in ids)
        self.model.train()
        self.metric_sums = {}
        loss_sum, count = all_reduce_sum([float(loss_sum), count], env.device)
        return loss_sum / count

    # --- logging and saving ----------------------------------------------------------------------------

    def announce(self) -> None:
        """The run's first lines (rank 0) and its progress bar."""
        cfg, split, stats = self.cfg, self.run_setup.batch, self.tokenize_stats
        if self.env.is_main:
            held_out = f", {len(self.val)} held out for validation" if self.val is not None else ""
            sources = f" (by source: {self.sources})" if self.sources else ""
            print(f"{len(self.data)} training {self.data.noun}{sources} ({stats.dropped} dropped, {stats.truncated} "
                  f"truncated){held_out}; {self.steps} steps of {split.global_batch_size} = {split.per_device} per "
                  f"device × {split.accumulation} accumulation × {split.world_size} process(es); "
                  f"{self.n_params / 1e6:.1f}M parameters"
                  + (f", LoRA r={cfg.lora_r} on {cfg.lora_target_modules}: {self.n_trainable / 1e6:.2f}M trainable "
                     f"({self.n_trainable / self.n_params:.2%})" if cfg.lora else "")
                  + (f", FSDP over {self.env.world_size} ({self.layer_cls.__name__} units)"
                     if self.run_setup.fsdp else ""),
                  flush=True)
        self.bar = tqdm(total=self.steps, initial=self.start,
                        disable=None if self.env.is_main and self.cfg.progress_bar else True,
                        desc="train", dynamic_ncols=True)
        self.run_start = time.perf_counter()
        self.model.train()

    def log(self, row: dict[str, Any]) -> None:
        """Rank 0: append the row to train_log.jsonl (durably), update the bar and console, report it."""
        if not self.env.is_main:
            return
        append_durable(self.log_path, json.dumps(row))
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
        if row["step"] % self.cfg.logging_steps == 0 or row["step"] == self.steps or "eval_loss" in row:
            self.bar.write(console_line(row, self.steps))
        self.tracker.log(row, row["step"])

    def save_checkpoint(self, step: int, row: dict[str, Any]) -> None:
        """A checkpoint to resume from, under the long timeout (rank 0 alone renames and prunes)."""
        with self.phase(f"the checkpoint of step {step}", long=True):
            save_checkpoint(self.out, step, self.model, self.optimizer, self.scheduler,
                            {"epoch": row["epoch"], "world_size": self.env.world_size, "config": vars(self.cfg),
                             **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {})},
                            self.env.rank, self.cfg.save_total_limit)

    def finish(self, row: dict[str, Any]) -> dict[str, Any]:
        """The final save (when every step ran) and `train_summary.json`; returns the summary."""
        import torch

        cfg, env, out = self.cfg, self.env, self.out
        self.bar.close()
        memory = per_rank(peak_memory_gb(env.device), env.rank, env.world_size, env.device)
        reserved = peak_reserved_gb(env.device)  # None on CPU on every rank alike
        reserved_per_rank = None if reserved is None else per_rank(reserved, env.rank, env.world_size, env.device)
        finished = bool(row) and row["step"] == self.steps
        totals = self.totals
        summary = {"steps": row.get("step", self.start), "total_steps": self.steps, "finished": finished,
                   "final_loss": row.get("loss"), "eval_loss": self.last_eval_loss,
                   "eval_loss_at_start": self.eval_loss_at_start, "data_path": cfg.data_path,
                   "examples": len(self.data), "validation_examples": len(self.val) if self.val is not None else 0,
                   "sources": self.sources, "world_size": env.world_size,
                   "fsdp": self.run_setup.fsdp, "bf16": self.run_setup.precision.bf16,
                   "fp16": self.run_setup.precision.fp16, "skipped_steps": self.skipped_steps,
                   "layer_class": self.layer_cls.__name__,
                   "reduce_scatter_every_micro_batch": self.sync_every,
                   "parameters": self.n_params, "trainable_parameters": self.n_trainable, "lora": cfg.lora,
                   "adapter_dir": None, "ranks_that_loaded_full_weights": 1 if self.from_rank0 else env.world_size,
                   "peak_memory_gb_per_rank": [round(x, 3) for x in memory],
                   "peak_reserved_gb_per_rank": (None if reserved_per_rank is None
                                                 else [round(x, 3) for x in reserved_per_rank]),
                   "parameters_per_rank": self.parameters_per_rank,
                   "train_seconds": round(time.perf_counter() - self.run_start, 2),
                   "tokens_per_s": totals.tokens / totals.seconds if totals.seconds else None,
                   "trained_tokens_per_s": totals.trained_tokens / totals.seconds if totals.seconds else None,
                   "tokenize": self.tokenize_stats.as_dict() | {"dropped_ids": self.tokenize_stats.dropped_ids[:20]},
                   "loss": cfg.loss,
                   "model_dir": None}
        model = self.model
        if finished:
            if cfg.save_check_logits:  # the live model's, before any merge, to check the saved folder against
                _save_check_logits(model, self.data.input_ids[0][:64], env, out / "save_check.safetensors")
            if cfg.lora:
                model = save_adapter_and_merge(model, out)
                summary["adapter_dir"] = str(out / ADAPTER_DIR)
            folder = save_hf_folder(model, self.tokenizer, out / MODEL_DIR, getattr(torch, cfg.save_dtype),
                                    env.is_main)
            summary["model_dir"] = str(folder) if folder else str(out / MODEL_DIR)
        elif cfg.save_steps <= 0 and env.is_main:
            print("stopped early without a checkpoint (save_steps=0): nothing to resume from", flush=True)
        self.tracker.close()
        if env.is_main:
            atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
            val = f", validation loss {summary['eval_loss']:.4f}" if summary["eval_loss"] is not None else ""
            print(f"done: {summary['steps']}/{self.steps} steps, final loss {summary['final_loss']}{val}, "
                  f"{summary['trained_tokens_per_s'] or 0:.1f} trained tokens/s"
                  + (f"; model saved to {summary['model_dir']}" if finished else ""), flush=True)
        return summary


def _save_check_logits(model: Any, input_ids: list[int], env: Any, path: Path) -> None:
    """Logits of the in-memory (possibly sharded) model on one input, saved by rank 0 (collective)."""
    import torch
    from safetensors.torch import save_file

    model.eval()
    probe = torch.tensor([input_ids], device=env.device)
    with torch.no_grad():
        logits = model(input_ids=probe, use_cache=False).logits
    if env.is_main:
        save_file({"input_ids": probe.cpu(), "logits": logits.float().cpu().contiguous()}, str(path))


def _clip(model: Any, max_norm: float, scaler: Any = None, optimizer: Any = None) -> float:
    """Clip gradients (max_norm > 0) and return the total norm before clipping, on every rank. With an fp16
    loss `scaler`, the gradients are unscaled first (in place), so the norm and the clipping are the real ones;
    an overflow makes the norm inf or NaN, and the scaler then skips the step."""
    import torch

    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def read_train_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a `train_log.jsonl` (a last line torn by a kill is left out)."""
    return read_complete_jsonl(path)


def truncate_log(path: Path, step: int) -> None:
    """Keep the log rows up to `step` (a resumed run rewrites what came after its checkpoint); a torn last
    line is dropped."""
    if path.exists():
        kept = [row for row in read_train_log(path) if row["step"] <= step]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def memory_reserved_field(device: Any) -> dict[str, float | None]:
    """The log row's `peak_reserved_gb` field: GiB to 3 decimals, None on CPU."""
    reserved = peak_reserved_gb(device)
    return {"peak_reserved_gb": None if reserved is None else round(reserved, 3)}


def console_line(row: dict[str, Any], steps: int) -> str:
    """One console line for a log row."""
    mfu = f" mfu {row['mfu']:.1%}" if row.get("mfu") is not None else ""
    val = f" eval_loss {row['eval_loss']:.4f}" if row.get("eval_loss") is not None else ""
    accuracy = f" reward acc {row['rewards/accuracies']:.2f}" if "rewards/accuracies" in row else ""  # DPO
    reserved = f" ({row['peak_reserved_gb']:.2f} reserved)" if row.get("peak_reserved_gb") is not None else ""
    return (f"step {row['step']}/{steps} loss {row['loss']:.4f}{val}{accuracy} lr {row['lr']:.3e} "
            f"grad_norm {row['grad_norm']:.3f} tok/s {row['tokens_per_s']:.0f} "
            f"trained tok/s {row['trained_tokens_per_s']:.0f} padding {row['padding']:.0%}{mfu} "
            f"peak mem {row['peak_memory_gb']:.2f} GB{reserved}")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        train(cfg)
    except (TrainConfigError, NonFiniteLossError, ValueError, FileNotFoundError, RankTimeoutError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)  # RankTimeoutError: a rank stopped answering
        return 1
    return 0

