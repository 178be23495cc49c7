"""Alpaca supervised fine-tuning: the recipe's loop, sharded with FSDP2 when run on several processes.

    accelerate launch -m alpaca_helpers.train --config configs/cpu_default.yaml          # laptop CPU
    accelerate launch --multi_gpu --num_processes 2 -m alpaca_helpers.train ...          # 2 CPU procs (gloo)
    accelerate launch --multi_gpu --num_processes 8 -m alpaca_helpers.train \\
        --config configs/alpaca_7b.yaml --model_name_or_path /models/llama-7b --data_path alpaca_data.json

What differs from the original recipe's `Trainer` run, and why:
- The loss of a step is the mean over the trained (response) tokens of the whole global batch, whatever
  the number of processes and micro-batches, so 1 process and N processes compute the same gradient.
- Inside each global batch, micro-batches group examples of similar length (`group_by_length`, on by
  default): the global batch and hence the gradient are unchanged, the padding work mostly goes away.
  `packing` removes the rest by concatenating a micro-batch's examples into rows.
- The last incomplete global batch of each epoch is dropped.

Outputs in `output_dir`: `train_log.jsonl` (one line per step), `checkpoint-<step>/` (with `save_steps`),
`model/` (a plain Hugging Face folder) and `train_summary.json`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .train_config import (BatchPlan, TrainConfig, TrainConfigError, output_path, parse_config, plan_batch,
                           total_steps, warmup_steps)

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
MODEL_DIR = "model"

# Dense bf16 peak FLOP/s per GPU (no sparsity), for the MFU estimate; matched against the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12,
                   "L4": 121e12, "4090": 165e12, "3090": 71e12, "V100": 125e12}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the batch's example ids."""


def load_records(data_path: str, max_examples: int | None = None) -> list[dict[str, Any]]:
    """Training records: an Alpaca JSON/JSONL file, or `seed` for the 175 seed tasks.

    A file that contains evaluation-set tasks is refused (`check_not_eval_set`): notebook 06 compares on them.
    """
    from .data import check_not_eval_set, load_alpaca, load_seed_tasks
    from .paths import resolve

    records = load_seed_tasks() if data_path == "seed" else load_alpaca(resolve(data_path))
    check_not_eval_set(records, source=data_path)
    return records[:max_examples] if max_examples is not None else records


