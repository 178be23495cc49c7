"""LoRA on a bf16 base merges in fp32 (peft merges in place into the base dtype: peft#1388).

The live model is a bf16 base with fp32 adapters, as a GPU LoRA run trains it. Its exact function is
that model evaluated in fp32 (bf16 values are exact in fp32). Merged in fp32, the saved weights give
those logits to ~1e-6; merged in bf16, the rounding of `W + scale * B @ A` shows at ~1e-3.
"""

from __future__ import annotations

import copy

import torch
from test_train import make_tiny_llama
from transformers import AutoModelForCausalLM

from alpaca_helpers.train.config import make_config
from alpaca_helpers.train.lora import apply_lora, save_adapter_and_merge


def logits_fp32(model, ids):
    model = copy.deepcopy(model).to(torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_bf16_base_merges_in_fp32_and_keeps_the_fine_tune(tmp_path, default_model_dir):
    folder = make_tiny_llama(tmp_path / "tiny", default_model_dir)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    cfg = make_config(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    live = apply_lora(base, cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # a small trained update, as a real fine-tune leaves in lora_B
        for name, p in live.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2e-3)
    assert {p.dtype for n, p in live.named_parameters() if "lora_" in n} == {torch.float32}
    ids = torch.randint(0, base.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
    reference = logits_fp32(live, ids)

    bf16_merged = copy.deepcopy(live).merge_and_unload()  # what peft does on its own
    assert bf16_merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    bf16_error = (logits_fp32(bf16_merged, ids) - reference).abs().max().item()

    merged = save_adapter_and_merge(live, tmp_path / "run")
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert not any("lora" in name for name, _ in merged.named_parameters())
    error = (logits_fp32(merged, ids) - reference).abs().max().item()
    assert error < 1e-5 and bf16_error > 1e-4 and error < bf16_error / 10, (error, bf16_error)
