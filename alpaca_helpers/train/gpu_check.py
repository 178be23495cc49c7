"""The GPU proof in one call: what the training path does on a real GPU, measured against its plan.

    scripts/gpu_check.sh                 # on a bare single-GPU machine (a few minutes on one H100/H200)
    scripts/gpu_check.sh --cpu           # the same checks on tiny shapes, CPU and gloo (CI, about a minute)
    python -m alpaca_helpers.train.gpu_check --out runs/gpu_check

Nothing is downloaded: the models are LLaMA-7B's own config (`rehearsal.small_llama`) resized, with random
weights (throughput and memory do not depend on the weights), and the real LLaMA-1/2 tokenizer, shipped in
data/tokenizers (SentencePiece, 32,000 tokens, no pad token: the recipe adds one, as for huggyllama/llama-7b).
The data are Alpaca-format records made from the seed tasks' words, each about `EXAMPLE_TOKENS` tokens, half
of them trained (the plan's assumption). Before anything is built, every package the checks import is
imported once (`missing_packages`): a missing one is one line, in seconds. Six checks, each recorded even
when another fails:

- `full_fsdp_bf16`: a 1B-class model (TinyLlama's shape) fine-tuned in full through the FSDP path
  (`fsdp=full_shard`, bf16 compute, fp32 master weights): tokens/s, MFU, peak `max_memory_allocated` and
  `max_memory_reserved`, the reserved peak (what an OOM is decided by) against the plan's per-device figure
  (without its CUDA-context allowance);
- `full_fsdp_bf16_compiled`: the same with `torch_compile` (each decoder layer compiled), its compile steps
  left out: MFU with it on, beside the line above's with it off;
- `lora_7b`: LoRA on a LLaMA-7B-shaped model with its frozen base in bf16: peak memory against the plan;
- `checkpoint_resume`: a small model trained through FSDP (fp32) with `save_steps`, stopped after a checkpoint
  (`stop_after_steps`), resumed (`resume`) to the end and its final full-state save: the log must continue
  from the checkpoint, and the saved folder reload and give the live model's logits;
- `notebook_04`: notebook 04 under papermill with `gpus=1` (CPU: 0) on a small random model folder;
- `two_processes`: 2 processes (FSDP over 2 GPUs; with one GPU it is skipped, with a note).

It writes `gpu_check.json` (every figure) and `gpu_check.md` (a table for docs/benchmarks.md) into `--out`,
prints the table, and exits 1 if a check failed.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Here only the package's modules that load nothing outside the standard library: on a bare machine `main` must
# reach its preflight (`missing_packages`). The others are imported inside the functions ("after the preflight").
from ..cli import ArgumentParser
from ..data import load_seed_tasks, save_alpaca
from ..files import atomic_write_text
from ..paths import resolve
from ..prompts import format_prompt
from .allocator import allocator_default
from .distributed import close_process_group

EXAMPLE_TOKENS = 480  # per record, prompt template included: fills most of a 512-token micro-batch row
VOCABULARY = "llama-spm"  # LLaMA-1/2's tokenizer, shipped (`models.load_vocabulary`): huggyllama/llama-7b's own
# What the checks import (module names; the pip name where it differs): torch and the Hugging Face stack, gguf
# (the shipped vocabulary is a GGUF file), datasets (tokenization), papermill and a kernel (notebook 04).
REQUIRED_MODULES = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers",
                    "accelerate": "accelerate", "peft": "peft", "safetensors": "safetensors", "gguf": "gguf",
                    "datasets": "datasets", "yaml": "pyyaml", "filelock": "filelock", "tqdm": "tqdm",
                    "papermill": "papermill", "nbformat": "nbformat", "nbclient": "nbclient",
                    "ipykernel": "ipykernel"}


@dataclass(frozen=True)
class Shape:
    """A LLaMA-architecture shape to build with random weights."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU (CI) run."""

    full: Shape
    lora: Shape
    notebook: Shape  # also the checkpoint-and-resume check's
    model_max_length: int
    full_steps: int
    full_batch: int
    full_micro: int  # the largest micro-batch tried; the plan picks the largest that fits
    lora_steps: int
    lora_batch: int
    lora_micro: int
    records: int


GPU = Sizes(full=Shape(2048, 5632, 22, 32, 4),  # TinyLlama-1.1B
            lora=Shape(4096, 11008, 32, 32, 32),  # LLaMA-7B
            notebook=Shape(256, 688, 4, 4, 4), model_max_length=512, full_steps=10, full_batch=64, full_micro=16,
            lora_steps=4, lora_batch=16, lora_micro=8, records=256)
