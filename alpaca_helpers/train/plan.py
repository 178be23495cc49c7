"""A memory and time plan for a training run, before renting the machines: from the model's config.json
alone (no weights are read), what each GPU will hold, whether it fits, what to change when it does not,
the disk the checkpoints need and how long the run takes at an assumed throughput (MFU).

    python -m alpaca_helpers.train.plan --model huggyllama/llama-7b --gpus 8 --gpu_memory_gb 80
    python -m alpaca_helpers.train.plan --model /models/llama-7b --gpus 1 --config alpaca_7b_lora --json

It counts what `alpaca_helpers.train` does. Full fine-tuning keeps fp32 master weights, fp32 gradients and
fp32 AdamW state (two moments and a step per tensor); with FSDP (several processes, or `cpu_offload`) each
rank holds its shard of each: FSDP2 cuts every parameter along its first dimension into equal chunks of
ceil(rows / ranks) rows, so rank 0 holds exactly the padded chunk counted here and the others at most that.
bf16 computes with gathered bf16 copies of one or two layers at a time (FSDP) or autocast copies of every
weight (one process). Gradient accumulation without a reduce-scatter at each micro-batch keeps an unsharded
fp32 gradient of the whole model on every rank (`sync_every_micro_batch=False`). LoRA keeps the frozen
base in bf16 on a GPU and the adapters, their gradients and AdamW state in fp32.

Activations are per micro-batch at the full `model_max_length` (the longest micro-batch sets the peak),
per token and decoder layer (8 × hidden + 2 × key/value width + 4 × intermediate) values in the compute
dtype plus the fp32 copies RMSNorm makes in bf16 (fitted on CPU to the bytes of the tensors autograd
saves, `tests/test_plan.py`; on a GPU, SDPA's flash kernels keep no attention matrix either), and the LM
head's logits at trained positions only. With activation checkpointing only each layer's
input is kept, plus one layer's activations while it is recomputed. The total is a sum of the parts: an
upper bound, since gradients grow while activations are freed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

from .config import TrainConfigError, load_preset, make_config, plan_batch

GIB = 2**30
CUDA_OVERHEAD_GIB = 2.0  # CUDA context, kernels and allocator slack per process (a round assumption)
# Dense bf16 peak FLOP/s per GPU, matched in this order against the device name (the PCIe H100 before
# the SXM one it is a substring of). V100 and older have no bf16.
GPU_PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
                       ("L40S", 362e12), ("L4", 121e12))
# Alpaca-like data: tokens per example (prompt template + instruction + response) and the share of them
# trained (the response). Assumptions, printed as such; measure your data with notebook 03.
TOKENS_PER_EXAMPLE = 150.0
TRAINED_FRACTION = 0.5
MICRO_BATCH_OPTIONS = (32, 16, 8, 4, 2, 1)


class PlanError(ValueError):
    """A plan that cannot be made as asked (a bad flag value, an unknown model); one line, no traceback."""


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from its name (`torch.cuda.get_device_name`), or None."""
    return next((flops for key, flops in GPU_PEAK_BF16_FLOPS if key.lower() in device_name.lower()), None)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a model, read from a weightless (meta-device) copy built from its config."""

    parameters: int  # distinct tensors counted once (tied embeddings once)
    embedding: int  # input embedding parameters
    head: int  # LM-head parameters not shared with the input embedding (0 when tied)
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # width of the key (and value) projections: key/value heads × head size
    vocab: int
    layer_shapes: tuple[tuple[int, ...], ...]  # one decoder layer's parameter shapes
    root_shapes: tuple[tuple[int, ...], ...]  # parameters outside the decoder layers (embeddings, norm, head)
    linears: tuple[tuple[str, int, int], ...]  # one layer's linear layers: (name, in, out), for LoRA

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [s for _ in range(self.layers) for s in self.layer_shapes] + list(self.root_shapes)

    @property
    def non_embedding(self) -> int:
        return self.parameters - self.embedding - self.head


def model_shape(model: nn.Module) -> ModelShape:
    """Count a model's parameters by decoder layer and the rest (the units `train_dist.shard_model` shards)."""
    from .distributed import find_layer_class

    layer_cls = find_layer_class(model)
    layers = [m for m in model.modules() if isinstance(m, layer_cls)]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    root = tuple(tuple(p.shape) for p in model.parameters() if id(p) not in in_layers)
    embedding = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    head = out.weight.numel() if out is not None and out.weight is not embedding else 0
    linears = tuple((name.rsplit(".", 1)[-1], m.in_features, m.out_features)
                    for name, m in layers[0].named_modules() if isinstance(m, nn.Linear))
    config = model.config
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()), embedding=embedding.numel(), head=head,
        layers=len(layers), hidden=config.hidden_size,
        intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size), vocab=embedding.shape[0],
        kv_dim=_kv_dim(config),
        layer_shapes=tuple(tuple(p.shape) for p in layers[0].parameters()), root_shapes=root, linears=linears)


