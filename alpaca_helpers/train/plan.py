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
weight (one process). In backward FSDP holds the unsharded (bf16) gradients of the unit it is in and copies
them into an fp32 buffer for the reduce-scatter: counted for the root unit (embeddings, final norm, LM head,
whose head gradient lives through the whole backward) and one decoder layer. Gradient accumulation without a
reduce-scatter at each micro-batch keeps an unsharded fp32 gradient of the whole model on every rank
(`sync_every_micro_batch=False`); left unset (auto), the plan keeps it only where it fits, since syncing once
per step moves fewer bytes. LoRA keeps the frozen base in bf16 on a GPU and the adapters, their gradients and
AdamW state in fp32. A tokenizer without a pad token gets one, and the embeddings grow to a multiple of 64 rows
(LLaMA: 32,000 → 32,064); without the tokenizer at hand (only config.json) the plan assumes so.
fp16 (GPUs of compute capability 7.x) holds what bf16 holds (2-byte compute copies, activations and gradient
buffers; the loss scaler unscales the fp32 gradients in place) plus the scaler's three scalars
(`with_loss_scaler`).

Activations are per micro-batch at the full `model_max_length` (the longest micro-batch sets the peak),
per token and decoder layer (8 × hidden + 2 × key/value width + 4 × intermediate) values in the compute
dtype plus the fp32 copies RMSNorm makes in bf16 (fitted on CPU to the bytes of the tensors autograd
saves, `tests/test_plan.py`; on a GPU, SDPA's flash kernels keep no attention matrix either), and the LM
head's logits at trained positions only. With activation checkpointing only each layer's
input is kept, plus one layer's activations while it is recomputed. The total is a sum of the parts: an
upper bound, since gradients grow while activations are freed.

The time projection adds FSDP's communication (per micro-batch two all-gathers of the bf16 weights, and a
reduce-scatter of the fp32 gradients at each sync) at the nominal bandwidth of the GPUs' links (`GPUS`, by exact
device name).