CPU = Sizes(full=Shape(64, 128, 2, 4, 2), lora=Shape(64, 128, 2, 4, 4), notebook=Shape(64, 128, 2, 4, 2),
            model_max_length=128, full_steps=3, full_batch=4, full_micro=2, lora_steps=2, lora_batch=4, lora_micro=2,
            records=24)


def missing_packages(modules: dict[str, str] = REQUIRED_MODULES) -> list[str]:
    """The packages of `modules` (module name: pip name) that fail to import here, each as its pip name (with
    the error where the package is there but its import breaks)."""
    missing = []
    for module, package in modules.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing.append(package if e.name == module.split(".")[0] else f"{package} (needs {e.name})")
        except Exception as e:  # installed, but its own imports break (a wrong version beside it)
            first_line = str(e).strip().splitlines()[0][:80] if str(e).strip() else ""
            missing.append(f"{package} ({type(e).__name__}: {first_line})")
    return missing


def load_tokenizer() -> Any:
    """The shipped LLaMA-1/2 tokenizer (`VOCABULARY`), read offline; no pad token, as the real model's."""
    from ..models import load_vocabulary  # noqa: PLC0415 - after the preflight

    tokenizer = load_vocabulary(VOCABULARY)
    tokenizer.model_max_length = 1_000_000  # the data maker tokenizes all seed text at once
    return tokenizer


def build_model(shape: Shape, folder: Path, device: str) -> Path:
    """A random-weight LLaMA of `shape` (LLaMA-7B's config otherwise) with the real LLaMA tokenizer, saved in
    bf16 safetensors as a plain HF folder (`rehearsal.small_llama`)."""
    from .rehearsal import small_llama  # noqa: PLC0415 - after the preflight

    # initialised on the GPU, in bf16 from the start (13.5 GB at 7B, not 27)
    small_llama(folder, vocabulary=VOCABULARY, dtype="bfloat16", device=device, hidden_size=shape.hidden,
                intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads)
    free_memory()
    return folder