def _kv_dim(config: Any) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def load_model_shape(name_or_folder: str) -> ModelShape:
    """The `ModelShape` of a local folder or Hub name, from its config.json only."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import load_model_config

    try:
        _, config = load_model_config(name_or_folder)
    except FileNotFoundError as e:
        raise PlanError(str(e)) from None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return model_shape(model)
    except ValueError as e:  # not a causal LM architecture, or no repeated decoder layer
        raise PlanError(f"{name_or_folder}: cannot plan this model ({str(e).splitlines()[0]})") from None


def shard_elements(shapes: list[tuple[int, ...]], world_size: int) -> int:
    """Elements of rank 0's FSDP2 shards: each tensor's first dimension cut into ceil(rows / ranks) rows."""
    total = 0
    for shape in shapes:
        rows = shape[0] if shape else 1
        rest = math.prod(shape[1:]) if len(shape) > 1 else 1
        total += math.ceil(rows / world_size) * rest
    return total


def lora_targets_in_layer(shape: ModelShape, targets: str) -> list[tuple[str, int, int]]:
    """The linear layers of one decoder layer that LoRA adapts (all-linear: every one)."""
    names = None if targets.strip() == "all-linear" else {t.strip() for t in targets.split(",") if t.strip()}
    known = {name for name, _, _ in shape.linears}
    if names is not None and not names <= known:
        raise PlanError(f"lora_target_modules {sorted(names - known)} not in this model; its linear layers "
                        f"are {sorted(known)} (or use all-linear)")
    return [linear for linear in shape.linears if names is None or linear[0] in names]


def layer_activation_bytes(shape: ModelShape, compute_bytes: int, lora_inputs: int = 0, lora_r: int = 0,
                           lora_dropout: bool = True, lora_adapters: int = 0) -> float:
    """Bytes one decoder layer keeps for backward per token: (8 × hidden + 2 × key/value width +
    4 × intermediate) values in the compute dtype, plus RMSNorm's two fp32 copies under bf16.

    `lora_inputs`: the summed input widths of the layer's `lora_adapters` adapted linears; each adapter keeps
    its input after dropout (in the compute dtype: autocast casts it for the matmul), the dropout mask and its
    rank-r intermediate.
    """
    h = shape.hidden
    layer = (8 * h + 2 * shape.kv_dim + 4 * shape.intermediate) * compute_bytes
    layer += 2 * h * 4 if compute_bytes < 4 else 0
    return layer + lora_inputs * (compute_bytes + (1 if lora_dropout else 0)) + lora_r * compute_bytes * lora_adapters


def activation_bytes_per_token(shape: ModelShape, compute_bytes: int, checkpointing: bool,
                               lora_inputs: int = 0, lora_r: int = 0, lora_dropout: bool = True,
                               lora_adapters: int = 0) -> float:
    """Activation bytes kept for backward per token over the whole model (without the LM head's logits).

    Without checkpointing: every layer's `layer_activation_bytes` and the final norm's input and output.
    With it: each layer's input, the final norm, and one layer's activations while it is recomputed.
    """
    final_norm = 2 * shape.hidden * compute_bytes
    layer = layer_activation_bytes(shape, compute_bytes, lora_inputs, lora_r, lora_dropout, lora_adapters)
    if checkpointing:
        return shape.layers * shape.hidden * compute_bytes + final_norm + layer
    return shape.layers * layer + final_norm


@dataclass
class Plan:
    """Per-device memory (GiB), whether it fits, and the run's shape. `components_gib` sums to `per_device_gb`."""

    model: str
    world_size: int
    num_machines: int
    gpu_memory_gb: float
    per_device: int
    accumulation: int
    global_batch_size: int
    model_max_length: int
    mode: str  # "full (FSDP over N)", "full (one process)", "LoRA"
    bf16: bool
    activation_checkpointing: bool
    cpu_offload: bool
    sync_every_micro_batch: bool
    parameters: int
    trainable_parameters: int
    components_gib: dict[str, float] = field(default_factory=dict)
    activations_other_gib: float = 0.0  # the activations with checkpointing flipped, for comparison
    cpu_memory_per_machine_gib: float = 0.0  # what cpu_offload moves to the machine's RAM
    per_device_gb: float = 0.0  # GiB (2^30 bytes), as GPU memory sizes are
    fits: bool = False
    weights_bytes: int = 0  # per rank, exact, for checks against a real run
    gradients_bytes: int = 0
    optimizer_bytes: int = 0
    accumulation_gradients_bytes: int = 0


def memory_plan(shape: ModelShape, *, world_size: int, gpu_memory_gb: float, per_device: int, global_batch_size: int,
                model_max_length: int, activation_checkpointing: bool = False, cpu_offload: bool = False,
                lora: bool = False, lora_r: int = 16, lora_targets: str = "all-linear", lora_dropout: float = 0.05,
                bf16: bool = True, sync_every_micro_batch: bool = True, fsdp: str = "auto",
                num_machines: int = 1, trained_fraction: float = TRAINED_FRACTION, model: str = "") -> Plan:
    """What each device holds during a run of `alpaca_helpers.train` configured so (see the module docstring)."""
    if world_size < 1:
        raise PlanError(f"the number of GPUs must be >= 1, got {world_size}")
    if gpu_memory_gb <= 0:
        raise PlanError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb}")
    if model_max_length < 1:
        raise PlanError(f"model_max_length must be >= 1, got {model_max_length}")
    if not 0 < trained_fraction <= 1:
        raise PlanError(f"trained_fraction must be in (0, 1], got {trained_fraction}")
    try:
        batch = plan_batch(global_batch_size, per_device, world_size)
    except TrainConfigError as e:
        raise PlanError(str(e)) from None
    if lora and (world_size > 1 or cpu_offload or fsdp == "full_shard"):
        raise PlanError(f"lora runs on a single process without FSDP here, not {world_size} GPU(s)"
                        + (" with cpu_offload" if cpu_offload else "") + ": plan 1 GPU, or full fine-tuning")
    use_fsdp = not lora and (world_size > 1 or cpu_offload or fsdp == "full_shard")
    if world_size > 1 and fsdp == "off":
        raise PlanError("fsdp=off needs a single process: several processes always shard")
    c = 2 if bf16 else 4  # compute dtype bytes
    n = shape.parameters
    tensors = len(shape.shapes)
    comp: dict[str, float] = {}
    if lora:
        adapted = lora_targets_in_layer(shape, lora_targets)
        trainable = shape.layers * sum(lora_r * (i + o) for _, i, o in adapted)
        adapters = trainable * 4
        weights = n * c + adapters  # the frozen base in the compute dtype (fp32 without bf16), fp32 adapters
        grads = adapters
        optim = 2 * adapters + 4 * 2 * shape.layers * len(adapted)  # moments, and a step per A and B tensor
        lora_in = sum(i for _, i, _ in adapted)
        working = 0.0
    else:
        trainable = n
        lora_in = 0
        held = shard_elements(shape.shapes, world_size) if use_fsdp else n
        weights, grads = held * 4, held * 4
        optim = 2 * held * 4 + 4 * tensors  # exp_avg, exp_avg_sq, and a float32 step per tensor
        if use_fsdp:  # gathered compute copies: the root unit, the current and the prefetched layer,
            layer = sum(math.prod(s) for s in shape.layer_shapes)  # and one layer's unsharded gradient
            root = sum(math.prod(s) for s in shape.root_shapes)
            working = (root + 2 * layer) * c + layer * (c + 4)
        else:  # autocast's bf16 copies of the weights used in matmuls (the embedding lookup is not one)
            working = (n - (shape.embedding if shape.head else 0)) * c if bf16 else 0
    accumulation_grads = n * 4 if (use_fsdp and not sync_every_micro_batch and batch.accumulation > 1) else 0
    tokens = per_device * model_max_length

    def activations(checkpointing: bool) -> float:
        per_token = activation_bytes_per_token(shape, c, checkpointing, lora_in, lora_r if lora else 0,
                                               lora_dropout > 0, len(adapted) if lora else 0)
        logits = trained_fraction * tokens * shape.vocab * (c + 4 + 4)  # logits, fp32 copy, log-softmax
        return tokens * per_token + logits

    on_gpu = not cpu_offload
    comp["weights"] = weights / GIB if on_gpu else 0.0
    comp["gradients"] = grads / GIB if on_gpu else 0.0
    comp["optimizer state"] = optim / GIB if on_gpu else 0.0
    comp["accumulated unsharded gradients"] = accumulation_grads / GIB
    comp["gathered / autocast weight copies"] = working / GIB
    comp["activations"] = activations(activation_checkpointing) / GIB
    comp["CUDA context and allocator slack"] = CUDA_OVERHEAD_GIB
    total = sum(comp.values())
    per_machine = world_size // num_machines if world_size % num_machines == 0 else world_size
    mode = "LoRA (frozen base, one process)" if lora else (
        f"full, FSDP over {world_size} GPU(s)" if use_fsdp else "full, one process without FSDP")
    return Plan(model=model, world_size=world_size, num_machines=num_machines, gpu_memory_gb=gpu_memory_gb,
                per_device=batch.per_device, accumulation=batch.accumulation, global_batch_size=global_batch_size,
                model_max_length=model_max_length, mode=mode, bf16=bf16,
                activation_checkpointing=activation_checkpointing, cpu_offload=cpu_offload,
                sync_every_micro_batch=sync_every_micro_batch, parameters=n, trainable_parameters=trainable,
                components_gib={k: round(v, 3) for k, v in comp.items()},
                activations_other_gib=round(activations(not activation_checkpointing) / GIB, 3),
                cpu_memory_per_machine_gib=round((weights + grads + optim) * per_machine / GIB, 3) if cpu_offload else 0.0,
                per_device_gb=round(total, 3), fits=total <= gpu_memory_gb,
                weights_bytes=int(weights), gradients_bytes=int(grads), optimizer_bytes=int(optim),
                accumulation_gradients_bytes=int(accumulation_grads))


