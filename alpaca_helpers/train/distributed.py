"""The distributed side of training: process group, FSDP2 sharding, checkpoints and the final save.

Sharding uses PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) directly rather than accelerate's
FSDP plugin, because the plugin only engages on accelerators while FSDP2 also runs on CPU with gloo:
the sharded path is the same code on a laptop, in CI and on an 8-GPU node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import atomic_folder, atomic_write_text

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
STATE_FILE = "trainer_state.json"  # written last: a checkpoint folder without it is incomplete


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run (set by `accelerate launch` / torchrun; 1 process otherwise)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env(force_cpu: bool = False) -> DistEnv:
    """Read rank and world size from the launcher's environment and pick this process's device
    (CPU when forced, when `accelerate launch --cpu` says so, or without CUDA)."""
    import torch

    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    force_cpu = force_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    if torch.cuda.is_available() and not force_cpu:
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(rank, local_rank, world, device)


# Ranks 1..N wait in their first collective while rank 0 alone loads (or downloads) the weights, and in
# the final barrier while it writes the fp32 folder (27 GB for LLaMA-7B): NCCL's 10-minute default is short.
# The process group starts with this long timeout; `collective_phase` lowers it for training steps.
DEFAULT_TIMEOUT_MINUTES = 120.0


def process_group_args(env: DistEnv, cpu_offload: bool = False,
                       minutes: float = DEFAULT_TIMEOUT_MINUTES) -> dict[str, Any]:
    """Keyword arguments of `init_process_group` for this process.

    GPUs: nccl bound to this process's device (`device_id`); with `cpu_offload` also gloo for the CPU
    tensors (the offloaded gradients' clip-norm all-reduce has no NCCL path: pytorch/pytorch#148532).
    CPU: gloo. The long timeout (training's `dist_timeout_minutes`, checked > 0 by `check_run`): start-up
    and loading; training steps then run under the short one (`collective_phase`).
    """
    kwargs: dict[str, Any] = {"rank": env.rank, "world_size": env.world_size,
                              "timeout": timedelta(minutes=minutes)}
    if env.device.type == "cuda":
        kwargs["backend"] = "cuda:nccl,cpu:gloo" if cpu_offload else "nccl"
        kwargs["device_id"] = env.device
    else:
        kwargs["backend"] = "gloo"
    return kwargs


def init_distributed(env: DistEnv, cpu_offload: bool = False, minutes: float = DEFAULT_TIMEOUT_MINUTES) -> None:
    """Start the process group (`process_group_args`); a lone process gets a 1-rank group."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    args = process_group_args(env, cpu_offload, minutes)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if "MASTER_ADDR" not in os.environ:  # started without a launcher
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(**args)


class RankTimeoutError(RuntimeError):
    """A collective waited longer than its phase's limit: another rank stopped answering (hung or dead)."""


def set_collective_timeout(minutes: float) -> None:
    """Every later collective, in every process group (NCCL and gloo alike), times out after `minutes`.

    Collectives already started keep the timeout they started with: callers lower it only after a barrier
    (`collective_phase`), so no rank waits under the short limit for a rank still working alone.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    from torch.distributed.distributed_c10d import _set_pg_timeout, _world

    # FSDP's 1-D mesh reuses the default group, but a gloo run on a machine with CUDA gets its own group.
    for group in list(_world.pg_map):
        _set_pg_timeout(timedelta(minutes=minutes), group)


def _is_timeout(error: BaseException) -> bool:
    """A collective's timeout, as gloo raises it (NCCL's watchdog ends the process itself)."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("timed out" in text or "timeout" in text)


@contextmanager
def collective_phase(what: str, minutes: float, setting: str, rank: int,
                     barrier_after: bool = False) -> Iterator[None]:
    """Run a phase of training with its collectives limited to `minutes` (the `setting`'s value).

    A collective that waits longer ends the phase with a one-line `RankTimeoutError` naming the phase, this
    rank and the setting, and no further collective (the launcher stops the other ranks). `barrier_after`
    (long phases, where one rank works alone): every rank leaves together, under the long limit, before
    any lowers it for the next phase.
    """
    import torch.distributed as dist

    set_collective_timeout(minutes)
    try:
        yield
        if barrier_after:
            barrier()
    except RuntimeError as e:
        if isinstance(e, RankTimeoutError) or not dist.is_initialized() or not _is_timeout(e):
            raise
        raise RankTimeoutError(f"rank {rank} waited more than {minutes:g} min for the other ranks during {what} "
                               f"({setting}): a rank stopped answering") from e


def close_process_group() -> None:
    """Destroy the process group (after a clean run only: see `recipe.train`)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all processes (identity for a single process)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.tolist()


def per_rank(value: float, rank: int, world_size: int, device: torch.device) -> list[float]:
    """Every process's `value`, in rank order, on every process (collective)."""
    values = [0.0] * world_size
    values[rank] = float(value)
    return all_reduce_sum(values, device)


def find_layer_class(model: nn.Module, name: str | None = None) -> type[nn.Module]:
    """The decoder-layer class to shard as a unit.

    With `name`, it must be the class name of a module inside `model` (a wrong name is an error listing
    the classes that exist: in the original recipe it silently made FSDP wrap nothing). Without it, the
    model's `_no_split_modules` names it, or else the class repeated in the model's largest ModuleList.
    """
    from torch import nn

    classes = {type(m).__name__: type(m) for m in model.modules()}
    if name:
        if name not in classes:
            raise ValueError(f"layer class {name!r} is not in this model; its module classes are: "
                             f"{', '.join(sorted(classes))}")
        return classes[name]
    for candidate in sorted(getattr(model, "_no_split_modules", None) or []):
        if candidate in classes:
            return classes[candidate]
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if lists:
        biggest = max(lists, key=len)
        kinds = {type(m) for m in biggest}
        if len(kinds) == 1:
            return kinds.pop()
    raise ValueError("cannot tell this model's decoder-layer class: pass --fsdp_transformer_layer_cls_to_wrap "
                     f"(module classes: {', '.join(sorted(classes))})")


def shard_model(model: nn.Module, layer_cls: type[nn.Module], device: torch.device, world_size: int,
                bf16: bool, cpu_offload: bool, fp16: bool = False) -> int:
    """FSDP2 full shard: every `layer_cls` module is a unit, then the root (embeddings, norm, head).

    Parameters stay fp32 (the optimizer's master weights); with `bf16` (or `fp16`, loss-scaled by the recipe)
    they are gathered and computed in bf16 (fp16) and gradients are reduced in fp32. Returns the number of
    layer units.
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    half = torch.bfloat16 if bf16 else torch.float16 if fp16 else None
    mp = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32) if half is not None \
        else MixedPrecisionPolicy()
    # Pinned host memory speeds the copies to a GPU; without CUDA there is nothing to pin for.
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    units = [m for m in model.modules() if isinstance(m, layer_cls)]
    if not units:
        raise ValueError(f"no {layer_cls.__name__} module in the model")
    for layer in units:
        fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    return len(units)


def load_model_for_sharding(model_path: str, dtype: torch.dtype, is_main: bool) -> nn.Module:
    """Rank 0 loads the weights (on CPU); every other rank builds a weightless skeleton on the meta device.

    The node then holds one full copy of the weights instead of one per rank (8 × 28 GB for LLaMA-7B in
    fp32); `broadcast_weights` fills the other ranks' shards after `shard_model`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if is_main:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), dtype=dtype)


def broadcast_weights(model: nn.Module, full_state: dict[str, torch.Tensor], device: torch.device,
                      is_main: bool, cpu_offload: bool = False) -> None:
    """After sharding: give each rank its shard of rank 0's `full_state` (empty on other ranks), and
    rank 0's buffers (such as rotary frequencies, which no state dict carries). Collective.

    With `cpu_offload` the other ranks' shards are made in CPU memory (where the offloaded shards live; the
    broadcast then runs over the gloo part of the process group) and their buffers on `device`.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not is_main:  # real, uninitialised storage for the meta skeleton's shards
        model.to_empty(device=torch.device("cpu") if cpu_offload else device)
        if cpu_offload:
            for module in model.modules():  # as on rank 0, where fully_shard moved them to the device
                for name, buffer in list(module._buffers.items()):
                    if buffer is not None:
                        module._buffers[name] = buffer.to(device)
    set_model_state_dict(model, full_state if is_main else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights gathered on rank 0 in CPU memory (empty dict on other ranks)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized():
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (lm_head = embed_tokens) are stored once, as `save_pretrained` would.
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            state.pop(name, None)
        seen.add(id(param))
    return state


def save_hf_folder(model: nn.Module, tokenizer: Any, folder: Path, dtype: torch.dtype, is_main: bool) -> Path | None:
    """Write a plain Hugging Face folder (safetensors, config, tokenizer, generation config) from rank 0.

    Every rank must call this (the gather is collective). The folder appears atomically.
    """
    state = full_state_dict(model)
    if not is_main:
        barrier()
        return None
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.config.use_cache = True
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        # save_pretrained writes the live (fp32) parameters' dtype; config.json must name the saved weights'
        # dtype, or `dtype="auto"` loads bf16 weights at twice the memory.
        model.config.dtype = dtype
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    barrier()
    return folder


# --- checkpoints -------------------------------------------------------------------------------------


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` as (step, path), oldest first."""
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _rng_state() -> dict[str, torch.Tensor]:
    import torch

    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _frozen_left_out(strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights (a LoRA run's base) are the same as at the start: checkpoints carry what trains.
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer_state: dict[str, Any], rank: int, keep_last: int) -> Path:
    """Save model, optimizer, scheduler, step and RNG state as `root/checkpoint-<step>`, atomically.

    Everything is written into a hidden temporary folder; rank 0 renames it into place only after every
    rank has finished, so a kill during a save leaves the previous checkpoint as the latest. Model and
    optimizer go through torch.distributed.checkpoint (each rank writes its own shards). Keeps the last
    `keep_last` checkpoints.
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".{final.name}.tmp"
    if rank == 0:
        for stale in root.glob(f".{CHECKPOINT_PREFIX}*.tmp"):  # left by an interrupted save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_frozen_left_out())
    with warnings.catch_warnings():  # a lone process saves without a process group, as intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "model_optim"))
    save_file(_rng_state(), str(tmp / f"rng_rank{rank}.safetensors"))
    barrier()
    if rank == 0:
        atomic_write_text(tmp / "scheduler.json", json.dumps(scheduler.state_dict()))
        atomic_write_text(tmp / STATE_FILE, json.dumps({**trainer_state, "step": step}, indent=2, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    rank: int) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote (in place) and return the trainer state (with `step`)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_frozen_left_out())
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path / "model_optim"))
    # strict=False only lets the frozen weights be absent: dcp.load above already failed on any missing
    # trainable key, since the template it filled holds exactly those.
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_frozen_left_out(strict=False))
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    rng_file = path / f"rng_rank{rank}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / STATE_FILE).read_text())