def build_data(tokenizer: Any, path: Path, count: int, tokens: int) -> Path:
    """`count` Alpaca records of about `tokens` tokens each (template included), half of them in the output:
    seed instructions with inputs and outputs cut from the seed tasks' text."""
    seeds = load_seed_tasks()
    stream = tokenizer(" ".join(f"{r['instruction']} {r['input']} {r['output']}" for r in seeds),
                       add_special_tokens=False)["input_ids"]
    records = []
    for i in range(count):
        seed = seeds[i % len(seeds)]
        prompt = len(tokenizer(format_prompt({"instruction": seed["instruction"], "input": "x"}))["input_ids"])
        half = max(4, (tokens - prompt) // 2)
        start = (i * 97) % max(1, len(stream) - 2 * half)
        records.append({"instruction": seed["instruction"],
                        "input": tokenizer.decode(stream[start:start + half]).strip() or "x",
                        "output": tokenizer.decode(stream[start + half:start + 2 * half]).strip() or "x"})
    return save_alpaca(records, path)


def free_memory() -> None:
    """Return freed GPU memory to the device between checks."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def planned(model_dir: Path, cfg: Any, world_size: int) -> Any:
    """The memory plan `train` makes for `cfg` on this machine (this device's memory)."""
    import torch

    from .config import check_run  # noqa: PLC0415 - after the preflight
    from .plan import load_model_shape  # noqa: PLC0415 - after the preflight
    from .recipe import (  # noqa: PLC0415 - after the preflight
        device_native_bf16,
        memory_budget_gib,
        memory_plan_for_run,
    )

    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    run = check_run(cfg, world_size, on_gpu=on_gpu, native=device_native_bf16(device))
    return memory_plan_for_run(cfg, load_model_shape(str(model_dir)), run, world_size, 1,
                               memory_budget_gib(device, world_size))


def micro_batch_that_fits(model_dir: Path, values: dict[str, Any], largest: int) -> int:
    """The largest micro-batch (`largest`, or a smaller `config.MICRO_BATCH_OPTIONS` one dividing the global
    batch) whose plan fits this device; 1 when none does."""
    from .config import MICRO_BATCH_OPTIONS, make_config  # noqa: PLC0415 - after the preflight

    for micro in sorted({largest, *(m for m in MICRO_BATCH_OPTIONS if m < largest)}, reverse=True):
        cfg = make_config(**values, per_device_train_batch_size=micro)
        if cfg.global_batch_size % micro == 0 and planned(model_dir, cfg, 1).fits:
            return micro
    return 1


def steady(out: Path, warmup: int = 1) -> dict[str, Any]:
    """`steady_figures` of a finished run's log."""
    from .recipe import read_train_log  # noqa: PLC0415 - after the preflight

    return steady_figures(read_train_log(out / "train_log.jsonl"), warmup)


def steady_figures(log: list[dict[str, Any]], warmup: int = 1) -> dict[str, Any]:
    """Throughput and MFU of log rows, the first `warmup` steps left out (kept where no other step is); peak
    memory over every row: allocated, and reserved by CUDA's caching allocator (None on CPU)."""
    rows = log[warmup:] if len(log) > warmup else log
    seconds = sum(r["seconds"] for r in rows)
    mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
    reserved = [r["peak_reserved_gb"] for r in log if r.get("peak_reserved_gb") is not None]
    return {"steps": len(log), "tokens_per_s": sum(r["tokens"] for r in rows) / seconds,
            "trained_tokens_per_s": sum(r["trained_tokens"] for r in rows) / seconds,
            "step_seconds": seconds / len(rows), "mfu": sum(mfu) / len(mfu) if mfu else None,
            "peak_memory_gib": max(r["peak_memory_gb"] for r in log),
            "peak_reserved_gib": max(reserved) if reserved else None, "final_loss": log[-1]["loss"],
            "finite": all(r["loss"] == r["loss"] for r in log)}


def peak_over_plan(figures: dict[str, Any], planned_gib: float) -> float | None:
    """Peak reserved memory over the plan's per-device figure. Reserved, not allocated: what the caching
    allocator holds, free blocks left by fragmentation included, is what an OOM is decided by. None without a
    reserved figure (CPU, whose peak is the whole process's resident memory: no match for the plan)."""
    reserved = figures.get("peak_reserved_gib")
    return None if reserved is None else reserved / planned_gib


def measured_run(model_dir: Path, out: Path, values: dict[str, Any], steps: int, warmup: int = 1) -> dict[str, Any]:
    """Train in this process (`recipe.train`) for `steps` steps (no final save) and compare with the plan; the
    first `warmup` steps are left out of the speed."""
    import torch

    from .config import make_config  # noqa: PLC0415 - after the preflight
    from .plan import CUDA_OVERHEAD_GIB  # noqa: PLC0415 - after the preflight
    from .recipe import train  # noqa: PLC0415 - after the preflight

    # max_steps one more than run: the schedule is a real run's, and no final model folder is written
    cfg = make_config(**values, model_name_or_path=str(model_dir), output_dir=str(out), max_steps=steps + 1,
                      stop_after_steps=steps, save_steps=0, val_set_size=0, learning_rate=1e-5)
    plan = planned(model_dir, cfg, 1)
    if torch.cuda.is_available() and cfg.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    summary = train(cfg)
    free_memory()
    result = {"parameters": summary["parameters"], "trainable_parameters": summary["trainable_parameters"],
              "micro_batch": plan.per_device, "accumulation": plan.accumulation, "bf16": summary["bf16"],
              "fsdp": summary["fsdp"], "lora": summary["lora"], "torch_compile": cfg.torch_compile,
              **steady(out, warmup), "planned_gib": plan.per_device_gb - CUDA_OVERHEAD_GIB, "plan_mode": plan.mode}
    result["peak_over_plan"] = peak_over_plan(result, result["planned_gib"])
    result["ok"] = result["finite"] and result["steps"] == steps
    return result


def full_values(sizes: Sizes, data: Path, device: str) -> dict[str, Any]:
    """The settings of the 1B-class full fine-tune (the micro-batch is the plan's)."""
    return dict(data_path=str(data), model_max_length=sizes.model_max_length, global_batch_size=sizes.full_batch,
                fsdp="full_shard", bf16="true", device="auto" if device == "cuda" else "cpu")


def check_full(sizes: Sizes, work: Path, tokenizer: Any, data: Path, device: str) -> dict[str, Any]:
    model = build_model(sizes.full, work / "full_model", device)
    values = full_values(sizes, data, device)
    micro = micro_batch_that_fits(model, values, sizes.full_micro)
    return measured_run(model, work / "full_run", {**values, "per_device_train_batch_size": micro}, sizes.full_steps)


# step 1 compiles (dynamic shapes: once for all lengths); step 2 in case a new case recompiles
COMPILE_WARMUP_STEPS = 2


def check_full_compiled(sizes: Sizes, work: Path, tokenizer: Any, data: Path, device: str) -> dict[str, Any]:
    """`full_fsdp_bf16` again with `torch_compile` (each decoder layer compiled), same model, data and
    micro-batch: its MFU beside the eager run's. The steps that compile are left out of the speed. Skipped on
    CPU: inductor's C++ compile takes a minute or more on CI's 2 cores, for no MFU (tests/test_train_compile.py
    checks the compiled run's losses on CPU)."""
    import torch

    if device == "cpu":
        return {"skipped": "skipped on CPU (a minute of C++ compile, no MFU): tests/test_train_compile.py checks it",
                "ok": True}
    model = (work / "full_model" if (work / "full_model").is_dir()
             else build_model(sizes.full, work / "full_model", device))
    values = full_values(sizes, data, device)
    micro = micro_batch_that_fits(model, values, sizes.full_micro)
    try:
        return measured_run(model, work / "full_compiled_run",
                            {**values, "per_device_train_batch_size": micro, "torch_compile": True},
                            sizes.full_steps, warmup=COMPILE_WARMUP_STEPS)
    finally:
        torch._dynamo.reset()  # the compiled graphs, and the memory they hold, go before the next check


def check_lora(sizes: Sizes, work: Path, tokenizer: Any, data: Path, device: str) -> dict[str, Any]:
    model = build_model(sizes.lora, work / "lora_model", device)
    values = dict(data_path=str(data), model_max_length=sizes.model_max_length, global_batch_size=sizes.lora_batch,
                  lora=True, per_device_train_batch_size=sizes.lora_micro, bf16="true",
                  device="auto" if device == "cuda" else "cpu")
    try:
        return measured_run(model, work / "lora_run", values, sizes.lora_steps)
    finally:
        shutil.rmtree(model, ignore_errors=True)  # 13.5 GB at 7B


def check_resume(sizes: Sizes, work: Path, tokenizer: Any, data: Path, device: str) -> dict[str, Any]:
    """Checkpoints, a stop, a resume and the final full-state save through FSDP on this device: the resumed log
    continues from the checkpoint, and the saved folder reloads with the pad token the run added and gives the
    live model's logits."""
    from .config import make_config  # noqa: PLC0415 - after the preflight
    from .recipe import read_train_log, train  # noqa: PLC0415 - after the preflight

    model = build_model(sizes.notebook, work / "resume_model", device)
    out = work / "resume_run"
    shutil.rmtree(out, ignore_errors=True)  # an earlier call's run would pass for this one's
    values = dict(model_name_or_path=str(model), data_path=str(data), output_dir=str(out),
                  model_max_length=sizes.model_max_length, global_batch_size=4, per_device_train_batch_size=2,
                  max_steps=4, save_steps=2, val_set_size=0, learning_rate=1e-3, fsdp="full_shard",
                  # fp32 (no TF32) so that the reloaded folder must give the live logits to 1e-4: bf16 is
                  # full_fsdp_bf16's; what is checked here (what is saved, restored, gathered) is the same
                  bf16="false", tf32="false", device="auto" if device == "cuda" else "cpu", save_check_logits=True)
    first = train(make_config(**values, stop_after_steps=2))
    stopped = {"steps": first["steps"], "finished": first["finished"],
               "checkpoints": sorted(p.name for p in out.glob("checkpoint-*")),
               "model_saved": (out / "model").exists()}
    head = read_train_log(out / "train_log.jsonl")
    free_memory()
    second = train(make_config(**values, resume=True))
    free_memory()
    log = read_train_log(out / "train_log.jsonl")
    result = {"stopped": stopped, "steps_logged": [r["step"] for r in log], "finished": second["finished"],
              "log_kept_before_resume": log[:2] == head, "final_loss": second["final_loss"],
              "finite": all(r["loss"] == r["loss"] for r in log), **reload_saved(out)}
    result["ok"] = (stopped == {"steps": 2, "finished": False, "checkpoints": ["checkpoint-2"], "model_saved": False}
                    and result["steps_logged"] == [1, 2, 3, 4] and result["finished"]
                    and result["log_kept_before_resume"] and result["finite"]
                    and result["reload_max_logit_diff"] < 1e-4 and result["reloaded_pad_token"] is not None)
    return result


def reload_saved(out: Path) -> dict[str, Any]:
    """Reload the run's saved folder (on the CPU, in fp32) and compare its logits with the live model's
    (`save_check.safetensors`, written by the run before its save)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    probe = load_file(str(out / "save_check.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], use_cache=False).logits
    diff = (logits - probe["logits"]).abs().max().item()
    rows = model.get_input_embeddings().weight.shape[0]
    del model
    return {"reload_max_logit_diff": diff, "reloaded_vocabulary": len(tokenizer), "reloaded_embedding_rows": rows,
            "reloaded_pad_token": tokenizer.pad_token}


def check_notebook(sizes: Sizes, work: Path, tokenizer: Any, data: Path, device: str) -> dict[str, Any]:
    from ..course import NOTEBOOKS_DIR, run_notebook  # noqa: PLC0415 - after the preflight

    model = build_model(sizes.notebook, work / "notebook_model", device)
    out = work / "notebook"
    started = time.perf_counter()
    run_notebook(NOTEBOOKS_DIR / "04_train.ipynb", out, {
        "gpus": 1 if device == "cuda" else 0, "model_name_or_path": str(model), "data_path": str(data),
        "max_steps": 2, "model_max_length": sizes.model_max_length, "max_new_tokens": 8,
        "output_dir": str(out / "04"),
        "extra_args": "--global_batch_size 4 --per_device_train_batch_size 2 --val_set_size 0"}, progress=False)
    summary = json.loads((out / "04" / "summary.json").read_text())
    return {"seconds": round(time.perf_counter() - started, 1), "steps": summary["steps"],
            "gpus": 1 if device == "cuda" else 0,
            "command": summary["command"], "final_loss": summary["final_loss"],
            "models_released": summary["models_released"], "ok": summary["steps"] == 2}


def check_two_processes(sizes: Sizes, work: Path, tokenizer: Any, data: Path, device: str) -> dict[str, Any]:
    import torch

    from .launch import launch_command, run_streaming  # noqa: PLC0415 - after the preflight

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and gpus < 2:
        return {"skipped": f"{gpus} GPU on this machine: 2 processes need 2 GPUs", "ok": True}
    model = (work / "full_model" if (work / "full_model").is_dir()
             else build_model(sizes.full, work / "full_model", device))
    out = work / "two_processes"
    args = ["--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(out),
            "--model_max_length", str(sizes.model_max_length), "--global_batch_size", str(sizes.full_batch),
            "--per_device_train_batch_size", str(max(1, sizes.full_micro // 2)),
            "--max_steps", str(sizes.full_steps + 1),
            "--stop_after_steps", str(sizes.full_steps), "--save_steps", "0", "--learning_rate", "1e-5"]
    run_streaming(launch_command(args, gpus=2 if gpus else 0, cpu_processes=2), echo=lambda line: None,
                  env={"OMP_NUM_THREADS": "1"} if not gpus else None)
    summary = json.loads((out / "train_summary.json").read_text())
    result = {"world_size": summary["world_size"],
              "ranks_that_loaded_full_weights": summary["ranks_that_loaded_full_weights"],
              "peak_memory_gib_per_rank": summary["peak_memory_gb_per_rank"], **steady(out)}
    result["ok"] = result["finite"] and summary["world_size"] == 2
    return result


CHECKS = {"full_fsdp_bf16": check_full, "full_fsdp_bf16_compiled": check_full_compiled, "lora_7b": check_lora,
          "checkpoint_resume": check_resume, "notebook_04": check_notebook, "two_processes": check_two_processes}


def environment(device: str) -> dict[str, Any]:
    """Versions and the device, for the record."""
    import torch

    from .plan import peak_bf16_flops  # noqa: PLC0415 - after the preflight

    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    versions = {}
    for package in ("torch", "transformers", "accelerate", "peft", "datasets", "papermill", "gguf"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"device": name, "gpus": torch.cuda.device_count() if device == "cuda" else 0,
            "peak_bf16_flops": peak_bf16_flops(name) if device == "cuda" else None,
            "python": platform.python_version(), "versions": versions}


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(report: dict[str, Any]) -> str:
    """The report as a table for docs/benchmarks.md."""
    env = report["environment"]
    lines = [f"`scripts/gpu_check.sh{' --cpu' if report['mode'] == 'cpu' else ''}` on {env['device']} "
             f"({env['gpus']} GPU), torch {env['versions']['torch']}, transformers {env['versions']['transformers']}, "
             f"{report['seconds']:.0f} s in all", "",
             "| check | model | micro-batch × accumulation | tokens/s | MFU | peak allocated GiB | peak reserved GiB "
             "| plan GiB | reserved / plan | seconds | result |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in report["checks"].items():
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | | | | | | | | | {r['check_seconds']:.0f} | "
                         f"{r.get('error') or r.get('skipped')} |")
            continue
        count = r.get("parameters")
        model = "" if count is None else f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.1f}M"
        batch = f"{r['micro_batch']} × {r['accumulation']}" if "micro_batch" in r else ""
        lines.append(f"| {name} | {model} | {batch} | {_cell(r.get('tokens_per_s'), ',.0f')} | "
                     f"{_cell(r.get('mfu'), '.1%')} | {_cell(r.get('peak_memory_gib'), '.2f')} | "
                     f"{_cell(r.get('peak_reserved_gib'), '.2f')} | {_cell(r.get('planned_gib'), '.2f')} | "
                     f"{_cell(r.get('peak_over_plan'), '.2f')} | {r['check_seconds']:.0f} | "
                     f"{'ok' if r['ok'] else 'FAILED'} |")
    compiled = compile_line(report["checks"].get("full_fsdp_bf16"), report["checks"].get("full_fsdp_bf16_compiled"))
    return "\n".join(lines + ([""] + [compiled] if compiled else [])) + "\n"


def compile_line(eager: dict[str, Any] | None, compiled: dict[str, Any] | None) -> str | None:
    """One sentence comparing the full fine-tune with and without `torch_compile`, when both ran."""
    if not (eager and compiled and "tokens_per_s" in eager and "tokens_per_s" in compiled):
        return None
    mfu = (f"MFU {compiled['mfu']:.1%} against {eager['mfu']:.1%}" if compiled.get("mfu") is not None
           and eager.get("mfu") is not None else "no MFU (a device without a known peak)")
    return (f"torch_compile (each decoder layer compiled): {compiled['tokens_per_s']:,.0f} tokens/s against "
            f"{eager['tokens_per_s']:,.0f} without (× {compiled['tokens_per_s'] / eager['tokens_per_s']:.2f}), "
            f"{mfu}; the first {COMPILE_WARMUP_STEPS} steps (the compile) left out.")


def describe(error: Exception) -> str:
    """One line for a failed check: the error's first and (if different) last line."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(error).__name__}: {text}"[:300]


def run_checks(out: Path, cpu: bool, only: list[str] | None = None) -> dict[str, Any]:
    """Every check (or `only` these), each recorded even when another fails; returns the report."""
    import torch

    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    sizes = CPU if device == "cpu" else GPU
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = load_tokenizer()
    data = build_data(tokenizer, work / "data.json", sizes.records, min(EXAMPLE_TOKENS, sizes.model_max_length - 32))
    report: dict[str, Any] = {"mode": device, "environment": environment(device), "vocabulary": VOCABULARY,
                              "checks": {}}
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        began = time.perf_counter()
        try:
            result = check(sizes, work, tokenizer, data, device)
        except Exception as e:  # recorded; the other checks still run
            result = {"error": describe(e), "ok": False}
            close_process_group()  # this process's own 1-rank group, if the failed run left it
        free_memory()
        result["check_seconds"] = round(time.perf_counter() - began, 1)
        report["checks"][name] = result
        print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result['check_seconds']} s)", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = all(r["ok"] for r in report["checks"].values())
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "gpu_check.md", markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m alpaca_helpers.train.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on CPU (gloo): what CI runs")
    parser.add_argument("--out", default="runs/gpu_check",
                        help="folder for gpu_check.json, gpu_check.md and the runs")
    parser.add_argument("--only", help=f"a comma list of checks ({', '.join(CHECKS)})")
    args = parser.parse_args(argv)

    # as every launch has it (in-process runs here); before CUDA starts
    os.environ.update(allocator_default(os.environ))
    only = [c.strip() for c in args.only.split(",")] if args.only else None
    if only and not set(only) <= set(CHECKS):
        print(f"error: unknown check(s) {sorted(set(only) - set(CHECKS))}; checks: {', '.join(CHECKS)}",
              file=sys.stderr)
        return 2
    missing = missing_packages()  # first: a bare machine learns it in seconds, before any model is built
    if missing:
        print(f"error: cannot import {', '.join(missing)}: carry their wheels in .whl/ "
              "(scripts/gpu_check_requirements.txt; scripts/gpu_check_wheels.sh downloads them)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; no waiting on an unreachable Hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = resolve(args.out)
    report = run_checks(out, args.cpu, only)
    print("\n" + markdown(report), flush=True)
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
