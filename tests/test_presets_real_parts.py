"""The other presets with the real parts, as far as a CPU takes them: `alpaca_13b`, `alpaca_7b_lora` and the
7B ablation and safety specs, each with the real LLaMA-1/2 tokenizer (shipped, SentencePiece, 32,000 tokens, no
pad token), the memory plan of a config.json of the real model's size, and one optimizer step on a tiny model
of the same family (LLaMA-7B's config made small, `rehearsal.small_llama`) with the preset's settings but size
(the model's, and the global batch's: two micro-batches of the preset's size, not 128 examples, to stay fast).
Nothing is downloaded: the presets' Hub model and data are replaced by folders and data shipped here."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from alpaca_helpers.data import load_seed_tasks
from alpaca_helpers.models import load_vocabulary
from alpaca_helpers.prompts import format_prompt
from alpaca_helpers.train.config import CPU_AUTO_MICRO_BATCH, TrainConfigError, check_run, load_preset, make_config
from alpaca_helpers.train.plan import load_model_shape
from alpaca_helpers.train.recipe import memory_plan_for_run, train
from alpaca_helpers.train.rehearsal import llama_7b_config, small_llama
from alpaca_helpers.train.tokenize import IGNORE_INDEX, build_dataset, check_tokenizer, encode_prompt
from alpaca_helpers.understand.ablate import prepare, train_job
from alpaca_helpers.understand.spec import load_spec

pytestmark = pytest.mark.slow

LLAMA_13B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
             "num_key_value_heads": 40}


@pytest.fixture(scope="module")
def tokenizer():
    return load_vocabulary("llama-spm")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight LLaMA of LLaMA-7B's config made small, with the real tokenizer."""
    return small_llama(tmp_path_factory.mktemp("llama") / "tiny")