def global_batches(num_examples: int, global_batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches: a seeded random permutation cut into full batches (same on every rank)."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(num_examples, generator=gen).tolist()
    steps = num_examples // global_batch_size
    return [order[i * global_batch_size:(i + 1) * global_batch_size] for i in range(steps)]


def rank_micro_batches(batch: Sequence[int], lengths: Sequence[int], plan: BatchPlan, rank: int,
                       group_by_length: bool) -> list[list[int]]:
    """This rank's micro-batches of one global batch.

    With `group_by_length` the global batch is sorted by length before being cut, so each micro-batch
    holds similar lengths; micro-batches are dealt to ranks round-robin, which also balances their work.
    """
    ids = sorted(batch, key=lambda i: (-lengths[i], i)) if group_by_length else list(batch)
    micro = [ids[i:i + plan.per_device] for i in range(0, len(ids), plan.per_device)]
    return micro[rank::plan.world_size]


def flops_per_token(num_params: int, num_layers: int, hidden: int, seq_len: float, frozen: bool = False) -> float:
    """Training FLOPs per token: 6 per parameter plus attention scores (PaLM paper's estimate).

    With a `frozen` base (LoRA) the weight gradients are skipped: 4 per parameter (forward and input grads).
    """
    return (4 if frozen else 6) * num_params + 12 * num_layers * hidden * seq_len


def peak_flops(device: Any) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device, or None (CPU or unknown GPU: no MFU is reported)."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_gb(device: Any) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    import resource

    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _flag(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "true"


class _Data:
    """Tokenized columns held as Python lists, and micro-batch collation (padding or packing)."""

    def __init__(self, dataset: Any, pad_id: int, packing: bool, max_length: int):
        from .tokenize import IGNORE_INDEX, AlpacaCollator

        self.input_ids = dataset["input_ids"]
        self.labels = dataset["labels"]
        self.example_ids = dataset["example_id"]
        self.lengths = [len(x) for x in self.input_ids]
        # Trained tokens: labels the model predicts (the first position is never predicted).
        self.trained = [sum(1 for t in lab[1:] if t != IGNORE_INDEX) for lab in self.labels]
        self.collator = AlpacaCollator(pad_token_id=pad_id)
        self.packing = packing
        self.max_length = max_length

    def collate(self, ids: Sequence[int]) -> dict[str, Any]:
        from .tokenize import pack_features

        features = [{"input_ids": self.input_ids[i], "labels": self.labels[i], "example_id": self.example_ids[i]}
                    for i in ids]
        if self.packing:  # one row per micro-batch: no padding; position_ids keep examples apart
            features = pack_features(features, sum(len(f["input_ids"]) for f in features))
        return self.collator(features)


class TrainedPositionsHead:
    """Makes the LM head compute logits only at positions whose next token is trained.

    Prompt and padding positions carry no loss, yet a plain forward computes their vocabulary-sized logits
    (49K wide for SmolLM2, 32K for LLaMA) and the cross-entropy over them. A forward pre-hook on the output
    layer keeps just the trained positions, flattened to one row; the loss is then the same sum over the
    same tokens. A hook rather than a wrapper keeps parameter names, weight tying and FSDP untouched.
    """

    def __init__(self, model: Any):
        self.index: Any = None  # flat (row * length + position) indices, or None for a plain forward
        model.get_output_embeddings().register_forward_pre_hook(self._select)

    def _select(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.index is None:
            return None
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.index).unsqueeze(0),) + args[1:]

    def loss(self, model: Any, inputs: dict[str, Any], num_items: float) -> Any:
        """Sum of the trained tokens' cross-entropy / `num_items` (what `labels=` gives, minus the waste)."""
        import torch.nn.functional as F

        from .tokenize import IGNORE_INDEX

        labels = inputs["labels"]
        targets = labels[:, 1:]  # position p predicts token p + 1
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        self.index = rows * labels.shape[1] + cols
        try:
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
        finally:
            self.index = None
        return F.cross_entropy(logits[0].float(), targets[rows, cols], reduction="sum") / num_items


def _write_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training job as configured (every process calls this); returns the run summary."""
    from .lora import check_lora
    from .train_dist import dist_env

    env = dist_env(force_cpu=cfg.device == "cpu")
    plan = plan_batch(cfg.global_batch_size, cfg.per_device_train_batch_size, env.world_size,
                      cfg.gradient_accumulation_steps)  # before any model loads
    check_lora(cfg, env.world_size)
    use_fsdp = cfg.fsdp == "full_shard" or (cfg.fsdp == "auto" and env.world_size > 1)
    if env.world_size > 1 and not use_fsdp:
        raise TrainConfigError("fsdp=off needs a single process: several processes always shard")
    if cfg.cpu_offload and not use_fsdp:
        raise TrainConfigError("cpu_offload is an FSDP option: it needs fsdp on")
    from .train_dist import init_distributed

    if use_fsdp:
        init_distributed(env)
    try:
        return _train(cfg, env, plan, use_fsdp)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, env: Any, plan: BatchPlan, use_fsdp: bool) -> dict[str, Any]:
    import datasets
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, get_scheduler, set_seed

    from .lora import ADAPTER_DIR, apply_lora, save_adapter_and_merge, trainable_parameters
    from .models import resolve_model
    from .tokenize import build_dataset, ensure_pad_token
    from .train_dist import (all_reduce_sum, barrier, broadcast_weights, find_layer_class, latest_checkpoint,
                             load_checkpoint, load_model_for_sharding, per_rank, save_checkpoint,
                             save_hf_folder, shard_model)

    datasets.disable_progress_bars()  # one progress bar per run: ours
    transformers.utils.logging.disable_progress_bar()
    out = output_path(cfg)
    on_gpu = env.device.type == "cuda"
    bf16, tf32 = _flag(cfg.bf16, on_gpu), _flag(cfg.tf32, on_gpu)
    if bf16 and not on_gpu:
        raise TrainConfigError("bf16 is for GPUs here (CPU runs train in fp32): use bf16=auto or false")
    if on_gpu and tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(cfg.seed)

    model_path = resolve_model(cfg.model_name_or_path)
    with torch.device("meta"):  # weightless skeleton: a wrong layer class fails before the weights load
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    layer_cls = find_layer_class(skeleton, cfg.fsdp_transformer_layer_cls_to_wrap)
    del skeleton
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    records = load_records(cfg.data_path, cfg.max_examples)
    built = build_dataset(records, tokenizer, max_length=cfg.model_max_length, num_proc=cfg.num_proc)
    per_epoch, steps = total_steps(len(built.dataset), cfg)

    # LoRA on a GPU keeps the frozen base in bf16 (the adapters train in fp32); full fine-tuning keeps
    # fp32 master weights (FSDP's mixed precision or autocast computes in bf16).
    base_dtype = torch.bfloat16 if cfg.lora and bf16 else torch.float32
    # Other ranks get their shards from rank 0's copy. Not with cpu_offload, whose offloaded shards must be
    # materialised in CPU memory: there every rank loads, as the original recipe did.
    from_rank0 = use_fsdp and env.world_size > 1 and not cfg.cpu_offload
    if from_rank0:
        model = load_model_for_sharding(model_path, base_dtype, env.is_main)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=base_dtype)
    pad_id = ensure_pad_token(tokenizer, model)
    data = _Data(built.dataset, pad_id, cfg.packing, cfg.model_max_length)
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        model = apply_lora(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = trainable_parameters(model)
    if use_fsdp:
        full_state = model.state_dict() if from_rank0 and env.is_main else {}
        shard_model(model, layer_cls, env.device, env.world_size, bf16, cfg.cpu_offload)
        if from_rank0:
            broadcast_weights(model, full_state, env.device, env.is_main)
            del full_state
    else:
        model.to(env.device)
    head = TrainedPositionsHead(model) if cfg.logits_on_trained_only else None
    held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    # parameters each rank holds (the whole model without FSDP)
    shard_sizes = [int(x) for x in per_rank(held, env.rank, env.world_size, env.device)]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and not use_fsdp) if on_gpu \
        else torch.autocast("cpu", enabled=False)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup_steps(steps, cfg.warmup_ratio),
                              num_training_steps=steps)

    start = 0
    log_path = out / LOG_FILE
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    if cfg.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {out}")
        start = load_checkpoint(ckpt, model, optimizer, scheduler, env.rank)["step"]
        if env.is_main:
            print(f"resumed from {ckpt} at step {start}", flush=True)
            _truncate_log(log_path, start)
    elif env.is_main:
        log_path.unlink(missing_ok=True)
        if latest_checkpoint(out) is not None:
            print(f"note: {out} holds checkpoints of an earlier run; they stay until newer ones replace them "
                  "(--resume true continues from them)", flush=True)

    peak = peak_flops(env.device)
    cfg_model = model.config
    if env.is_main:
        print(f"{len(built.dataset)} examples ({built.stats.dropped} dropped, {built.stats.truncated} truncated), "
              f"{steps} steps of {plan.global_batch_size} = {plan.per_device} per device × {plan.accumulation} "
              f"accumulation × {plan.world_size} process(es); {n_params / 1e6:.1f}M parameters"
              + (f", LoRA r={cfg.lora_r} on {cfg.lora_target_modules}: {n_trainable / 1e6:.2f}M trainable "
                 f"({n_trainable / n_params:.2%})" if cfg.lora else "")
              + (f", FSDP over {env.world_size} ({layer_cls.__name__} units)" if use_fsdp else ""), flush=True)
    bar = tqdm(total=steps, initial=start, disable=None if env.is_main else True, desc="train",
               dynamic_ncols=True)
    stop = cfg.stop_after_steps if cfg.stop_after_steps > 0 else steps
    last: dict[str, Any] = {}
    run_start = time.perf_counter()
    totals = {"tokens": 0.0, "trained": 0.0, "seconds": 0.0}
    model.train()
    order: dict[int, list[list[int]]] = {}
    for step in range(start, min(steps, stop)):
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch not in order:
            order = {epoch: global_batches(len(data.lengths), plan.global_batch_size, cfg.seed, epoch)}
        batch = order[epoch][in_epoch]
        trained_total = sum(data.trained[i] for i in batch)
        micro = rank_micro_batches(batch, data.lengths, plan, env.rank, cfg.group_by_length)
        t0, cpu0 = time.perf_counter(), time.process_time()
        loss_sum = tokens = padded = 0.0
        for k, ids in enumerate(micro):
            inputs = {key: v.to(env.device) for key, v in data.collate(ids).items()}
            if use_fsdp:
                model.set_requires_gradient_sync(k == len(micro) - 1)
            with autocast:
                # Sum over this micro-batch's tokens / (global trained tokens / world): FSDP averages
                # gradients over ranks, so the step's gradient is that of the global token mean.
                if head is not None:
                    loss = head.loss(model, inputs, trained_total / env.world_size)
                else:
                    loss = model(**inputs, use_cache=False, num_items_in_batch=trained_total / env.world_size).loss
            loss.backward()
            loss_sum += loss.item()
            tokens += sum(data.lengths[i] for i in ids)
            padded += inputs["input_ids"].numel()
        grad_norm = _clip(model, cfg.max_grad_norm)
        loss_sum, tokens, padded = all_reduce_sum([loss_sum, tokens, padded], env.device)
        step_loss = loss_sum / env.world_size
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            ids = sorted(data.example_ids[i] for i in batch)
            raise NonFiniteLossError(f"step {step + 1}: loss {step_loss} / grad norm {grad_norm} is not finite; "
                                     f"example ids of the batch: {ids}")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        totals["tokens"] += tokens
        totals["trained"] += trained_total
        totals["seconds"] += seconds
        record = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 4), "loss": step_loss,
                  "lr": lr, "grad_norm": grad_norm, "tokens": int(tokens), "trained_tokens": int(trained_total),
                  "padding": round(1 - tokens / padded, 4), "seconds": round(seconds, 4),
                  "cpu_seconds": round(time.process_time() - cpu0, 4),  # this process, all its threads
                  "tokens_per_s": tokens / seconds, "trained_tokens_per_s": trained_total / seconds,
                  "tokens_per_s_per_device": tokens / seconds / env.world_size,
                  "mfu": None, "peak_memory_gb": round(peak_memory_gb(env.device), 3)}
        if peak:
            seq = tokens / len(batch)
            record["mfu"] = flops_per_token(n_params, cfg_model.num_hidden_layers, cfg_model.hidden_size, seq,
                                            frozen=cfg.lora) \
                * tokens / seconds / (peak * env.world_size)
        last = record
        if env.is_main:
            _write_jsonl(log_path, record)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == steps:
                bar.write(_console_line(record, steps))
        if cfg.save_steps > 0 and (step + 1) % cfg.save_steps == 0 and step + 1 < steps:
            save_checkpoint(out, step + 1, model, optimizer, scheduler,
                            {"epoch": record["epoch"], "world_size": env.world_size, "config": vars(cfg)},
                            env.rank, cfg.save_total_limit)
    bar.close()
    peak_per_rank = [round(x, 3) for x in per_rank(peak_memory_gb(env.device), env.rank, env.world_size, env.device)]
    finished = bool(last) and last["step"] == steps
    summary = {"steps": last.get("step", start), "total_steps": steps, "finished": finished,
               "final_loss": last.get("loss"), "examples": len(data.lengths), "world_size": env.world_size,
               "fsdp": use_fsdp, "layer_class": layer_cls.__name__, "parameters": n_params,
               "trainable_parameters": n_trainable, "lora": cfg.lora, "adapter_dir": None,
               "ranks_that_loaded_full_weights": 1 if from_rank0 else env.world_size,
               "peak_memory_gb_per_rank": peak_per_rank,
               "parameters_per_rank": shard_sizes,
               "train_seconds": round(time.perf_counter() - run_start, 2),
               "tokens_per_s": totals["tokens"] / totals["seconds"] if totals["seconds"] else None,
               "trained_tokens_per_s": totals["trained"] / totals["seconds"] if totals["seconds"] else None,
               "tokenize": built.stats.as_dict() | {"dropped_ids": built.stats.dropped_ids[:20]},
               "model_dir": None}
    if finished:
        if cfg.save_check_logits:  # the live model's, before any merge, to check the saved folder against
            _save_check_logits(model, data.input_ids[0][:64], env, out / "save_check.safetensors")
        if cfg.lora:
            model = save_adapter_and_merge(model, out)
            summary["adapter_dir"] = str(out / ADAPTER_DIR)
        dtype = getattr(torch, cfg.save_dtype)
        folder = save_hf_folder(model, tokenizer, out / MODEL_DIR, dtype, env.is_main)
        summary["model_dir"] = str(folder) if folder else str(out / MODEL_DIR)
    elif cfg.save_steps <= 0 and env.is_main:
        print("stopped early without a checkpoint (save_steps=0): nothing to resume from", flush=True)
    if env.is_main:
        from .data import atomic_write_text

        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
        print(f"done: {summary['steps']}/{steps} steps, final loss {summary['final_loss']}, "
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


def _clip(model: Any, max_norm: float) -> float:
    """Clip gradients (max_norm > 0) and return the total norm before clipping, on every rank."""
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (written by the interrupted run after its last checkpoint)."""
    if not path.exists():
        return
    from .data import atomic_write_text

    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _console_line(r: dict[str, Any], steps: int) -> str:
    mfu = f" mfu {r['mfu']:.1%}" if r.get("mfu") is not None else ""
    return (f"step {r['step']}/{steps} loss {r['loss']:.4f} lr {r['lr']:.3e} grad_norm {r['grad_norm']:.3f} "
            f"tok/s {r['tokens_per_s']:.0f} trained tok/s {r['trained_tokens_per_s']:.0f} "
            f"padding {r['padding']:.0%}{mfu} peak mem {r['peak_memory_gb']:.2f} GB")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        train(cfg)
    except (TrainConfigError, NonFiniteLossError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
