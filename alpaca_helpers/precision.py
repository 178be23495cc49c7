"""Which float precision a model computes in: the one decision behind every model load and training run.

    choice = inference_choice("cpu")        # generation, the teacher server, agreement, the judge
    print(choice.line("inference"))         # inference: bf16 (auto: this CPU has native bf16 ... avx512_bf16)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=choice.dtype)

The rule: bf16 where the device has native bf16 matrix instructions, fp32 elsewhere; for training only, fp16
with a dynamic loss scale on GPUs that have fp16 tensor cores but no bf16 (`choose_training_precision`).
- CPU: x86's AVX512-BF16 or AMX-BF16, as torch's CPU backend reports them (`torch.cpu.get_capabilities()`,
  the cpuinfo library torch dispatches with). Without them torch's bf16 matmuls are emulated and slower
  than fp32. Measured on the course's 2-core AMD EPYC (avx512_bf16): training steps 2.3x, forward 2.8x,
  greedy decoding 1.55x faster in bf16 (issue 23). Other CPUs (ARM's BF16 extension included) stay fp32
  until someone measures them.
- GPU: compute capability 8.0 or newer (A100, H100, ...), read from the process's own device's properties
  (nothing is allocated, no context is opened on another GPU). `torch.cuda.is_bf16_supported()` is not
  used: it defaults to counting emulated bf16 (True on V100 and T4) and allocates on the current device.
- GPU of compute capability 7.x (V100, T4: the GPUs of Colab and Kaggle): training computes in fp16 with a
  dynamic loss scale (`torch.amp.GradScaler`), as alpaca-lora ran, to use their fp16 tensor cores; fp32
  master weights and optimizer state stay. A step whose gradients overflow is skipped and logged. Inference
  stays fp32 there: fp16 weights of a model trained in bf16 can overflow fp16's range (65504) in the forward,
  with no scaler to notice.
The decision is read from the hardware, not from a start-up timing probe: a probe would flip between runs
on a machine shared with other jobs, and the same machine must make the same choice every time.

`ALPACA_BF16=false` in the environment treats the machine as having no native bf16: every `auto` becomes
fp32, in training (`bf16: auto`), in every model load and in the teacher server. That is how a whole
course runs in fp32 for comparison (`ALPACA_BF16=false make course`); an explicit `bf16: true` still wins.

Training is mixed precision (fp32 master weights and optimizer state, bf16 compute); inference loads the
weights in the chosen dtype.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FORCE_ENV = "ALPACA_BF16"
# torch.cpu.get_capabilities() keys of x86 instructions that compute bf16 matmuls natively
CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16")
MIN_GPU_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bf16 tensor cores
MIN_FP16_GPU_CAPABILITY = (7, 0)  # Volta: the first NVIDIA GPUs with fp16 tensor cores (V100; T4 is 7.5)


class PrecisionError(ValueError):
    """A precision setting that cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class NativeBf16:
    """Whether a device computes bf16 matmuls natively, and why we think so; `fp16`: it has fp16 tensor cores
    but no native bf16 (GPUs of compute capability 7.x), where training takes fp16 with a loss scale."""

    available: bool
    reason: str
    fp16: bool = False


@dataclass(frozen=True)
class Bf16Choice:
    """The precision chosen for one model load or training run, with its reason (one line). `fp16` (training
    only): fp16 compute with a dynamic loss scale."""

    bf16: bool
    reason: str
    fp16: bool = False

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"

    @property
    def dtype(self) -> Any:
        """The torch dtype of the choice (bfloat16, float16 or float32)."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32

    @property
    def dtype_name(self) -> str:
        """The dtype as `transformers serve --dtype` and `getattr(torch, ...)` spell it."""
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"

    def line(self, what: str) -> str:
        """`<what>: bf16|fp16|fp32 (<reason>)`, the one line that says what was chosen and why."""
        return f"{what}: {self.name} ({self.reason})"


def forced_off(environ: Mapping[str, str] | None = None) -> bool:
    """True when `ALPACA_BF16` says false (no native bf16 assumed); unset, empty or `auto` is False."""
    value = (os.environ if environ is None else environ).get(FORCE_ENV, "").strip().lower()
    if value in {"", "auto"}:
        return False
    if value in {"0", "false", "no", "off"}:
        return True
    raise PrecisionError(f"{FORCE_ENV}={value!r}: expected auto or false (unset = auto)")


def cpu_native_bf16(capabilities: Mapping[str, Any] | None = None) -> NativeBf16:
    """Native bf16 on this CPU, from torch's capability report (or the `capabilities` mapping given)."""
    if capabilities is None:
        import torch

        capabilities = torch.cpu.get_capabilities()
    found = [name for name in CPU_BF16_FEATURES if capabilities.get(name)]
    if found:
        return NativeBf16(True, f"this CPU has native bf16 matrix instructions: {', '.join(found)}")
    return NativeBf16(False, "this CPU has no avx512_bf16 or amx_bf16: bf16 would be emulated, slower than fp32")