def shaped(folder, tokenizer, **size):
    """A folder with LLaMA-7B's config.json at `size` (no weights) and the real tokenizer: what the plan reads."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**llama_7b_config(**size), "vocab_size": 32000}))
    tokenizer.save_pretrained(folder)
    return folder


def preset(name: str, **values):
    return make_config(**{**load_preset(name), **values})


# --- config building --------------------------------------------------------------------------------------


def test_13b_builds_for_8_gpus_with_fsdp():
    cfg = preset("alpaca_13b")
    run = check_run(cfg, 8, on_gpu=True)
    assert run.fsdp and run.precision.bf16 and run.precision.tf32
    # per_device_train_batch_size auto: 4 until the memory plan picks the micro-batch (in the run, before loading)
    assert cfg.per_device_train_batch_size is None
    assert (run.batch.per_device, run.batch.accumulation, run.batch.global_batch_size) == (4, 4, 128)


def test_7b_lora_builds_for_one_gpu_and_refuses_eight():
    cfg = preset("alpaca_7b_lora")
    run = check_run(cfg, 1, on_gpu=True)
    assert cfg.lora and cfg.lora_r == 16 and not run.fsdp and cfg.per_device_train_batch_size is None
    with pytest.raises(TrainConfigError, match="single process"):
        check_run(cfg, 8, on_gpu=True)


# --- the memory plan at the real sizes ---------------------------------------------------------------------


def test_13b_plan_fits_8x80gb_only_by_syncing_every_micro_batch(tmp_path, tokenizer):
    """The preset's comment: its auto micro-batch is 8 × 2 on 8 × 80 GB (about 71 GiB per GPU, half the FSDP
    traffic of 4 × 4), and fits only with a reduce-scatter after every micro-batch; at 4 × 4 about 51 GiB with
    it, about 100 without."""
    shape = load_model_shape(str(shaped(tmp_path / "llama-13b", tokenizer, **LLAMA_13B)))
    assert shape.vocab == 32064  # 32,000 + <pad>, rounded up to 64 rows
    assert 12.9e9 < shape.parameters < 13.1e9
    cfg = preset("alpaca_13b")
    run = check_run(cfg, 8, on_gpu=True)
    auto = memory_plan_for_run(cfg, shape, run, 8, 1, 80.0, gpu_name="NVIDIA A100-SXM4-80GB")
    assert (auto.per_device, auto.accumulation) == (8, 2) and auto.fits and auto.sync_every_micro_batch
    assert 65 < auto.per_device_gb <= 72 and "runner-up 4 × 4 accumulation" in auto.micro_batch_reason
    four = make_config(**{**vars(cfg), "per_device_train_batch_size": 4})
    plan = memory_plan_for_run(four, shape, check_run(four, 8, on_gpu=True), 8, 1, 80.0)
    assert plan.fits and plan.sync_every_micro_batch and 45 < plan.per_device_gb < 58
    without = memory_plan_for_run(make_config(**{**vars(four), "reduce_scatter_every_micro_batch": False}), shape,
                                  check_run(four, 8, on_gpu=True), 8, 1, 80.0)
    assert not without.fits and 90 < without.per_device_gb < 110


def test_7b_lora_plan_fits_one_80gb_gpu(tmp_path, tokenizer):
    shape = load_model_shape(str(shaped(tmp_path / "llama-7b", tokenizer)))
    cfg = preset("alpaca_7b_lora")
    plan = memory_plan_for_run(cfg, shape, check_run(cfg, 1, on_gpu=True), 1, 1, 80.0)
    assert plan.fits and plan.mode.startswith("LoRA") and plan.trainable_parameters < plan.parameters / 100
    assert plan.per_device == 8  # auto: the largest micro-batch that fits 80 GB with 10% free (alpaca-lora's size)
    small = memory_plan_for_run(cfg, shape, check_run(cfg, 1, on_gpu=True), 1, 1, 24.0)
    assert small.fits and small.per_device < 8  # a 24 GB card: a smaller one, chosen before loading


# --- tokenizer and data ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alpaca_13b", "alpaca_7b_lora"])
def test_the_real_tokenizer_tokenizes_the_shipped_data_at_the_presets_length(name, tokenizer):
    cfg = preset(name)
    check_tokenizer(tokenizer)
    records = load_seed_tasks()
    built = build_dataset(records, tokenizer, max_length=cfg.model_max_length, prompt_format=cfg.prompt_format,
                          train_on_prompt=cfg.train_on_prompt)
    # dropped only where the prompt alone leaves no room for a response token and eos (seed task 62's table)
    assert built.stats.kept >= len(records) - 2
    assert all(len(encode_prompt(tokenizer, format_prompt(records[i]))) >= cfg.model_max_length - 1
               for i in built.stats.dropped_ids)
    for row in built.dataset.select(range(5)):
        assert row["input_ids"][0] == tokenizer.bos_token_id and row["input_ids"][-1] == tokenizer.eos_token_id
        assert row["labels"][0] == IGNORE_INDEX and row["labels"][-1] == tokenizer.eos_token_id


# --- one optimizer step on a tiny model of the family --------------------------------------------------------


def one_step(name: str, model, out, **values):
    """Train `name`'s settings on `model` for one optimizer step of two micro-batches, on the CPU, with the
    shipped seed tasks."""
    micro = load_preset(name)["per_device_train_batch_size"] or CPU_AUTO_MICRO_BATCH  # auto on CPU: 4
    cfg = preset(name, model_name_or_path=str(model), data_path="seed", output_dir=str(out), max_steps=1,
                 device="cpu", tf32="auto", global_batch_size=2 * micro, **values)
    return cfg, train(cfg)


def test_13b_full_fine_tune_takes_a_step_through_fsdp(tiny, tmp_path):
    """Its micro-batch, schedule and full fine-tune, through FSDP as on 8 GPUs; the final save reloads."""
    cfg, summary = one_step("alpaca_13b", tiny, tmp_path / "run", fsdp="full_shard")
    assert summary["finished"] and summary["fsdp"] and summary["trainable_parameters"] == summary["parameters"]
    assert summary["examples"] >= 173 and summary["final_loss"] == summary["final_loss"]
    saved = tmp_path / "run" / "model"
    assert AutoTokenizer.from_pretrained(saved).pad_token == "<pad>"
    assert AutoModelForCausalLM.from_pretrained(saved).get_input_embeddings().weight.shape[0] == 32064


def test_7b_lora_takes_a_step_and_saves_adapter_and_merged_model(tiny, tmp_path):
    cfg, summary = one_step("alpaca_7b_lora", tiny, tmp_path / "run")
    assert summary["finished"] and summary["lora"] and not summary["fsdp"]
    assert 0 < summary["trainable_parameters"] < summary["parameters"] / 10
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {k.split(".")[-3] for k in adapter if ".lora_A." in k} == targets  # all-linear: every layer but the head
    assert next(v for k, v in adapter.items() if "lora_A" in k).shape[0] == cfg.lora_r
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


# --- the 7B ablation and safety specs ------------------------------------------------------------------------


def spec_on_tiny(name: str, tiny, **overrides):
    """The spec with its model replaced by `tiny` and its data by the seed tasks, on the CPU (gpus 0), one step,
    and an evaluation that a pool of 175 records can hold."""
    return load_spec(name, base={"model_name_or_path": str(tiny), "data_path": "seed", "global_batch_size": 8},
                     gpus=0, budget_steps=1,
                     evaluation={"heldout": 16, "teacher_items": 4, "shape_items": 4, "max_new_tokens": 8,
                                 "ifeval_items": 4 if name == "alpaca_7b" else None,
                                 "xstest_items": 4 if name == "alpaca_7b_safety" else None}, **overrides)


@pytest.mark.parametrize("name, arm", [("alpaca_7b", "prompt_loss"), ("alpaca_7b_safety", "safety_10pc")])
def test_ablation_spec_prepares_every_arm_and_trains_one(name, arm, tiny, tmp_path):
    """Every arm's data is built and checked with the real tokenizer (graded_n needs the OpenAI API and cleaned
    the Hub: left out), and one arm trains a step with the spec's 7B settings."""
    arms = {"graded_n": None, "cleaned": None} if name == "alpaca_7b" else {}
    spec = spec_on_tiny(name, tiny, arms=arms, select_n=64 if name == "alpaca_7b" else None)
    assert spec.base_config().learning_rate == 2e-5 and spec.base_config().per_device_train_batch_size is None  # auto
    prepared = prepare(spec, tmp_path / "ablation", progress=False, echo=lambda line: None)
    job = next(j for j in prepared.jobs if j.arm.name == arm and j.seed == 0)
    assert job.config.model_max_length == 512 and job.config.save_steps == 0 and job.config.max_steps == 1
    summary = train_job(job, spec, echo=lambda line: None)
    assert summary["finished"] and summary["final_loss"] == summary["final_loss"]
    if arm == "safety_10pc":  # the pool plus 10% safety records
        assert summary["sources"] and summary["examples"] > len(prepared.pool.train)
