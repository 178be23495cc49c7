"""The 7B run's real parts at a size a CPU can train: LLaMA-7B's own config made smaller, the real LLaMA-1/2
tokenizer, and data in `tatsu-lab/alpaca`'s parquet layout. Nothing is downloaded.

    folder = small_llama(Path("runs/rehearsal/llama"))         # random weights, real tokenizer, no pad token
    data = alpaca_parquet(load_seed_tasks(), Path("runs/rehearsal/alpaca"))

The 7B rehearsal (`tests/test_rehearsal_7b.py`) runs notebook 04 on these with the `alpaca_7b` preset, and the
GPU proof (`gpu_check`) builds its LLaMA shapes with the same config and vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..models import load_vocabulary
from ..paths import REPO_ROOT
from ..prompts import format_prompt

# huggyllama/llama-7b's config.json (Alpaca's base), shipped so that the rehearsal needs no network.
LLAMA_7B_CONFIG = REPO_ROOT / "configs" / "models" / "huggyllama-llama-7b.json"
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def llama_7b_config(**size: int) -> dict[str, Any]:
    """LLaMA-7B's config as a dict, with the given size fields (`SIZE_FIELDS`) replaced and nothing else."""
    unknown = set(size) - set(SIZE_FIELDS)
    if unknown:
        raise ValueError(f"only size fields can change ({', '.join(SIZE_FIELDS)}), not {sorted(unknown)}")
    return {**json.loads(LLAMA_7B_CONFIG.read_text()), **size}


def small_llama(folder: Path, vocabulary: str = "llama-spm", dtype: str = "float32", device: str = "cpu",
                seed: int = 0, **size: int) -> Path:
    """A random-weight LLaMA saved as a plain Hugging Face folder (safetensors) with the real tokenizer of the
    shipped `vocabulary` (LLaMA-1/2's by default: no pad token, as huggyllama/llama-7b's). `size` replaces
    LLaMA-7B's size fields (default: 2 layers, hidden 64); everything else is LLaMA-7B's config."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    size = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, **size}
    tokenizer = load_vocabulary(vocabulary)
    values = llama_7b_config(**size)
    values["vocab_size"] = len(tokenizer)
    config = LlamaConfig(**{k: v for k, v in values.items() if k not in ("architectures", "transformers_version",
                                                                            "torch_dtype", "max_sequence_length")})
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(folder)
    return folder


def alpaca_parquet(records: Sequence[Mapping[str, Any]], folder: Path) -> Path:
    """`records` laid out as the Hub dataset `tatsu-lab/alpaca` is: `data/train-00000-of-00001.parquet` with the
    columns instruction, input, output and text (the full training text). Returns the folder (a `data_path`)."""
    import datasets

    rows = {"instruction": [], "input": [], "output": [], "text": []}
    for r in records:
        rows["instruction"].append(r["instruction"])
        rows["input"].append(r.get("input") or "")
        rows["output"].append(r["output"])
        rows["text"].append(format_prompt(r) + r["output"])
    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder
