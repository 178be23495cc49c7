"""Training throughput on CPU: our loop vs the original recipe's shape, side by side in one run.

    python benchmarks/bench_train.py                       # default model, 175 seed tasks: 4 steps of 32
    python benchmarks/bench_train.py --examples 120 --json /tmp/bench_train.json
    python benchmarks/bench_train.py --only trainer_random,trl_grouped,ours_grouped   # a subset of the runs
    python benchmarks/bench_train.py \\
        --only trainer_random,trl_padding_free,trl_padding_free_bf16,ours_grouped,ours_grouped_bf16

Baseline = the original recipe's shape: Hugging Face `Trainer`, random order, each micro-batch padded to
its longest example. Peer = Hugging Face TRL's `SFTTrainer` (installed with the test extra; `--no_trl` leaves it
out) with completion-only loss, in the two settings that keep the global batch in examples: padding-free
(each micro-batch one row) and length-grouped micro-batches (`run_trl` says why not `packing`). Ours =
`alpaca_helpers.train`: micro-batches grouped by length inside each global batch, first with the LM head on every
position (`ours_grouped_full_head`: grouping alone), then with logits only where a label is trained (the default),
then also with packing. Same model, data, global batch, micro-batch, schedule and number of steps. Each TRL and
ours run comes in fp32 and, with the suffix `_bf16`, in bf16 mixed precision (fp32 master
weights and optimizer state, bf16 autocast: TRL's `bf16=True`, ours `bf16: true`), so that each loop is raced at
its fastest CPU setting as well as in fp32; the `Trainer` baseline is the original recipe's fp32. Reported:
trained (response) tokens per second of the training loop (wall and process CPU time, the first step left out of
both as warm-up), padding share, last-step train loss, and the mean loss of each trained model over all training
examples (the same fp32 function for all runs, so "equal loss" compares like with like); at the end, ours
against TRL at their fastest settings and in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.data import load_seed_tasks, save_alpaca
from alpaca_helpers.models import resolve_model
from alpaca_helpers.train.batches import AlpacaCollator
from alpaca_helpers.train.config import make_config, warmup_steps
from alpaca_helpers.train.recipe import train
from alpaca_helpers.train.tokenize import IGNORE_INDEX, build_dataset


def mean_loss(model_dir: str, dataset, pad_id: int, batch: int = 8) -> float:
    """Token-mean loss of a saved model over a tokenized dataset (no grad)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    collate = AlpacaCollator(pad_token_id=pad_id)
    total = count = 0.0
    rows = dataset.select_columns(["input_ids", "labels"]).to_list()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            b = collate(rows[i:i + batch])
            n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**b, num_items_in_batch=n).loss.item() * n
            count += n
    return total / count


def timed_run(trainer, tokenizer, out: Path) -> dict:
    """Train a Hugging Face `Trainer` (or subclass), counting what it computes on and timing each step."""
    padded = real = trained = 0
    collate = trainer.data_collator

    def counting_collator(features):  # measure the padding and trained tokens the run computes on
        nonlocal padded, real, trained
        batch = collate(features)
        padded += batch["input_ids"].numel()
        real += sum(len(f["input_ids"]) for f in features)
        trained += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch

    trainer.data_collator = counting_collator
    steps: list[tuple[float, float, int]] = []  # (wall s, CPU s, trained tokens so far) per optimizer step

    class StepTimer(TrainerCallback):  # the Trainer fetches a step's micro-batches before on_step_begin
        def on_step_begin(self, *_, **__):
            self.t0, self.c0, self.n0 = time.perf_counter(), time.process_time(), trained

        def on_step_end(self, *_, **__):
            steps.append((time.perf_counter() - self.t0, time.process_time() - self.c0, self.n0))

    trainer.add_callback(StepTimer())
    trainer.train()
    # The first step (one-off warm-up costs) is left out of the rates, for every run alike.
    seconds, cpu = sum(w for w, _, _ in steps[1:]), sum(c for _, c, _ in steps[1:])
    timed_tokens = steps[-1][2] - steps[0][2]
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(out / "model")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "cpu_seconds": cpu, "trained_tokens_timed": timed_tokens,
            "last_step_loss": losses[-1], "steps": len(losses), "trained_tokens": trained,
            "padding": 1 - real / padded, "model_dir": str(out / "model")}


