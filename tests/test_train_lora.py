"""LoRA (peft): only the adapters train, they merge into a plain folder, resume is exact, misuse is an error.

The exact checks run in fp32 (`bf16=False`: with bf16 the frozen base is held in bf16, which rounds this tiny
model's fp32 weights); `test_lora_trains_on_a_bf16_base_on_cpu` runs the bf16 path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_tiny_llama
from transformers import AutoModelForCausalLM

from alpaca_helpers.train.config import TrainConfigError, make_config, parse_config
from alpaca_helpers.train.recipe import main, train


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, default_model_dir):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_lora") / "model", default_model_dir)


def lora_config(tiny_model, out, **extra):
    return make_config(model_name_or_path=str(tiny_model), output_dir=str(out), max_examples=27,
                       global_batch_size=8, per_device_train_batch_size=4, learning_rate=5e-3, lora=True,
                       lora_r=4, lora_alpha=8, lora_dropout=0.1, **{"bf16": False, "num_train_epochs": 3, **extra})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("lora_run")
    summary = train(lora_config(tiny_model, out, save_check_logits=True))
    return out, summary


def test_only_the_adapters_train_and_the_loss_falls(lora_run):
    out, summary = lora_run
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert summary["finished"] and summary["lora"] and len(log) == summary["total_steps"] == 9
    assert 0 < summary["trainable_parameters"] < 0.05 * summary["parameters"]
    assert log[-1]["loss"] < log[0]["loss"]
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_merged_folder_is_plain_and_gives_the_live_models_logits(lora_run, tiny_model):
    out, _ = lora_run
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert not any("lora" in name for name in weights)  # an ordinary folder: no peft needed to load it
    base = load_file(str(tiny_model / "model.safetensors"))
    changed = {name for name in base if not torch.equal(base[name].float(), weights[name].float())}
    assert changed and all(name.endswith("_proj.weight") for name in changed)  # embeddings and norms untouched
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    check = load_file(str(out / "save_check.safetensors"))
    with torch.no_grad():
        logits = merged(input_ids=check["input_ids"]).logits
    torch.testing.assert_close(logits, check["logits"], atol=1e-4, rtol=1e-4)


def test_lora_resume_ends_with_the_same_adapters(tmp_path, tiny_model, lora_run):
    out, _ = lora_run
    stopped = tmp_path / "stopped"
    train(lora_config(tiny_model, stopped, save_steps=4, stop_after_steps=5))
    assert not (stopped / "model").exists() and (stopped / "checkpoint-4").is_dir()
    train(lora_config(tiny_model, stopped, save_steps=4, resume=True))
    whole = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(stopped / "adapter" / "adapter_model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], atol=1e-6, rtol=0)


def test_lora_trains_on_a_bf16_base_on_cpu(tmp_path, tiny_model, capsys):
    """bf16 (what `auto` picks on a CPU with native bf16): the frozen base in bf16, the adapters in fp32
    (their optimizer state too), the loss falls, and the merged folder is saved in fp32."""
    out = tmp_path / "bf16"
    summary = train(lora_config(tiny_model, out, bf16=True))
    assert "precision: bf16 compute (autocast), frozen base in bf16, fp32 adapters" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert summary["finished"] and summary["bf16"] and log[-1]["loss"] < log[0]["loss"]
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    assert {t.dtype for t in load_file(str(out / "model" / "model.safetensors")).values()} == {torch.float32}


def test_lora_misuse_is_a_clear_error_before_the_model_loads(tmp_path, tiny_model, monkeypatch, capsys):
    with pytest.raises(TrainConfigError, match=r"lora_target_modules \['qkv'\] not in this model; .*'q_proj'"):
        train(lora_config(tiny_model, tmp_path / "a", lora_target_modules="q_proj,qkv"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["--model_name_or_path", "/nonexistent", "--lora", "true", "--output_dir", str(tmp_path / "b")])
    assert code == 1 and "lora runs on a single process (one GPU or the CPU), not 2" in capsys.readouterr().err
    assert parse_config(["--config", "alpaca_7b_lora"]).lora
