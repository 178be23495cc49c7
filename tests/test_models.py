import json
import os
import subprocess
import sys

import pytest

from alpaca_helpers.models import default_model, resolve_model


def test_default_model_is_a_plain_llama_checkpoint(default_model_dir):
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "chat_template.jinja"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".gguf")) for n in names)
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 49152
    assert "quantization_config" not in config


def test_second_call_reuses_the_cache(default_model_dir):
    before = (default_model_dir / "model.safetensors").stat().st_mtime_ns
    assert default_model() == default_model_dir
    assert (default_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_loads_offline_and_answers(default_model_dir):
    """The issue's check, run as a user would, with the Hub switched off."""
    code = r"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from alpaca_helpers.models import default_model
folder = default_model()
tok = AutoTokenizer.from_pretrained(folder)
# float32 compute: bf16 matmuls differ between CPU instruction sets, and greedy decoding of a 135M model
# has near-ties (" Dodoma" leads " Dodding" by 0.25 nats) that bf16 rounding can flip on another machine.
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
assert type(model).__name__ == "LlamaForCausalLM", type(model)
assert sum(p.numel() for p in model.parameters()) == 134_515_008
assert tok.eos_token == "<|im_end|>" and len(tok) == 49152 and tok.chat_template
ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Tanzania?"}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=20, do_sample=False)
print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Greedy decoding of the real weights: a dequantization bug would not produce this sentence.
    assert "capital of Tanzania is Dodoma" in result.stdout


def test_resolve_model_accepts_default_paths_and_hub_names(default_model_dir, tmp_path):
    assert resolve_model(None) == resolve_model("default") == str(default_model_dir)
    assert resolve_model(str(default_model_dir)) == str(default_model_dir.resolve())
    assert resolve_model("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="^/nope: no such model folder$"):  # a path, not a Hub name
        resolve_model("/nope")
