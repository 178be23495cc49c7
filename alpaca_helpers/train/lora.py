"""LoRA (peft) for a single-process run: adapters on the frozen base, then merged into a plain folder.

alpaca-lora's recipe in our loop: the base weights stay frozen (in bf16 on a GPU, so LLaMA-7B fits one
80 GB card with room for activations), small low-rank adapters train in fp32, and at the end they are
merged, in fp32, into the base weights so that the saved model is an ordinary Hugging Face folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import atomic_folder
from .config import TrainConfig, TrainConfigError

if TYPE_CHECKING:
    from torch import nn

ADAPTER_DIR = "adapter"


def target_modules(spec: str) -> str | list[str]:
    """`all-linear` as is, else a comma-separated list of module names (`q_proj,v_proj`)."""
    spec = spec.strip()
    return spec if spec == "all-linear" else [name.strip() for name in spec.split(",") if name.strip()]


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct short names of the model's linear layers (what `lora_target_modules` may name)."""
    from torch import nn

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def apply_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Wrap `model` with LoRA adapters as configured; only the adapters train.

    A target name that matches no layer is an error naming the linear layers that exist.
    """
    from peft import LoraConfig, get_peft_model

    targets = target_modules(cfg.lora_target_modules)
    if isinstance(targets, list):
        known = linear_module_names(model)
        missing = [t for t in targets if t not in known]
        if missing or not targets:
            raise TrainConfigError(f"lora_target_modules {missing or targets} not in this model; its linear "
                                   f"layers are {known} (or use all-linear)")
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    # autocast_adapter_dtype keeps the adapters in fp32 when the frozen base is bf16
    return get_peft_model(model, config, autocast_adapter_dtype=True)


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter_and_merge(model: Any, out: Path) -> nn.Module:
    """Save the adapters alone (`out/adapter`, safetensors) and return the base model with them merged in.

    The merge happens in fp32 on the CPU: peft adds `scale * B @ A` in place into the base weights' dtype,
    and into a bf16 base that rounds away most of a small fine-tune (peft#1388), which a later upcast to
    fp32 cannot bring back. The CPU holds the fp32 copy (27 GB for LLaMA-7B) where a small GPU could not.
    """
    import torch

    with atomic_folder(out / ADAPTER_DIR) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    model = model.to(device="cpu", dtype=torch.float32)
    return model.merge_and_unload()
