"""Training throughput and MFU on one GPU: the default model and LLaMA-shaped 1B / 3B models, with and
without packing, side by side in one run; then the 52K × 3 epochs projection for 8×A100.

    python benchmarks/bench_train_gpu.py                              # default, 1b, 3b; padded and packed
    python benchmarks/bench_train_gpu.py --shapes default,1b --steps 8 --json /tmp/bench_train_gpu.json
    python benchmarks/bench_train_gpu.py --shapes tiny --steps 3 --device cpu   # smoke test without a GPU

The 1B and 3B models are LLaMA-architecture models built from a config with random weights (throughput does
not depend on the weights, and the GPU machines have no network): 1b = TinyLlama-1.1B's shape, 3b = Llama-3.2-3B's
shape without its 128K vocabulary (the default tokenizer's 49K). Training goes through `alpaca_helpers.train`
exactly as a real run (bf16 autocast on one GPU, fp32 master weights, AdamW) on the 175 seed tasks, repeated
for `--steps` optimizer steps; the first step is left out of the rates as warm-up.

MFU = model FLOPs per token (6 N + attention, `alpaca_helpers.train.flops_per_token`) × tokens/s ÷ the GPU's
dense bf16 peak. The projection for Alpaca's run assumes LLaMA-7B on 8×A100 reaches the MFU measured here for
the largest model, and that Alpaca's examples are as long as the seed tasks under the default tokenizer
(`--tokens-per-example` overrides): an estimate, printed as one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from alpaca_helpers.models import resolve_model
from alpaca_helpers.train import PEAK_BF16_FLOPS, flops_per_token, peak_flops, train
from alpaca_helpers.train_config import make_config

# LLaMA-architecture shapes: hidden, intermediate, layers, heads, kv heads.
SHAPES = {"tiny": (64, 128, 2, 4, 2), "1b": (2048, 5632, 22, 32, 4), "3b": (3072, 8192, 28, 24, 8)}
LLAMA_7B = {"params": 6.74e9, "layers": 32, "hidden": 4096}
ALPACA_EXAMPLES = 52_002 * 3  # examples × epochs


def build_model(shape: str, folder: Path) -> str:
    """The default model's folder, or a random-weight LLaMA of the named shape with the default tokenizer."""
    if shape == "default":
        return resolve_model("default")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(resolve_model("default"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder / shape)
    tok.save_pretrained(folder / shape)
    return str(folder / shape)


def run(model_dir: str, args, out: Path, packing: bool) -> dict:
    cfg = make_config(model_name_or_path=model_dir, data_path="seed", model_max_length=512, max_steps=args.steps,
                      global_batch_size=args.global_batch, per_device_train_batch_size=args.micro_batch,
                      learning_rate=1e-5, packing=packing, output_dir=str(out), device=args.device,
                      activation_checkpointing=args.activation_checkpointing)
    summary = train(cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()][1:]
    tokens, seconds = sum(r["tokens"] for r in log), sum(r["seconds"] for r in log)
    mfus = [r["mfu"] for r in log if r["mfu"] is not None]
    return {"parameters": summary["parameters"], "tokens_per_s": tokens / seconds,
            "trained_tokens_per_s": sum(r["trained_tokens"] for r in log) / seconds,
            "padding": sum(r["padding"] for r in log) / len(log), "mfu": sum(mfus) / len(mfus) if mfus else None,
            "peak_memory_gb": max(r["peak_memory_gb"] for r in log),
            "tokens_per_example": tokens / (len(log) * args.global_batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="default,1b,3b", help=f"comma-separated: default, {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--device", default="auto", help="auto (the GPU) or cpu (smoke test)")
    parser.add_argument("--tokens-per-example", type=float, help="for the projection (default: measured on the seed tasks)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for shape in args.shapes.split(","):
            model_dir = build_model(shape, tmp / "models")
            for packing in (False, True):
                key = f"{shape} {'packed' if packing else 'padded'}"
                try:
                    results[key] = run(model_dir, args, tmp / key.replace(" ", "_"), packing)
                except torch.OutOfMemoryError:
                    results[key] = {"error": "out of memory"}
                    torch.cuda.empty_cache()
    print("\n| model | parameters | packing | tokens/s | trained tokens/s | padding | MFU | peak memory GB |\n"
          "|---|---:|---|---:|---:|---:|---:|---:|")
    for key, r in results.items():
        shape, mode = key.split(" ")
        if "error" in r:
            print(f"| {shape} | | {mode} | {r['error']} | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| {shape} | {r['parameters'] / 1e9:.2f}B | {mode} | {r['tokens_per_s']:,.0f} | "
              f"{r['trained_tokens_per_s']:,.0f} | {r['padding']:.1%} | {mfu} | {r['peak_memory_gb']:.1f} |")
    measured = [r for r in results.values() if r.get("mfu")]
    if measured:
        best = max(measured, key=lambda r: (r["parameters"], r["mfu"]))
        length = args.tokens_per_example or best["tokens_per_example"]
        per_token_7b = flops_per_token(LLAMA_7B["params"], LLAMA_7B["layers"], LLAMA_7B["hidden"], length)
        a100_tokens_per_s = best["mfu"] * PEAK_BF16_FLOPS["A100"] / per_token_7b
        hours = ALPACA_EXAMPLES * length / (8 * a100_tokens_per_s) / 3600
        print(f"\nprojection at the measured MFU of the {best['parameters'] / 1e9:.1f}B model ({best['mfu']:.1%}): "
              f"LLaMA-7B on 8×A100 ≈ {a100_tokens_per_s:,.0f} tokens/s per GPU → 52K × 3 epochs of {length:.0f} tokens "
              f"in {hours:.1f} h "
              f"(Alpaca reported ~3 h); peak of this GPU {peak_flops(device) or 0:.3g} FLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