def gpu_native_bf16(device: Any) -> NativeBf16:
    """Native bf16 on a CUDA device: compute capability >= 8.0, read from the device's properties (no
    allocation). Call it after `torch.cuda.set_device`, with the process's own device."""
    import torch

    if not torch.cuda.is_available():
        return NativeBf16(False, "no CUDA device is visible")
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if (major, minor) >= MIN_GPU_CAPABILITY:
        return NativeBf16(True, f"{name} has compute capability {major}.{minor}, bf16 tensor cores")
    if (major, minor) >= MIN_FP16_GPU_CAPABILITY:
        return NativeBf16(False, f"{name} has compute capability {major}.{minor} < 8.0: bf16 only emulated, "
                                 "fp16 tensor cores", fp16=True)
    return NativeBf16(False, f"{name} has compute capability {major}.{minor} < 8.0: bf16 only emulated")


def native_bf16(device: Any = "cpu") -> NativeBf16:
    """Native bf16 on `device` ("cpu", "cuda", "cuda:1" or a torch.device), unless `ALPACA_BF16=false`."""
    if forced_off():
        return NativeBf16(False, f"{FORCE_ENV}=false: treated as a machine without native bf16")
    kind = device if isinstance(device, str) else device.type
    return gpu_native_bf16(device) if kind.startswith("cuda") else cpu_native_bf16()


def choose_bf16(setting: bool | None, native: NativeBf16, on_gpu: bool = False) -> Bf16Choice:
    """bf16 or fp32 for a run: `setting` true/false as given, None (auto) where `native` says so.

    Raises PrecisionError for bf16=true on a GPU without bf16 (on CPU it runs, emulated and slow).
    """
    if setting is None:
        return Bf16Choice(native.available, f"auto: {native.reason}")
    if not setting:
        return Bf16Choice(False, "bf16=false")
    if native.available:
        return Bf16Choice(True, "bf16=true")
    if on_gpu:
        raise PrecisionError("bf16=true: this GPU has no bf16 support; use bf16=false (fp32) or auto")
    return Bf16Choice(True, f"bf16=true although {native.reason}")


def choose_training_precision(bf16: bool | None, fp16: bool | None, native: NativeBf16,
                              on_gpu: bool = False) -> Bf16Choice:
    """bf16, fp16 or fp32 for a training run: `choose_bf16` for bf16, then fp16 where `fp16` is true, or where
    both are auto, bf16 stays off and the GPU has fp16 tensor cores (`native.fp16`: compute capability 7.x).

    Raises PrecisionError for bf16=true with fp16=true. fp16=true runs on any device (on a CPU slowly: how the
    tests show it); bf16=false alone is always the fp32 run.
    """
    if bf16 and fp16:
        raise PrecisionError("bf16=true and fp16=true: choose one "
                             "(fp16 is for GPUs without bf16, such as T4 and V100)")
    if fp16:
        return Bf16Choice(False, "fp16=true", fp16=True)
    choice = choose_bf16(bf16, native, on_gpu)
    if bf16 is None and fp16 is None and not choice.bf16 and native.fp16:
        return Bf16Choice(False, f"auto: {native.reason}: fp16 with a dynamic loss scale", fp16=True)
    return choice


def inference_choice(device: Any = "cpu") -> Bf16Choice:
    """The dtype a model is loaded in for inference on `device`: the `auto` rule (bf16 or fp32, never fp16)."""
    kind = device if isinstance(device, str) else device.type
    return choose_bf16(None, native_bf16(device), on_gpu=kind.startswith("cuda"))
