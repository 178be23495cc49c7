"""Which float precision a model computes in: the one decision behind every model load and training run.

    choice = inference_choice("cpu")        # generation, the teacher server, agreement, the judge
    print(choice.line("inference"))         # inference: bf16 (auto: this CPU has native bf16 ... avx512_bf16)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=choice.dtype)

The rule: bf16 where the device has native bf16 matrix instructions, fp32 elsewhere.
- CPU: x86's AVX512-BF16 or AMX-BF16, as torch's CPU backend reports them (`torch.cpu.get_capabilities()`,
  the cpuinfo library torch dispatches with). Without them torch's bf16 matmuls are emulated and slower
  than fp32. Measured on the course's 2-core AMD EPYC (avx512_bf16): training steps 2.3x, forward 2.8x,
  greedy decoding 1.55x faster in bf16 (issue 23). Other CPUs (ARM's BF16 extension included) stay fp32
  until someone measures them.
- GPU: compute capability 8.0 or newer (A100, H100, ...), read from the process's own device's properties
  (nothing is allocated, no context is opened on another GPU). `torch.cuda.is_bf16_supported()` is not
  used: it defaults to counting emulated bf16 (True on V100 and T4) and allocates on the current device.
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


class PrecisionError(ValueError):
    """A precision setting that cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class NativeBf16:
    """Whether a device computes bf16 matmuls natively, and why we think so."""

    available: bool
    reason: str


@dataclass(frozen=True)
class Bf16Choice:
    """The precision chosen for one model load or training run, with its reason (one line)."""

    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def dtype(self) -> Any:
        """The torch dtype of the choice (bfloat16 or float32)."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def dtype_name(self) -> str:
        """The dtype as `transformers serve --dtype` and `getattr(torch, ...)` spell it."""
        return "bfloat16" if self.bf16 else "float32"

    def line(self, what: str) -> str:
        """`<what>: bf16|fp32 (<reason>)`, the one line that says what was chosen and why."""
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


def inference_choice(device: Any = "cpu") -> Bf16Choice:
    """The dtype a model is loaded in for inference on `device`: the `auto` rule."""
    kind = device if isinstance(device, str) else device.type
    return choose_bf16(None, native_bf16(device), on_gpu=kind.startswith("cuda"))