def _settings(plan: Plan) -> dict[str, Any]:
    return dict(world_size=plan.world_size, gpu_memory_gb=plan.gpu_memory_gb, per_device=plan.per_device,
                global_batch_size=plan.global_batch_size, model_max_length=plan.model_max_length,
                activation_checkpointing=plan.activation_checkpointing, cpu_offload=plan.cpu_offload,
                bf16=plan.bf16, sync_every_micro_batch=plan.sync_every_micro_batch, num_machines=plan.num_machines)


def suggestions(shape: ModelShape, plan: Plan, **fixed: Any) -> list[dict[str, Any]]:
    """When `plan` does not fit: the changes that make it fit, one at a time, each with its per-device GiB.

    In order: activation checkpointing, a smaller micro-batch (the accumulation is re-derived), more GPUs,
    CPU offload, LoRA (one GPU). `fixed`: the other `memory_plan` arguments the plan was made with.
    """
    if plan.fits:
        return []
    base = _settings(plan)
    is_lora = plan.mode.startswith("LoRA")
    tries: list[tuple[str, dict[str, Any]]] = []
    if not plan.activation_checkpointing:
        tries.append(("--activation_checkpointing true", {"activation_checkpointing": True}))
    for micro in MICRO_BATCH_OPTIONS:
        if micro < plan.per_device and plan.global_batch_size % (micro * plan.world_size) == 0:
            tries.append((f"--per_device_train_batch_size {micro}", {"per_device": micro}))
    if not is_lora:
        for gpus in (2, 4, 8, 16, 32, 64):
            if gpus > plan.world_size and plan.global_batch_size % gpus == 0:
                tries.append((f"{gpus} GPUs", {"world_size": gpus, "num_machines": max(1, gpus // 8)}))
        if not plan.cpu_offload:
            tries.append(("--fsdp full_shard --cpu_offload true", {"cpu_offload": True}))
        if plan.world_size == 1:
            tries.append(("--lora true (configs/alpaca_7b_lora.yaml)", {"lora": True}))
    found, more_gpus = [], False
    for change, values in tries:
        if more_gpus and "world_size" in values:
            continue  # the fewest GPUs that fit is enough
        settings = {**base, **values}
        if settings.get("lora"):
            settings["per_device"] = min(settings["per_device"], 8)
        try:
            candidate = memory_plan(shape, lora=settings.pop("lora", is_lora), **fixed, **settings)
        except PlanError:
            continue
        if candidate.fits:
            more_gpus = more_gpus or "world_size" in values
            found.append({"change": change, "per_device_gb": candidate.per_device_gb,
                          "per_device": candidate.per_device, "accumulation": candidate.accumulation})
    return found


def flops_per_token(shape: ModelShape, seq_len: float, trained_fraction: float = TRAINED_FRACTION,
                    frozen: bool = False) -> float:
    """Training FLOPs per token: 6 per non-embedding parameter (4 with a frozen base: no weight gradients),
    attention scores (12 × layers × hidden × length), and the LM head only at trained positions."""
    per_param = 4 if frozen else 6
    return (per_param * shape.non_embedding + 12 * shape.layers * shape.hidden * seq_len
            + per_param * shape.hidden * shape.vocab * trained_fraction)


def time_plan(shape: ModelShape, plan: Plan, num_examples: int, num_train_epochs: float, mfu: float,
              gpu_name: str, tokens_per_example: float = TOKENS_PER_EXAMPLE,
              trained_fraction: float = TRAINED_FRACTION) -> dict[str, Any]:
    """Optimizer steps and hours of the run at `mfu` of the GPU's bf16 peak (an assumption, not a measurement)."""
    if num_examples < 1 or num_train_epochs <= 0:
        raise PlanError("num_examples must be >= 1 and num_train_epochs > 0")
    if not 0 < mfu <= 1:
        raise PlanError(f"mfu is a fraction of the GPU's peak in (0, 1], got {mfu}")
    peak = peak_bf16_flops(gpu_name)
    if peak is None:
        raise PlanError(f"gpu {gpu_name!r}: peak bf16 FLOP/s unknown; known: "
                        f"{', '.join(k for k, _ in GPU_PEAK_BF16_FLOPS)}")
    steps = int(num_examples // plan.global_batch_size * num_train_epochs)
    tokens = steps * plan.global_batch_size * tokens_per_example
    per_token = flops_per_token(shape, tokens_per_example, trained_fraction, frozen=plan.mode.startswith("LoRA"))
    tokens_per_s = mfu * peak * plan.world_size / per_token
    return {"steps": steps, "tokens": tokens, "gpu": gpu_name, "peak_flops": peak, "mfu": mfu,
            "tokens_per_example": tokens_per_example, "tokens_per_s": round(tokens_per_s),
            "hours": round(tokens / tokens_per_s / 3600, 2)}


def checkpoint_disk(plan: Plan, save_total_limit: int, save_dtype_bytes: int = 4) -> dict[str, float]:
    """Disk for checkpoints (trainable fp32 weights + AdamW moments: 12 bytes per trainable parameter) and
    the final model folder; during a save one more checkpoint exists than are kept."""
    checkpoint = plan.trainable_parameters * 12 / GIB
    final = plan.parameters * save_dtype_bytes / GIB
    return {"checkpoint_gib": round(checkpoint, 2), "final_model_gib": round(final, 2),
            "peak_gib": round((max(save_total_limit, 0) + 1) * checkpoint + final, 2)}


def format_plan(plan: Plan, advice: list[dict[str, Any]], disk: dict[str, float], timing: dict[str, Any] | None) -> str:
    """The plan as a few readable lines (what `python -m alpaca_helpers.train.plan` prints)."""
    lines = [f"{plan.model}: {plan.parameters / 1e9:.2f}B parameters ({plan.trainable_parameters / 1e6:,.1f}M trained), "
             f"{plan.mode}; {'bf16' if plan.bf16 else 'fp32'} compute, "
             + ("fp32 adapters" if plan.mode.startswith("LoRA") else "fp32 master weights")
             + (", CPU offload" if plan.cpu_offload else ""),
             f"batch: {plan.global_batch_size} = {plan.per_device} per device × {plan.accumulation} accumulation × "
             f"{plan.world_size} GPU(s) ({plan.num_machines} machine(s)); micro-batch {plan.per_device} × "
             f"{plan.model_max_length} tokens",
             "per device (GiB):"]
    for name, gib in plan.components_gib.items():
        if gib or name in {"weights", "gradients", "optimizer state", "activations"}:
            note = ""
            if name == "activations":
                note = (f"  (with activation checkpointing; {plan.activations_other_gib:.1f} without)"
                        if plan.activation_checkpointing else
                        f"  (without activation checkpointing; {plan.activations_other_gib:.1f} with)")
            if name == "accumulated unsharded gradients":
                note = "  (no reduce-scatter until the last micro-batch)"
            lines.append(f"  {name:<36} {gib:8.2f}{note}")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"  {'total':<36} {plan.per_device_gb:8.2f} of {plan.gpu_memory_gb:g} GiB: {verdict}")
    if plan.cpu_offload:
        lines.append(f"CPU memory per machine for the offloaded state: {plan.cpu_memory_per_machine_gib:.1f} GiB")
    for a in advice:
        lines.append(f"  to fit: {a['change']} → {a['per_device_gb']:.1f} GiB per device "
                     f"({a['per_device']} per device × {a['accumulation']} accumulation)")
    if not plan.fits and not advice:
        lines.append("  to fit: no single change is enough; combine them (e.g. more GPUs and activation checkpointing)")
    lines.append(f"disk: {disk['checkpoint_gib']:.1f} GiB ({disk['checkpoint_gib'] * GIB / 1e9:.1f} GB) per checkpoint "
                 f"(fp32 weights + AdamW state), {disk['final_model_gib']:.1f} GiB final model, "
                 f"{disk['peak_gib']:.1f} GiB at peak")
    if timing:
        lines.append(f"time: {timing['steps']} steps, {timing['tokens'] / 1e6:.1f}M tokens at {timing['mfu']:.0%} MFU "
                     f"of {timing['gpu']} ({timing['peak_flops'] / 1e12:.0f} TFLOP/s bf16) ≈ {timing['hours']:.1f} h "
                     f"(assumed {timing['tokens_per_example']:g} tokens per example)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alpaca_helpers.train.plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="HF folder or Hub name (only config.json is read)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per machine")
    p.add_argument("--num_machines", type=int, default=1)
    p.add_argument("--gpu_memory_gb", type=float, default=80.0, help="memory of one GPU, GiB")
    p.add_argument("--gpu", default="A100", help="GPU type for the time projection (A100, H100, H100 PCIe, H200, ...)")
    p.add_argument("--config", help="a training preset (path or name in configs/); default: alpaca_7b or, "
                                    "with --lora true, alpaca_7b_lora")
    for name in ("per_device_train_batch_size", "model_max_length", "global_batch_size"):
        p.add_argument(f"--{name}", type=int)
    for name in ("activation_checkpointing", "cpu_offload", "lora"):
        p.add_argument(f"--{name}", choices=["true", "false"])
    p.add_argument("--bf16", choices=["true", "false"], default="true", help="bf16 compute (a GPU run)")
    p.add_argument("--sync_every_micro_batch", choices=["true", "false"], default="true",
                   help="reduce-scatter gradients at every micro-batch (false: an unsharded fp32 gradient per rank)")
    p.add_argument("--num_examples", type=int, default=52_002)
    p.add_argument("--num_train_epochs", type=float, help="default: the preset's")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation")
    p.add_argument("--tokens_per_example", type=float, default=TOKENS_PER_EXAMPLE)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def make_plan(args: argparse.Namespace) -> dict[str, Any]:
    """The whole plan (memory, suggestions, disk, time) for parsed command-line arguments."""
    if args.gpus < 1 or args.num_machines < 1:
        raise PlanError(f"--gpus and --num_machines must be >= 1, got {args.gpus} and {args.num_machines}")
    flag = {"true": True, "false": False, None: None}
    lora = flag[args.lora]
    try:
        cfg = make_config(**load_preset(args.config or ("alpaca_7b_lora" if lora else "alpaca_7b")))
    except TrainConfigError as e:
        raise PlanError(str(e)) from None
    values = {k: v for k, v in {"per_device_train_batch_size": args.per_device_train_batch_size,
                                "model_max_length": args.model_max_length, "global_batch_size": args.global_batch_size,
                                "activation_checkpointing": flag[args.activation_checkpointing],
                                "cpu_offload": flag[args.cpu_offload], "lora": lora}.items() if v is not None}
    cfg = replace(cfg, **values)
    for name in ("per_device_train_batch_size", "model_max_length", "global_batch_size"):
        if getattr(cfg, name) < 1:
            raise PlanError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    shape = load_model_shape(args.model)
    fixed = {"lora_r": cfg.lora_r, "lora_targets": cfg.lora_target_modules, "lora_dropout": cfg.lora_dropout,
             "trained_fraction": TRAINED_FRACTION, "fsdp": cfg.fsdp, "model": args.model}
    plan = memory_plan(shape, world_size=args.gpus * args.num_machines, num_machines=args.num_machines,
                       gpu_memory_gb=args.gpu_memory_gb, per_device=cfg.per_device_train_batch_size,
                       global_batch_size=cfg.global_batch_size, model_max_length=cfg.model_max_length,
                       activation_checkpointing=cfg.activation_checkpointing, cpu_offload=cfg.cpu_offload,
                       lora=cfg.lora, bf16=flag[args.bf16], sync_every_micro_batch=flag[args.sync_every_micro_batch],
                       **fixed)
    advice = suggestions(shape, plan, **fixed)
    disk = checkpoint_disk(plan, cfg.save_total_limit)
    epochs = args.num_train_epochs if args.num_train_epochs is not None else cfg.num_train_epochs
    timing = time_plan(shape, plan, args.num_examples, epochs, args.mfu, args.gpu, args.tokens_per_example)
    return {"plan": plan, "suggestions": advice, "disk": disk, "time": timing}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = make_plan(args)
    except (PlanError, TrainConfigError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    plan = result["plan"]
    if args.json:
        print(json.dumps({**asdict(plan), "suggestions": result["suggestions"], "disk": result["disk"],
                          "time": result["time"]}))
    else:
        print(format_plan(plan, result["suggestions"], result["disk"], result["time"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