`per_device_train_batch_size: auto` (the GPU presets' default) is decided here (`choose_micro_batch`): of the
micro-batches that split the global batch, the one with the least FSDP traffic per step among those whose plan
fits with 10% of the device's memory free; the plan prints the choice and the runner-up with both figures.
A run whose plan does not fit is refused before it loads (`refusal`), unless `ignore_plan` is set.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..cli import ArgumentParser
from ..models import load_model_config
from .config import (
    CONFIGS_DIR,
    LOSS_ROWS,
    MICRO_BATCH_OPTIONS,
    BatchSplit,
    TrainConfig,
    TrainConfigError,
    load_preset,
    make_config,
    plan_batch,
)
from .distributed import find_layer_class
from .tokenize import resized_rows

if TYPE_CHECKING:
    from torch import nn

GIB = 2**30
SHIPPED_CONFIGS = CONFIGS_DIR / "models"  # config.json of Hub models the presets name, for planning offline
LOSS_SCALER_BYTES = 12  # fp16's GradScaler: the scale (fp32), its growth tracker (int32), found_inf (fp32)
CUDA_OVERHEAD_GIB = 2.0  # CUDA context, kernels and allocator slack per process (a round assumption)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: its dense tensor-core peaks (FLOP/s, without sparsity) and the nominal bandwidth of its
    links (bytes/s per GPU and direction; NCCL's ring collectives reach less)."""

    names: tuple[str, ...]  # exactly as `torch.cuda.get_device_name` reports them, then short names for --gpu
    bf16_flops: float | None  # None: no bf16 (compute capability 7.x)
    fp16_flops: float  # fp16 with fp32 accumulation
    link: float  # inside one machine: NVLink, or PCIe where the GPUs have none
    between: float | None  # between machines, one InfiniBand port per GPU; None: not known for this card


# Matched by the exact device name after `normalise_gpu_name` (case, spacing, "-" and "_", a leading "NVIDIA" or
# "Tesla"), never by a part of it: "H100 NVL" is not the SXM's 989 TFLOP/s, "L40S" is not "L4". Sources:
# - A100 SXM4 and PCIe, 40 and 80 GB: 312 TFLOP/s bf16 and fp16 dense; NVLink 3 600 GB/s both directions per GPU,
#   PCIe Gen4 x16 64 GB/s (NVIDIA A100 datasheet,
#   https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf);
# - H100 SXM 1,979, PCIe 1,513, NVL 1,671 TFLOP/s bf16 and fp16 with sparsity, half of it dense; NVLink 4
#   900 GB/s (SXM), PCIe Gen5 128 GB/s; the NVL's NVLink bridge joins pairs only, so a ring over more GPUs runs
#   at PCIe's pace (NVIDIA H100 datasheet, https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet);
# - H200 SXM: 1,979 TFLOP/s with sparsity, NVLink 900 GB/s (https://www.nvidia.com/en-us/data-center/h200/);
# - L4: 242 TFLOP/s with sparsity, PCIe Gen4 (https://www.nvidia.com/en-us/data-center/l4/);
# - L40S: 362 TFLOP/s dense, PCIe Gen4 (https://www.nvidia.com/en-us/data-center/l40s/);
# - A10: 125 TFLOP/s dense, PCIe Gen4 (https://www.nvidia.com/en-us/data-center/products/a10-gpu/); the A10G
#   (AWS G5) has no NVIDIA datasheet of its own: the A10's figures, an assumption;
# - T4: 65 TFLOP/s fp16 mixed precision, no bf16, PCIe Gen3 x16 32 GB/s (https://www.nvidia.com/en-us/data-center/tesla-t4/);
# - V100: 125 TFLOP/s fp16 tensor (SXM2), 112 (PCIe), 130 (V100S PCIe), no bf16; NVLink 2 300 GB/s (SXM2)
#   (https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf);
# - GeForce RTX 4090: 165.2 TFLOP/s bf16 and fp16 with fp32 accumulation, dense; PCIe Gen4, no NVLink (NVIDIA Ada
#   GPU architecture whitepaper, https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf);
# - between machines: HDR 200 Gb/s (25 GB/s) per GPU on a DGX A100
#   (https://docs.nvidia.com/dgx/dgxa100-user-guide/introduction-to-dgxa100.html), NDR 400 Gb/s (50 GB/s) on a
#   DGX H100/H200 (https://docs.nvidia.com/dgx/dgxh100-user-guide/introduction-to-dgxh100.html); other
#   Ampere/Ada data-centre cards as the A100, Hopper PCIe cards as the H100; None for the rest.
GPUS = (
    GpuSpec(("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "A100", "A100 SXM"), 312e12, 312e12, 300e9, 25e9),
    GpuSpec(("NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe", "A100 PCIe"), 312e12, 312e12, 32e9, 25e9),
    GpuSpec(("NVIDIA H100 80GB HBM3", "H100", "H100 SXM"), 989e12, 989e12, 450e9, 50e9),
    GpuSpec(("NVIDIA H100 PCIe", "H100 PCIe"), 756e12, 756e12, 64e9, 50e9),
    GpuSpec(("NVIDIA H100 NVL", "H100 NVL"), 835e12, 835e12, 64e9, 50e9),
    GpuSpec(("NVIDIA H200", "H200"), 989e12, 989e12, 450e9, 50e9),
    GpuSpec(("NVIDIA L4", "L4"), 121e12, 121e12, 32e9, 25e9),
    GpuSpec(("NVIDIA L40S", "L40S"), 362e12, 362e12, 32e9, 25e9),
    GpuSpec(("NVIDIA A10", "A10"), 125e12, 125e12, 32e9, None),
    GpuSpec(("NVIDIA A10G", "A10G"), 125e12, 125e12, 32e9, None),
    GpuSpec(("Tesla T4", "T4"), None, 65e12, 16e9, None),
    GpuSpec(("Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB", "V100", "V100 SXM2"), None, 125e12, 150e9, None),
    GpuSpec(("Tesla V100-PCIE-16GB", "Tesla V100-PCIE-32GB", "V100 PCIe"), None, 112e12, 16e9, None),
    GpuSpec(("Tesla V100S-PCIE-32GB", "V100S"), None, 130e12, 16e9, None),
    GpuSpec(("NVIDIA GeForce RTX 4090", "RTX 4090"), 165.2e12, 165.2e12, 32e9, None),
)
# Alpaca-like data: tokens per example (prompt template + instruction + response) and the share of them
# trained (the response). Assumptions, printed as such; measure your data with notebook 03.
TOKENS_PER_EXAMPLE = 150.0
TRAINED_FRACTION = 0.5
# per_device_train_batch_size auto keeps 10% of a device's memory free: the plan is an estimate, and memory the
# caching allocator reserves but cannot use (fragmentation) is not in it.
AUTO_MEMORY_MARGIN = 0.10
# auto on CPU considers micro-batches of at most 4 (`config.CPU_AUTO_MICRO_BATCH`): a CPU computes no faster on
# larger ones.


class PlanError(ValueError):
    """A plan that cannot be made as asked (a bad flag value, an unknown model); one line, no traceback."""


def normalise_gpu_name(name: str) -> str:
    """A device name made comparable: lower case, runs of spaces, "-" and "_" as one space, without a leading
    "NVIDIA" or "Tesla" ("NVIDIA A100-SXM4-80GB" -> "a100 sxm4 80gb")."""
    words = re.sub(r"[\s_-]+", " ", name).strip().lower().split()
    while words and words[0] in ("nvidia", "tesla"):
        words.pop(0)
    return " ".join(words)


_GPU_BY_NAME = {normalise_gpu_name(name): spec for spec in GPUS for name in spec.names}
_UNKNOWN_NOTED: set[str] = set()


def gpu_spec(device_name: str) -> GpuSpec | None:
    """The `GPUS` entry of exactly this device name (`torch.cuda.get_device_name`, or a short name such as
    "H100"), or None: never a match on part of the name."""
    return _GPU_BY_NAME.get(normalise_gpu_name(device_name))


def known_gpu_names() -> str:
    """The short names of the GPUs in `GPUS`, for messages."""
    return ", ".join(spec.names[-1] for spec in GPUS)


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from its exact name, or None (an unknown GPU, or one without bf16)."""
    spec = gpu_spec(device_name)
    return spec.bf16_flops if spec else None


def peak_fp16_flops(device_name: str) -> float | None:
    """Dense fp16 peak FLOP/s (fp32 accumulation) of a GPU from its exact name, or None (an unknown GPU)."""
    spec = gpu_spec(device_name)
    return spec.fp16_flops if spec else None


def note_unknown_gpu(device_name: str) -> None:
    """Say once per process and name that a GPU is not in `GPUS`, so its MFU is not reported."""
    if gpu_spec(device_name) is None and device_name not in _UNKNOWN_NOTED:
        _UNKNOWN_NOTED.add(device_name)
        print(f"note: GPU {device_name!r} is not in the plan's device table (alpaca_helpers/train/plan.py GPUS): "
              "no MFU is reported", flush=True)


def link_bandwidth(device_name: str, num_machines: int = 1) -> tuple[float, str] | None:
    """(bytes/s per GPU and direction, the link's name) of FSDP's collectives among GPUs of this exact name
    (`GPUS`): NVLink or PCIe on one machine, InfiniBand across machines (the slower link sets a ring's
    pace); None for an unknown GPU, or across machines where the card's network is not known."""
    spec = gpu_spec(device_name)
    if spec is None:
        return None
    if num_machines > 1:
        if spec.between is None:
            return None
        return spec.between, f"InfiniBand {spec.between * 8 / 1e9:.0f} Gb/s per GPU"
    return spec.link, ("PCIe" if spec.link < 100e9 else "NVLink") + f" {spec.link / 1e9:.0f} GB/s per direction"


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

    def with_vocab(self, rows: int) -> "ModelShape":
        """The same model with `rows` rows of token embeddings (and LM head): what a resize makes of it."""
        if rows == self.vocab:
            return self
        width = self.embedding // self.vocab
        root = tuple((rows, *s[1:]) if s[:1] == (self.vocab,) and len(s) == 2 and s[1] == width else s
                     for s in self.root_shapes)
        embedding, head = rows * width, rows * width if self.head else 0
        return replace(self, parameters=self.parameters + embedding - self.embedding + head - self.head,
                       embedding=embedding, head=head, vocab=rows, root_shapes=root)

    @property
    def layer_elements(self) -> int:
        return sum(math.prod(s) for s in self.layer_shapes)

    @property
    def root_elements(self) -> int:
        return sum(math.prod(s) for s in self.root_shapes)


def model_shape(model: nn.Module) -> ModelShape:
    """Count a model's parameters by decoder layer and the rest (the units `train_dist.shard_model` shards)."""
    from torch import nn

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
    """The `ModelShape` of a local folder or Hub name, from its config.json, with the embedding rows the run
    gives it (`trained_vocab`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        resolved, config = load_model_config(name_or_folder)
    except FileNotFoundError as e:
        shipped = SHIPPED_CONFIGS / f"{str(name_or_folder).replace('/', '-')}.json"
        if not shipped.is_file():
            raise PlanError(str(e)) from None
        values = json.loads(shipped.read_text())  # offline, a Hub model whose config.json the project ships
        resolved, config = str(shipped), AutoConfig.for_model(values.pop("model_type"), **values)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        shape = model_shape(model)
    except ValueError as e:  # not a causal LM architecture, or no repeated decoder layer
        raise PlanError(f"{name_or_folder}: cannot plan this model ({str(e).splitlines()[0]})") from None
    return shape.with_vocab(trained_vocab(shape.vocab, _tokenizer_or_none(resolved)))


def _tokenizer_or_none(resolved: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolved)
    except Exception:  # only config.json at hand (or no network): the plan assumes the worst case
        return None


def trained_vocab(rows: int, tokenizer: Any = None) -> int:
    """Embedding rows during training: grown by a pad token (to a multiple of 64) when the tokenizer has none,
    as `tokenize.ensure_pad_token` does; with no tokenizer (None), assumed so: an upper bound."""
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        return rows
    return resized_rows(rows, (len(tokenizer) if tokenizer is not None else rows) + 1)


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


@dataclass(frozen=True, kw_only=True)
class PlanSettings:
    """Every setting the memory plan needs besides the model's shape, checked when made (`PlanError`, one line).

    Made once: from a training config (`from_config`) or the plan command's flags (`settings_from_args`); a
    variant (another micro-batch, more GPUs) is `dataclasses.replace(settings, ...)`, checked again.
    """

    world_size: int  # processes over all machines
    gpu_memory_gb: float  # what one process may hold, GiB: its GPU's memory, or on CPU its share of the RAM
    global_batch_size: int
    model_max_length: int
    per_device: int | None = None  # the micro-batch; None: auto, `choose_micro_batch` picks it
    rows_per_example: int = 1  # rows of model_max_length an example is: 2 for a DPO pair (chosen and rejected)
    num_machines: int = 1
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_targets: str = "all-linear"
    lora_dropout: float = 0.05
    bf16: bool = True  # 2-byte compute (bf16, or fp16: `with_loss_scaler`); False: fp32
    sync_every_micro_batch: bool | None = None  # None: auto, `memory_plan` decides
    fsdp: str = "auto"  # as set (auto, full_shard, off): `memory_plan` decides for `world_size` as `check_run` does
    trained_fraction: float = TRAINED_FRACTION
    model: str = ""  # the model's name, for messages
    device: str = "gpu"  # "gpu", or "cpu": processes against RAM, no CUDA context

    def __post_init__(self) -> None:
        if self.device not in ("gpu", "cpu"):
            raise PlanError(f"device must be gpu or cpu, got {self.device!r}")
        if self.world_size < 1:
            raise PlanError(f"the number of GPUs must be >= 1, got {self.world_size}")
        if self.gpu_memory_gb <= 0:
            raise PlanError(f"gpu_memory_gb must be > 0, got {self.gpu_memory_gb}")
        if self.model_max_length < 1:
            raise PlanError(f"model_max_length must be >= 1, got {self.model_max_length}")
        if not 0 < self.trained_fraction <= 1:
            raise PlanError(f"trained_fraction must be in (0, 1], got {self.trained_fraction}")
        self.batch_split()  # auto (None) needs the global batch to split over the processes at 1 per device
        if self.lora and (self.world_size > 1 or self.cpu_offload or self.fsdp == "full_shard"):
            raise PlanError(f"lora runs on a single process without FSDP here, not {self.world_size} {self.unit}"
                            + (" with cpu_offload" if self.cpu_offload else "") + ": plan 1 GPU, or full fine-tuning")
        if self.world_size > 1 and self.fsdp == "off":
            raise PlanError("fsdp=off needs a single process: several processes always shard")

    @classmethod
    def from_config(cls, cfg: TrainConfig, world_size: int, *, gpu_memory_gb: float, per_device: int | None,
                    bf16: bool, num_machines: int = 1, device: str = "gpu") -> PlanSettings:
        """The settings of a run of `cfg` over `world_size` processes. The run's checks decide `per_device`
        (None: auto) and `bf16` (2-byte compute: bf16 or fp16)."""
        return cls(world_size=world_size, gpu_memory_gb=gpu_memory_gb, global_batch_size=cfg.global_batch_size,
                   model_max_length=cfg.model_max_length, per_device=per_device,
                   rows_per_example=LOSS_ROWS[cfg.loss], num_machines=num_machines,
                   activation_checkpointing=cfg.activation_checkpointing, cpu_offload=cfg.cpu_offload, lora=cfg.lora,
                   lora_r=cfg.lora_r, lora_targets=cfg.lora_target_modules, lora_dropout=cfg.lora_dropout, bf16=bf16,
                   sync_every_micro_batch=cfg.reduce_scatter_every_micro_batch, fsdp=cfg.fsdp,
                   model=cfg.model_name_or_path, device=device)

    @property
    def unit(self) -> str:
        """What the run's processes are, in words: GPUs, or CPU processes."""
        return "GPU(s)" if self.device == "gpu" else "process(es)"

    def batch_split(self) -> BatchSplit:
        """The global batch split over the processes (`config.plan_batch`; auto: at 1 per device)."""
        try:
            return plan_batch(self.global_batch_size, 1 if self.per_device is None else self.per_device,
                              self.world_size)
        except TrainConfigError as e:
            raise PlanError(str(e)) from None


def _setting(name: str) -> Any:
    """A plan's read-only view of one of its settings."""
    return property(lambda plan: getattr(plan.settings, name), doc=f"`PlanSettings.{name}`")


@dataclass
class Plan:
    """Per-device memory (GiB), whether it fits, and the run's shape. `components_gib` sums to `per_device_gb`."""

    settings: PlanSettings  # what the plan was made for (its micro-batch among them)
    accumulation: int
    mode: str  # "full, FSDP over N GPU(s)" (or "process(es)" on CPU), "full, one process without FSDP", "LoRA ..."
    sync_every_micro_batch: bool  # as decided (`settings.sync_every_micro_batch` auto: by the plan)
    parameters: int
    trainable_parameters: int
    components_gib: dict[str, float] = field(default_factory=dict)
    activations_other_gib: float = 0.0  # the activations with checkpointing flipped, for comparison
    cpu_memory_per_machine_gib: float = 0.0  # host RAM per machine: rank 0's fp32 copy while loading, offloaded state
    per_device_gb: float = 0.0  # GiB (2^30 bytes), as GPU memory sizes are
    fits: bool = False
    fsdp: bool = False
    sync_reason: str = ""
    weights_bytes: int = 0  # per rank, exact, for checks against a real run
    gradients_bytes: int = 0
    optimizer_bytes: int = 0
    accumulation_gradients_bytes: int = 0
    root_gradient_bytes: int = 0  # the root unit's unsharded gradients + their fp32 reduce-scatter buffer
    layer_gradient_bytes: int = 0  # the same for one decoder layer
    fp16: bool = False  # the 2-byte compute (`bf16` True) is fp16 with a loss scaler (`with_loss_scaler`)
    micro_batch_reason: str = ""  # per_device_train_batch_size auto: what was chosen and why (`choose_micro_batch`)

    model = _setting("model")
    world_size = _setting("world_size")
    num_machines = _setting("num_machines")
    gpu_memory_gb = _setting("gpu_memory_gb")
    per_device = _setting("per_device")
    global_batch_size = _setting("global_batch_size")
    model_max_length = _setting("model_max_length")
    bf16 = _setting("bf16")
    activation_checkpointing = _setting("activation_checkpointing")
    cpu_offload = _setting("cpu_offload")
    sync_setting = _setting("sync_every_micro_batch")  # as asked: True, False, or None (auto: the plan chose)
    device = _setting("device")
    unit = _setting("unit")

    def as_dict(self) -> dict[str, Any]:
        """The plan as one flat record (what `python -m alpaca_helpers.train.plan --json` prints)."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}


# The order of `Plan.as_dict`'s keys.
RECORD_FIELDS = (
    "model", "world_size", "num_machines", "gpu_memory_gb", "per_device", "accumulation", "global_batch_size",
    "model_max_length", "mode", "bf16", "activation_checkpointing", "cpu_offload", "sync_every_micro_batch",
    "parameters", "trainable_parameters", "components_gib", "activations_other_gib", "cpu_memory_per_machine_gib",
    "per_device_gb", "fits", "fsdp", "sync_setting", "sync_reason", "weights_bytes", "gradients_bytes",
    "optimizer_bytes", "accumulation_gradients_bytes", "root_gradient_bytes", "layer_gradient_bytes", "device",
    "fp16", "micro_batch_reason",
)


def memory_plan(shape: ModelShape, settings: PlanSettings) -> Plan:
    """What each device holds during a run of `alpaca_helpers.train` configured so (see the module docstring).

    `settings.device` "cpu" plans CPU processes against RAM (`gpu_memory_gb` is then each process's share of it):
    the same tensors, no CUDA context. The micro-batch must be set (auto is `choose_micro_batch`'s).

    `sync_every_micro_batch` None (auto) reduce-scatters once per step where the unsharded fp32 gradients fit
    beside the rest, else after every micro-batch; `sync_reason` says which and why.
    """
    if settings.per_device is None:
        raise PlanError("memory_plan needs a micro-batch (per_device); auto is choose_micro_batch's")
    asked = settings.sync_every_micro_batch
    if asked is not None:
        return replace(_memory_plan(shape, settings, asked),
                       sync_reason=f"set: reduce_scatter_every_micro_batch={str(asked).lower()}")
    once = _memory_plan(shape, settings, False)
    if not once.fsdp or once.accumulation == 1:
        reason = "no FSDP" if not once.fsdp else "one micro-batch per step"
        return replace(_memory_plan(shape, settings, True), sync_reason=f"auto: {reason}")
    kept = once.components_gib["accumulated unsharded gradients"]
    if once.fits:
        return replace(once, sync_reason=f"auto: the unsharded fp32 gradients ({kept:.1f} GiB) fit "
                                         f"({once.per_device_gb:.1f} of {settings.gpu_memory_gb:.3g} GiB), and one "
                                         f"reduce-scatter per step instead of {once.accumulation} moves less")
    every = _memory_plan(shape, settings, True)
    return replace(every, sync_reason=f"auto: keeping the unsharded fp32 gradients ({kept:.1f} GiB) would need "
                                      f"{once.per_device_gb:.1f} of {settings.gpu_memory_gb:.3g} GiB")


def _memory_plan(shape: ModelShape, s: PlanSettings, sync_every_micro_batch: bool) -> Plan:
    """`memory_plan` with the gradient sync decided."""
    batch = s.batch_split()
    use_fsdp = not s.lora and (s.world_size > 1 or s.cpu_offload or s.fsdp == "full_shard")
    c = 2 if s.bf16 else 4  # compute dtype bytes
    n = shape.parameters
    tensors = len(shape.shapes)
    comp: dict[str, float] = {}
    root_grads = layer_grads = 0
    if s.lora:
        adapted = lora_targets_in_layer(shape, s.lora_targets)
        trainable = shape.layers * sum(s.lora_r * (i + o) for _, i, o in adapted)
        adapters = trainable * 4
        weights = n * c + adapters  # the frozen base in the compute dtype (fp32 without bf16), fp32 adapters
        grads = adapters
        optim = 2 * adapters + 4 * 2 * shape.layers * len(adapted)  # moments, and a step per A and B tensor
        lora_in = sum(i for _, i, _ in adapted)
        working = 0.0
    else:
        trainable = n
        lora_in = 0
        held = shard_elements(shape.shapes, s.world_size) if use_fsdp else n
        weights, grads = held * 4, held * 4
        optim = 2 * held * 4 + 4 * tensors  # exp_avg, exp_avg_sq, and a float32 step per tensor
        if use_fsdp:  # gathered compute copies: the root unit, the current and the prefetched layer
            working = (shape.root_elements + 2 * shape.layer_elements) * c
            # backward: a unit's unsharded gradients (compute dtype) and the fp32 buffer they are copied into for
            # the reduce-scatter (padded to a multiple of the ranks), for the root unit and one layer at a time
            root_grads = (shape.root_elements * c
                          + shard_elements(list(shape.root_shapes), s.world_size) * s.world_size * 4)
            layer_grads = (shape.layer_elements * c
                           + shard_elements(list(shape.layer_shapes), s.world_size) * s.world_size * 4)
        else:  # autocast's bf16 copies of the weights used in matmuls (the embedding lookup is not one)
            working = (n - (shape.embedding if shape.head else 0)) * c if s.bf16 else 0
    accumulation_grads = n * 4 if (use_fsdp and not sync_every_micro_batch and batch.accumulation > 1) else 0
    tokens = batch.per_device * s.rows_per_example * s.model_max_length

    def activations(checkpointing: bool) -> float:
        per_token = activation_bytes_per_token(shape, c, checkpointing, lora_in, s.lora_r if s.lora else 0,
                                               s.lora_dropout > 0, len(adapted) if s.lora else 0)
        logits = s.trained_fraction * tokens * shape.vocab * (c + 4 + 4)  # logits, fp32 copy, log-softmax
        return tokens * per_token + logits

    on_gpu = not s.cpu_offload
    comp["weights"] = weights / GIB if on_gpu else 0.0
    comp["gradients"] = grads / GIB if on_gpu else 0.0
    comp["optimizer state"] = optim / GIB if on_gpu else 0.0
    comp["accumulated unsharded gradients"] = accumulation_grads / GIB
    comp["gathered / autocast weight copies"] = working / GIB
    comp["unsharded gradients + reduce-scatter buffers"] = (root_grads + layer_grads) / GIB
    comp["activations"] = activations(s.activation_checkpointing) / GIB
    comp["CUDA context and allocator slack"] = CUDA_OVERHEAD_GIB if s.device == "gpu" else 0.0
    total = sum(comp.values())
    per_machine = s.world_size // s.num_machines if s.world_size % s.num_machines == 0 else s.world_size
    # Host RAM per machine: rank 0 (one process per machine holds it) loads the full weights on CPU; with
    # cpu_offload the machine's ranks also keep their shards, gradients and AdamW state there.
    loading = n * (c if s.lora else 4)
    offloaded = (weights + grads + optim) * per_machine if s.cpu_offload else 0
    host = max(loading + weights * per_machine if s.cpu_offload else loading, offloaded)
    mode = "LoRA (frozen base, one process)" if s.lora else (
        f"full, FSDP over {s.world_size} {s.unit}" if use_fsdp else "full, one process without FSDP")
    return Plan(settings=s, accumulation=batch.accumulation, mode=mode, sync_every_micro_batch=sync_every_micro_batch,
                parameters=n, trainable_parameters=trainable,
                components_gib={k: round(v, 3) for k, v in comp.items()},
                activations_other_gib=round(activations(not s.activation_checkpointing) / GIB, 3),
                cpu_memory_per_machine_gib=round(host / GIB, 3),
                per_device_gb=round(total, 3), fits=total <= s.gpu_memory_gb, fsdp=use_fsdp,
                weights_bytes=int(weights), gradients_bytes=int(grads), optimizer_bytes=int(optim),
                accumulation_gradients_bytes=int(accumulation_grads), root_gradient_bytes=int(root_grads),
                layer_gradient_bytes=int(layer_grads))


def with_loss_scaler(plan: Plan) -> Plan:
    """An fp16 run's plan, from its 2-byte-compute plan (`bf16=True`): the same tensors plus the loss scaler's
    `LOSS_SCALER_BYTES` (below the plan's 1/1000 GiB rounding)."""
    return replace(plan, fp16=True, per_device_gb=round(plan.per_device_gb + LOSS_SCALER_BYTES / GIB, 3))


def compute_name(plan: Plan) -> str:
    """The plan's compute dtype in words: fp16, bf16 or fp32."""
    return "fp16" if plan.fp16 else "bf16" if plan.bf16 else "fp32"


def suggestions(shape: ModelShape, plan: Plan) -> list[dict[str, Any]]:
    """When `plan` does not fit: the changes that make it fit, one at a time, each with its per-device GiB.

    In order: activation checkpointing, a smaller micro-batch (the accumulation is re-derived), more GPUs,
    CPU offload, LoRA (one GPU); each a variant of the plan's own settings.
    """
    if plan.fits:
        return []
    base = plan.settings
    tries: list[tuple[str, dict[str, Any]]] = []
    if not base.activation_checkpointing:
        tries.append(("--activation_checkpointing true", {"activation_checkpointing": True}))
    for micro in MICRO_BATCH_OPTIONS:
        if micro < base.per_device and base.global_batch_size % (micro * base.world_size) == 0:
            tries.append((f"--per_device_train_batch_size {micro}", {"per_device": micro}))
    if not base.lora:
        processes = "GPUs" if base.device == "gpu" else "processes"
        for gpus in (2, 4, 8, 16, 32, 64):
            if gpus > base.world_size and base.global_batch_size % gpus == 0:
                tries.append((f"{gpus} {processes}", {"world_size": gpus, "num_machines": max(1, gpus // 8)}))
        if not base.cpu_offload:
            tries.append(("--fsdp full_shard --cpu_offload true", {"cpu_offload": True}))
        if base.world_size == 1:
            tries.append(("--lora true (configs/alpaca_7b_lora.yaml)",
                          {"lora": True, "per_device": min(base.per_device, 8)}))
    found, more_gpus = [], False
    for change, values in tries:
        if more_gpus and "world_size" in values:
            continue  # the fewest GPUs that fit is enough
        try:
            candidate = memory_plan(shape, replace(base, **values))
        except PlanError:
            continue
        if candidate.fits:
            more_gpus = more_gpus or "world_size" in values
            found.append({"change": change, "per_device_gb": candidate.per_device_gb,
                          "per_device": candidate.per_device, "accumulation": candidate.accumulation})
    return found


def largest_fitting_micro_batch(shape: ModelShape, settings: PlanSettings) -> Plan | None:
    """The plan of the largest micro-batch of `MICRO_BATCH_OPTIONS` (and `settings.per_device`, the largest tried)
    that fits and divides the global batch, or None when none does."""
    largest = settings.per_device
    for micro in sorted({largest, *(m for m in MICRO_BATCH_OPTIONS if m < largest)}, reverse=True):
        if settings.global_batch_size % (micro * settings.world_size) == 0:
            plan = memory_plan(shape, replace(settings, per_device=micro))
            if plan.fits:
                return plan
    return None


def choose_micro_batch(shape: ModelShape, settings: PlanSettings, *, link: tuple[float, str] | None = None,
                       largest: int | None = None, margin: float = AUTO_MEMORY_MARGIN) -> Plan:
    """`per_device_train_batch_size: auto`: of the micro-batches in `MICRO_BATCH_OPTIONS` (up to `largest`) that
    divide the global batch, the one whose plan fits with `margin` of the memory kept free and moves the least
    FSDP traffic per step (`communication_bytes`: each micro-batch all-gathers the weights twice, so fewer and
    larger micro-batches move fewer bytes); with equal traffic (one process, no FSDP) the larger. When none fits,
    the one that needs the least memory (its plan says it does not fit). `link`: the GPUs' (bytes/s, name), to
    give the traffic in seconds per step. `settings.per_device` is not read.

    The plan returned says in `micro_batch_reason` what was chosen and the runner-up, each with its memory and
    traffic."""
    world, global_batch = settings.world_size, settings.global_batch_size
    sizes = [m for m in MICRO_BATCH_OPTIONS if (largest is None or m <= largest) and global_batch % (m * world) == 0]
    if not sizes:  # the global batch does not split over the processes: the settings' one-line error
        return memory_plan(shape, replace(settings, per_device=1))
    plans = [memory_plan(shape, replace(settings, per_device=m)) for m in sizes]
    limit = settings.gpu_memory_gb * (1 - margin)
    fitting = sorted((p for p in plans if p.per_device_gb <= limit),
                     key=lambda p: (communication_bytes(p), -p.per_device))
    ranked = fitting + sorted((p for p in plans if p.per_device_gb > limit), key=lambda p: p.per_device_gb)
    chosen, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    return replace(chosen, micro_batch_reason=_micro_batch_reason(chosen, runner_up, limit, margin, link,
                                                                  bool(fitting), largest))


def _micro_batch_option(plan: Plan, link: tuple[float, str] | None) -> str:
    """A micro-batch's split, memory and FSDP traffic per step, in words."""
    text = f"{plan.per_device} × {plan.accumulation} accumulation: {plan.per_device_gb:.1f} GiB"
    if not plan.fsdp or plan.world_size == 1:
        return text + ", no FSDP traffic"
    traffic = communication_bytes(plan)
    seconds = f" ≈ {traffic / link[0]:.2f} s" if link else ""
    per = "GPU" if plan.device == "gpu" else "process"
    return text + f", {traffic / 1e9:.1f} GB FSDP traffic per {per} per step{seconds}"


def _micro_batch_reason(chosen: Plan, runner_up: Plan | None, limit: float, margin: float,
                        link: tuple[float, str] | None, any_fits: bool, largest: int | None) -> str:
    room = f"{limit:.1f} of {chosen.gpu_memory_gb:.3g} GiB ({margin:.0%} kept free)"
    upto = f" up to {largest}" if largest else ""
    sharded = chosen.fsdp and chosen.world_size > 1
    why = (f"none{upto} fits in {room}: the one that needs the least memory" if not any_fits
           else f"the least traffic of the micro-batches{upto} that fit in {room}" if sharded
           else f"the largest of the micro-batches{upto} that fit in {room}")
    text = f"micro-batch (per_device_train_batch_size auto): {_micro_batch_option(chosen, link)}"
    if runner_up is not None:
        over = "" if runner_up.per_device_gb <= limit else " (does not fit)"
        text += f"; runner-up {_micro_batch_option(runner_up, link)}{over}"
    seconds = f"; seconds at {link[1]}, nominal" if link and sharded else ""
    return f"{text}; chosen: {why}{seconds}"


def set_micro_batch_note(plan: Plan, auto: Plan, link: tuple[float, str] | None = None) -> str:
    """For a micro-batch given as a number: what auto (`choose_micro_batch`'s plan `auto`) would choose instead,
    with both figures; empty where auto chooses the same."""
    if auto.per_device == plan.per_device:
        return ""
    return (f"micro-batch {_micro_batch_option(plan, link)} as set; per_device_train_batch_size auto would choose "
            f"{_micro_batch_option(auto, link)}")


def refusal(plan: Plan, advice: list[dict[str, Any]]) -> str | None:
    """When `plan` does not fit its devices, one line: the planned figure, the devices' memory and the first
    change that makes it fit (`suggestions`); None when it fits."""
    if plan.fits:
        return None
    per = "GPU" if plan.device == "gpu" else "process"
    has = (f"each of the {plan.world_size} GPU(s) has {plan.gpu_memory_gb:.3g} GiB" if plan.device == "gpu"
           else f"each of the {plan.world_size} process(es) has {plan.gpu_memory_gb:.3g} GiB of this machine's RAM")
    first = (f"first suggestion: {advice[0]['change']} ({advice[0]['per_device_gb']:.1f} GiB per {per})" if advice
             else "no single change fits: combine them (e.g. more GPUs and activation checkpointing)")
    return (f"the memory plan needs {plan.per_device_gb:.1f} GiB per {per} but {has}: the run does not fit; {first}; "
            "ignore_plan=true starts it anyway")


def communication_bytes(plan: Plan) -> float:
    """Bytes each GPU sends per optimizer step in FSDP's ring collectives (and receives as many): per micro-batch
    an all-gather of the compute-dtype weights in forward and another in backward, and a reduce-scatter of the
    fp32 gradients at each sync; each moves (ranks - 1) / ranks of the whole tensor. 0 without FSDP or alone."""
    if not plan.fsdp or plan.world_size == 1:
        return 0.0
    share = (plan.world_size - 1) / plan.world_size
    gathers = 2 * plan.accumulation * plan.parameters * (2 if plan.bf16 else 4)
    syncs = plan.accumulation if plan.sync_every_micro_batch else 1
    return share * (gathers + syncs * plan.parameters * 4)


def explain_fsdp(shape: ModelShape, plan: Plan) -> str:
    """FSDP's full shard by decoder layer told with a plan's own numbers: what each rank holds, the all-gather
    before each layer, the reduce-scatter after its backward, and the bytes each rank sends per step."""
    if not plan.fsdp or plan.world_size < 2:
        raise PlanError(f"explain_fsdp needs a plan sharded over 2 or more processes, not {plan.mode}")
    ranks, unit = plan.world_size, plan.unit
    c = 2 if plan.bf16 else 4
    dtype = compute_name(plan)
    held = plan.weights_bytes // 4  # fp32 master weights: 4 bytes each
    full_gib = shape.parameters * 16 / GIB  # fp32 weights, gradients and two AdamW moments
    mine_gib = (plan.weights_bytes + plan.gradients_bytes + plan.optimizer_bytes) / GIB
    layer_mb = shape.layer_elements * c / 1e6
    shard_mb = shard_elements(list(shape.layer_shapes), ranks) * 4 / 1e6
    when = ("after every micro-batch" if plan.sync_every_micro_batch
            else f"once per step, after the last of {plan.accumulation} micro-batches") if plan.accumulation > 1 \
        else "once per step (one micro-batch per step)"
    return "\n".join([
        f"FSDP full shard over {ranks} {unit}: {shape.layers} decoder layers, each its own unit, and the root "
        "(embeddings, final norm, LM head).",
        f"- held: each rank keeps 1/{ranks} of every tensor (cut along its first dimension): "
        f"{held / 1e6:.1f}M of {shape.parameters / 1e6:.1f}M parameters, with their fp32 gradients and AdamW "
        f"moments: {mine_gib:.2f} GiB per rank instead of {full_gib:.2f} GiB in one process.",
        f"- forward: before each layer an all-gather collects its {shape.layer_elements / 1e6:.2f}M parameters "
        f"({layer_mb:.1f} MB in {dtype}) from the {ranks} shards; the layer runs, and the full copy is freed.",
        f"- backward: each layer is gathered again, its gradients computed, then a reduce-scatter sums them over the "
        f"ranks and leaves each rank only its own {shard_mb:.1f} MB (fp32), {when}.",
        "- optimizer: AdamW updates each rank's shard alone; no rank ever holds the whole model's state.",
        f"- traffic: about {communication_bytes(plan) / 1e6:,.0f} MB sent per rank per optimizer step "
        f"({plan.accumulation} micro-batch(es) × 2 all-gathers of the weights, plus the reduce-scatters).",
    ])


def flops_per_token(shape: ModelShape, seq_len: float, trained_fraction: float = TRAINED_FRACTION,
                    frozen: bool = False) -> float:
    """Training FLOPs per token: 6 per non-embedding parameter (4 with a frozen base: no weight gradients),
    attention scores (12 × layers × hidden × length), and the LM head only at trained positions."""
    per_param = 4 if frozen else 6
    return (per_param * shape.non_embedding + 12 * shape.layers * shape.hidden * seq_len
            + per_param * shape.hidden * shape.vocab * trained_fraction)


def time_plan(shape: ModelShape, plan: Plan, num_examples: int, num_train_epochs: float, mfu: float,
              gpu_name: str, tokens_per_example: float = TOKENS_PER_EXAMPLE,
              trained_fraction: float = TRAINED_FRACTION, link_bytes_per_s: float | None = None) -> dict[str, Any]:
    """Optimizer steps and hours of the run: compute at `mfu` of the GPU's bf16 peak (an assumption, not a
    measurement) and FSDP's communication (`communication_bytes`) at the link's nominal bandwidth
    (`link_bandwidth`, or `link_bytes_per_s`). `hours` adds the two (no overlap), `hours_overlapped` takes the
    larger per step (FSDP overlaps its collectives with compute where it can)."""
    if num_examples < 1 or num_train_epochs <= 0:
        raise PlanError("num_examples must be >= 1 and num_train_epochs > 0")
    if not 0 < mfu <= 1:
        raise PlanError(f"mfu is a fraction of the GPU's peak in (0, 1], got {mfu}")
    spec = gpu_spec(gpu_name)
    peak, peak_dtype = (spec.bf16_flops, "bf16") if spec and spec.bf16_flops else \
        (spec.fp16_flops, "fp16") if spec else (None, "")  # no bf16 (T4, V100): its fp16 peak
    if peak is None:
        raise PlanError(f"gpu {gpu_name!r}: peak FLOP/s unknown (the exact device name or a short name; "
                        f"known: {known_gpu_names()})")
    steps = int(num_examples // plan.global_batch_size * num_train_epochs)
    tokens = steps * plan.global_batch_size * tokens_per_example
    per_token = flops_per_token(shape, tokens_per_example, trained_fraction, frozen=plan.mode.startswith("LoRA"))
    tokens_per_s = mfu * peak * plan.world_size / per_token
    compute = tokens / tokens_per_s
    link = (link_bytes_per_s, f"{link_bytes_per_s / 1e9:g} GB/s per direction") if link_bytes_per_s else \
        link_bandwidth(gpu_name, plan.num_machines)
    per_step = communication_bytes(plan)
    if link is None:
        if per_step:
            raise PlanError(f"gpu {gpu_name!r}: link bandwidth unknown; pass --link_gb_s")
        link = (1.0, "none")
    communication = steps * per_step / link[0]
    return {"steps": steps, "tokens": tokens, "gpu": gpu_name, "peak_flops": peak, "peak_dtype": peak_dtype,
            "mfu": mfu, "tokens_per_example": tokens_per_example, "tokens_per_s": round(tokens_per_s),
            "compute_hours": round(compute / 3600, 2), "communication_gb_per_step": round(per_step / 1e9, 1),
            "link": link[1], "link_bytes_per_s": link[0], "communication_hours": round(communication / 3600, 2),
            "hours": round((compute + communication) / 3600, 2),
            "hours_overlapped": round(max(compute, communication) / 3600, 2)}


def checkpoint_disk(plan: Plan, save_total_limit: int, save_dtype_bytes: int = 4) -> dict[str, float]:
    """Disk for checkpoints (trainable fp32 weights + AdamW moments: 12 bytes per trainable parameter) and
    the final model folder; during a save one more checkpoint exists than are kept."""
    checkpoint = plan.trainable_parameters * 12 / GIB
    final = plan.parameters * save_dtype_bytes / GIB
    return {"checkpoint_gib": round(checkpoint, 2), "final_model_gib": round(final, 2),
            "peak_gib": round((max(save_total_limit, 0) + 1) * checkpoint + final, 2)}


def format_plan(plan: Plan, advice: list[dict[str, Any]], disk: dict[str, float],
                timing: dict[str, Any] | None) -> str:
    """The plan as a few readable lines (what `python -m alpaca_helpers.train.plan` prints)."""
    per = "device" if plan.device == "gpu" else "process"
    lines = [f"{plan.model}: {plan.parameters / 1e9:.2f}B parameters "
             f"({plan.trainable_parameters / 1e6:,.1f}M trained), "
             f"{plan.mode}; {compute_name(plan)} compute"
             + (" with a dynamic loss scale" if plan.fp16 else "") + ", "
             + ("fp32 adapters" if plan.mode.startswith("LoRA") else "fp32 master weights")
             + (", CPU offload" if plan.cpu_offload else ""),
             f"batch: {plan.global_batch_size} = {plan.per_device} per {per} "
             f"× {plan.accumulation} accumulation × "
             f"{plan.world_size} {plan.unit} ({plan.num_machines} machine(s)); micro-batch {plan.per_device} × "
             f"{plan.model_max_length} tokens"]
    if plan.micro_batch_reason:
        lines.append(plan.micro_batch_reason)
    if plan.fsdp and plan.accumulation > 1:
        when = ("every micro-batch" if plan.sync_every_micro_batch
                else f"once per step (after the last of {plan.accumulation} micro-batches)")
        lines.append(f"gradient sync: reduce-scatter {when} ({plan.sync_reason})")
    lines.append(f"per {per} (GiB):")
    for name, gib in plan.components_gib.items():
        if gib or name in {"weights", "gradients", "optimizer state", "activations"}:
            note = ""
            if name == "activations":
                note = (f"  (with activation checkpointing; {plan.activations_other_gib:.1f} without)"
                        if plan.activation_checkpointing else
                        f"  (without activation checkpointing; {plan.activations_other_gib:.1f} with)")
            if name == "accumulated unsharded gradients":
                note = "  (no reduce-scatter until the last micro-batch)"
            lines.append(f"  {name:<44} {gib:8.2f}{note}")
    verdict = "fits" if plan.fits else "does NOT fit"
    budget = "" if plan.device == "gpu" else " (its share of this machine's RAM)"
    lines.append(f"  {'total':<44} {plan.per_device_gb:8.2f} of {plan.gpu_memory_gb:.3g} GiB{budget}: {verdict}")
    lines.append(f"host memory per machine: {plan.cpu_memory_per_machine_gib:.1f} GiB (rank 0 loads the weights on CPU"
                 + ("; the offloaded shards, gradients and AdamW state)" if plan.cpu_offload else ")"))
    for a in advice:
        lines.append(f"  to fit: {a['change']} → {a['per_device_gb']:.1f} GiB per {per} "
                     f"({a['per_device']} per device × {a['accumulation']} accumulation)")
    if not plan.fits and not advice:
        lines.append("  to fit: no single change is enough; combine them (e.g. more GPUs and activation "
                     "checkpointing)")
    lines.append(f"disk: {disk['checkpoint_gib']:.1f} GiB ({disk['checkpoint_gib'] * GIB / 1e9:.1f} GB) per "
                 "checkpoint "
                 f"(fp32 weights + AdamW state), {disk['final_model_gib']:.1f} GiB final model, "
                 f"{disk['peak_gib']:.1f} GiB at peak")
    if timing:
        lines.append(f"time: {timing['steps']} steps, {timing['tokens'] / 1e6:.1f}M tokens (assumed "
                     f"{timing['tokens_per_example']:g} per example) ≈ {timing['hours']:.1f} h: compute "
                     f"{timing['compute_hours']:.1f} h at {timing['mfu']:.0%} MFU of {timing['gpu']} "
                     f"({timing['peak_flops'] / 1e12:.0f} TFLOP/s {timing.get('peak_dtype', 'bf16')})"
                     + (f" + communication {timing['communication_hours']:.1f} h "
                        f"({timing['communication_gb_per_step']:g} GB "
                        f"per GPU per step at {timing['link']}, nominal); {timing['hours_overlapped']:.1f} h if FSDP "
                        "overlaps them fully" if timing["communication_gb_per_step"] else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m alpaca_helpers.train.plan", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF folder or Hub name (only config.json is read); default: --config's model, "
                                   "or the embedded default model without --config")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per machine")
    p.add_argument("--num_machines", type=int, default=1)
    p.add_argument("--gpu_memory_gb", type=float, default=80.0, help="memory of one GPU, GiB")
    p.add_argument("--gpu", default="A100", help="GPU type for the time projection (A100, H100, H100 PCIe, H200, ...)")
    p.add_argument("--config", help="a training preset (path or name in configs/); default: alpaca_7b or, "
                                    "with --lora true, alpaca_7b_lora")
    p.add_argument("--per_device_train_batch_size", type=_number_or_auto,
                   help="a number, or auto: the plan chooses (the presets' default for GPUs; see choose_micro_batch)")
    for name in ("model_max_length", "global_batch_size"):
        p.add_argument(f"--{name}", type=int)
    for name in ("activation_checkpointing", "cpu_offload", "lora"):
        p.add_argument(f"--{name}", choices=["true", "false"])
    p.add_argument("--bf16", choices=["true", "false"], default="true", help="bf16 compute (a GPU run)")
    p.add_argument("--sync_every_micro_batch", choices=["true", "false", "auto"], default="auto",
                   help="reduce-scatter gradients at every micro-batch (false: an unsharded fp32 gradient per rank; "
                        "auto: false where that fits)")
    p.add_argument("--link_gb_s", type=float,
                   help="GPU link bandwidth per direction, GB/s (default: the GPU's, plan.GPUS)")
    p.add_argument("--num_examples", type=int, default=52_002)
    p.add_argument("--num_train_epochs", type=float, help="default: the preset's")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation")
    p.add_argument("--tokens_per_example", type=float, default=TOKENS_PER_EXAMPLE)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _number_or_auto(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or auto, not {text!r}") from None


_FLAG = {"true": True, "false": False, "auto": None, None: None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training preset the plan command's flags name, with the flags' settings in it (`model_name_or_path`:
    the model planned; `reduce_scatter_every_micro_batch`: `--sync_every_micro_batch`)."""
    if args.gpus < 1 or args.num_machines < 1:
        raise PlanError(f"--gpus and --num_machines must be >= 1, got {args.gpus} and {args.num_machines}")
    lora = _FLAG[args.lora]
    try:
        cfg = make_config(**load_preset(args.config or ("alpaca_7b_lora" if lora else "alpaca_7b")))
    except TrainConfigError as e:
        raise PlanError(str(e)) from None
    values = {k: v for k, v in {"per_device_train_batch_size": args.per_device_train_batch_size,
                                "model_max_length": args.model_max_length, "global_batch_size": args.global_batch_size,
                                "activation_checkpointing": _FLAG[args.activation_checkpointing],
                                "cpu_offload": _FLAG[args.cpu_offload], "lora": lora}.items() if v is not None}
    if values.get("per_device_train_batch_size") == "auto":
        values["per_device_train_batch_size"] = None
    cfg = replace(cfg, **values)
    for name in ("per_device_train_batch_size", "model_max_length", "global_batch_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise PlanError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    model = args.model or (cfg.model_name_or_path if args.config else "default")
    return replace(cfg, model_name_or_path=model,
                   reduce_scatter_every_micro_batch=_FLAG[args.sync_every_micro_batch])


def settings_from_args(args: argparse.Namespace, cfg: TrainConfig) -> PlanSettings:
    """The plan's settings from the plan command's flags and their config (`config_from_args`)."""
    return PlanSettings.from_config(cfg, args.gpus * args.num_machines, gpu_memory_gb=args.gpu_memory_gb,
                                    per_device=cfg.per_device_train_batch_size, bf16=_FLAG[args.bf16],
                                    num_machines=args.num_machines)


def plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The whole plan (memory, suggestions, disk, time) for the plan command's parsed flags."""
    cfg = config_from_args(args)
    shape = load_model_shape(cfg.model_name_or_path)
    settings = settings_from_args(args, cfg)
    link = (args.link_gb_s * 1e9, f"{args.link_gb_s:g} GB/s per direction") if args.link_gb_s else \
        link_bandwidth(args.gpu, args.num_machines)
    if settings.per_device is None:
        plan = choose_micro_batch(shape, settings, link=link)
    else:  # a number given wins; the plan says what auto would choose instead
        plan = memory_plan(shape, settings)
        auto = choose_micro_batch(shape, settings, link=link)
        plan = replace(plan, micro_batch_reason=set_micro_batch_note(plan, auto, link))
    advice = suggestions(shape, plan)
    disk = checkpoint_disk(plan, cfg.save_total_limit)
    epochs = args.num_train_epochs if args.num_train_epochs is not None else cfg.num_train_epochs
    timing = time_plan(shape, plan, args.num_examples, epochs, args.mfu, args.gpu, args.tokens_per_example,
                       link_bytes_per_s=args.link_gb_s * 1e9 if args.link_gb_s else None)
    return {"plan": plan, "suggestions": advice, "disk": disk, "time": timing}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = plan_from_args(args)
    except (PlanError, TrainConfigError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    plan = result["plan"]
    if args.json:
        print(json.dumps({**plan.as_dict(), "suggestions": result["suggestions"], "disk": result["disk"],
                          "time": result["time"]}))
    else:
        print(format_plan(plan, result["suggestions"], result["disk"], result["time"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