def hf_schedule(args, dataset) -> dict:
    """The settings every Hugging Face run shares with ours: batch split, schedule, one epoch, CPU."""
    return dict(output_dir=None, per_device_train_batch_size=args.micro_batch,
                gradient_accumulation_steps=args.global_batch // args.micro_batch, num_train_epochs=1,
                learning_rate=args.lr, weight_decay=0.0, lr_scheduler_type="cosine",
                warmup_steps=warmup_steps(len(dataset) // args.global_batch, 0.03),  # as ours: ceil(3% of steps)
                logging_steps=1, save_strategy="no", report_to=[], seed=42, dataloader_num_workers=0,
                disable_tqdm=True, use_cpu=True)


def run_trainer(model_dir: str, dataset, tokenizer, args, out: Path) -> dict:
    """The original recipe's loop: Trainer, random sampler, pad to the longest in each micro-batch."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targs = TrainingArguments(**{**hf_schedule(args, dataset), "output_dir": str(out)})
    trainer = Trainer(model=model, args=targs, train_dataset=dataset.select_columns(["input_ids", "labels"]),
                      data_collator=AlpacaCollator(pad_token_id=tokenizer.pad_token_id))
    return timed_run(trainer, tokenizer, out)


TRL_SETTINGS = {
    # each micro-batch's examples concatenated into one row, no padding (what `ours_packed` does); TRL
    # documents it for FlashAttention, and on CPU transformers reads the restarting position_ids as
    # separate sequences, so the loss is the same
    "padding_free": {"padding_free": True, "max_length": None},
    # micro-batches of similar length (transformers' LengthGroupedSampler), padded
    "grouped": {"train_sampling_strategy": "group_by_length"},
}


def run_trl(model_dir: str, dataset, tokenizer, args, out: Path, setting: str, bf16: bool = False) -> dict:
    """Hugging Face TRL's `SFTTrainer`, as users pick it today, on the same tokens and loss mask as ours.

    The dataset goes in pre-tokenized with a `completion_mask` (TRL's completion-only loss: response tokens
    only). TRL's own defaults that would change the comparison are set as ours: the same precision (fp32, or
    bf16 autocast with fp32 weights when `bf16`), no gradient checkpointing; packing (`packing=True`) is not run:
    it rebuilds the examples into fixed-length rows, so a global batch would no longer be the same examples.
    """
    from trl import SFTConfig, SFTTrainer  # noqa: PLC0415 - only when raced (--no_trl leaves it out)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = dataset.map(lambda ex: {"completion_mask": [int(t != IGNORE_INDEX) for t in ex["labels"]]},
                       remove_columns=[c for c in dataset.column_names if c != "input_ids"])
    config = SFTConfig(**{**hf_schedule(args, dataset), "output_dir": str(out)}, bf16=bf16,
                       gradient_checkpointing=False, completion_only_loss=True, dataset_num_proc=None,
                       **{"max_length": args.max_length, **TRL_SETTINGS[setting]})
    trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
    return timed_run(trainer, tokenizer, out)


def run_ours(model_dir: str, data_file: Path, args, out: Path, packing: bool, trained_head: bool = True,
             bf16: bool = False) -> dict:
    cfg = make_config(model_name_or_path=model_dir, data_path=str(data_file), model_max_length=args.max_length,
                      global_batch_size=args.global_batch, per_device_train_batch_size=args.micro_batch,
                      num_train_epochs=1, learning_rate=args.lr, packing=packing, output_dir=str(out),
                      logits_on_trained_only=trained_head, bf16=bf16)
    summary = train(cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    computed = sum(r["tokens"] / (1 - r["padding"]) for r in log)
    return {"seconds": sum(r["seconds"] for r in log[1:]), "cpu_seconds": sum(r["cpu_seconds"] for r in log[1:]),
            "trained_tokens_timed": sum(r["trained_tokens"] for r in log[1:]),
            "last_step_loss": log[-1]["loss"], "steps": len(log),
            "padding": 1 - sum(r["tokens"] for r in log) / computed, "model_dir": summary["model_dir"],
            "trained_tokens": sum(r["trained_tokens"] for r in log)}


def benchmark_data(tokenizer, args, folder: Path) -> tuple[Path, object]:
    """The first seed tasks that fit `max_length`, cut to whole global batches, saved as one file both
    loops read (so both run the same examples for the same number of steps)."""
    records = load_seed_tasks()[:args.examples]
    kept = build_dataset(records, tokenizer, max_length=args.max_length, overflow="drop").dataset["example_id"]
    kept = kept[:len(kept) // args.global_batch * args.global_batch]
    path = save_alpaca([records[i] for i in kept], folder / "bench_data.jsonl")
    return path, build_dataset([records[i] for i in kept], tokenizer, max_length=args.max_length).dataset


TRL_RUNS = tuple(f"trl_{s}{p}" for p in ("", "_bf16") for s in TRL_SETTINGS)
OURS_RUNS = ("ours_grouped_full_head", "ours_grouped", "ours_packed", "ours_grouped_bf16", "ours_packed_bf16")
RUNS = ("trainer_random", *TRL_RUNS, *OURS_RUNS)


def fastest(results: dict, prefix: str, fp32_only: bool = False) -> tuple[str, dict] | None:
    """The (name, result) of the fastest run (trained tokens/s, wall) whose name starts with `prefix`."""
    found = [(k, r) for k, r in results.items() if k.startswith(prefix) and not (fp32_only and k.endswith("_bf16"))]
    return max(found, key=lambda kr: kr[1]["trained_tokens_per_s"], default=None)


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--examples", type=int, default=175, help="seed tasks to start from (cut to whole batches)")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--global_batch", type=int, default=32)
    parser.add_argument("--micro_batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--no_trl", action="store_true", help="leave out TRL's SFTTrainer")
    parser.add_argument("--only", help=f"comma-separated subset of the runs: {', '.join(RUNS)} (default: all)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_file, dataset = benchmark_data(tokenizer, args, tmp)
        trained = sum(sum(1 for t in lab[1:] if t != IGNORE_INDEX) for lab in dataset["labels"])
        print(f"{len(dataset)} examples, {trained} trained tokens, global batch {args.global_batch} "
              f"(micro-batch {args.micro_batch}), max length {args.max_length}, "
              f"torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.2f}")
        runs = {"trainer_random": lambda: run_trainer(model_dir, dataset, tokenizer, args, tmp / "trainer"),
                **{f"trl_{setting}{suffix}": (lambda setting=setting, suffix=suffix: run_trl(
                    model_dir, dataset, tokenizer, args, tmp / f"trl_{setting}{suffix}", setting, bf16=bool(suffix)))
                   for setting in TRL_SETTINGS for suffix in ("", "_bf16")},
                "ours_grouped_full_head": lambda: run_ours(model_dir, data_file, args, tmp / "grouped_full",
                                                           packing=False, trained_head=False),
                "ours_grouped": lambda: run_ours(model_dir, data_file, args, tmp / "grouped", packing=False),
                "ours_packed": lambda: run_ours(model_dir, data_file, args, tmp / "packed", packing=True),
                "ours_grouped_bf16": lambda: run_ours(model_dir, data_file, args, tmp / "grouped_bf16", packing=False,
                                                      bf16=True),
                "ours_packed_bf16": lambda: run_ours(model_dir, data_file, args, tmp / "packed_bf16", packing=True,
                                                     bf16=True)}
        chosen = args.only.split(",") if args.only else [n for n in RUNS if not (args.no_trl and n.startswith("trl_"))]
        if "trainer_random" not in chosen or set(chosen) - set(RUNS):
            parser.error(f"--only: names from {', '.join(RUNS)}, including trainer_random (the baseline)")
        for name in chosen:
            results[name] = runs[name]()
        for r in results.values():
            r["trained_tokens_per_s"] = r["trained_tokens_timed"] / r["seconds"]
            r["trained_tokens_per_cpu_s"] = r["trained_tokens_timed"] / r["cpu_seconds"]
            r["final_mean_loss"] = mean_loss(r["model_dir"], dataset, tokenizer.pad_token_id)
            del r["model_dir"]
    base = results["trainer_random"]
    trl_fastest = fastest(results, "trl_")
    trl_best = trl_fastest[1] if trl_fastest else None
    print("\n| run | steps | loop s | CPU s | trained tok/s | trained tok/CPU s | padding | last-step loss "
          "| mean loss after | speed-up (wall) | speed-up (CPU) | vs fastest TRL (wall) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        r["speedup"] = r["trained_tokens_per_s"] / base["trained_tokens_per_s"]
        r["speedup_cpu"] = r["trained_tokens_per_cpu_s"] / base["trained_tokens_per_cpu_s"]
        r["vs_trl_best"] = r["trained_tokens_per_s"] / trl_best["trained_tokens_per_s"] if trl_best else None
        print(f"| {name} | {r['steps']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} "
              f"| {r['trained_tokens_per_s']:.1f} "
              f"| {r['trained_tokens_per_cpu_s']:.1f} | {r['padding']:.1%} | {r['last_step_loss']:.4f} "
              f"| {r['final_mean_loss']:.4f} | {r['speedup']:.2f}x | {r['speedup_cpu']:.2f}x | "
              + (f"{r['vs_trl_best']:.2f}x |" if trl_best else "|"))
    for label, fp32_only in (("at their fastest", False), ("both in fp32", True)):
        ours, trl = fastest(results, "ours_", fp32_only), fastest(results, "trl_", fp32_only)
        if ours and trl:
            print(f"ours vs TRL {label}: {ours[0]} {ours[1]['trained_tokens_per_s']:.1f} vs {trl[0]} "
                  f"{trl[1]['trained_tokens_per_s']:.1f} trained tok/s = "
                  f"{ours[1]['trained_tokens_per_s'] / trl[1]['trained_tokens_per_s']:.2f}x")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} (1 min), {load[2]:.2f} (15 min)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "load_average_end": load},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
