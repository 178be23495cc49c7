"""Alpaca's 7B run rehearsed offline, at a size a CPU trains in seconds: notebook 04 under papermill with
`preset="alpaca_7b"` and only the model and data swapped for small stand-ins of the same kind.

- the model: LLaMA-7B's own config.json made small (2 layers, hidden 64; `rehearsal.small_llama`), random
  weights, and the real LLaMA-1/2 tokenizer (SentencePiece, 32,000 tokens, no pad token);
- the data: `tatsu-lab/alpaca`'s parquet layout (`rehearsal.alpaca_parquet`) of the seed tasks' instructions;
- the run: two gloo processes, FSDP full shard (`cpu_processes=2`, `gpus=0`), the preset's global batch 128
  (4 per device × 16 accumulation × 2), cosine schedule, group_by_length, max length 512.

It covers what the 7B run does and no other test did with LLaMA's tokenizer: the pad token added and the
embeddings resized (32,000 -> 32,001 -> 32,064 rows) on rank 1's meta skeleton and filled by broadcast from
rank 0; a checkpoint, a real SIGKILL of the launched run, and a resume through the notebook's `extra_args`;
the final save reloaded with plain transformers, answering greedily and stopping at eos; and the GGUF export,
whose SentencePiece vocabulary (its scores and token types) gives the Hugging Face tokenizer's ids on every shipped
example's prompt.
Measured: 76 s of wall time for the whole file on 2 shared CPU cores (both notebook runs 62 s).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gguf
import papermill
import psutil
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from alpaca_helpers.course import NOTEBOOKS_DIR, run_notebook
from alpaca_helpers.data import load_alpaca, load_alpaca_eval, load_davinci_predictions, load_seed_tasks
from alpaca_helpers.demo.decoding import Decoding
from alpaca_helpers.demo.generate import generate, generate_tokens
from alpaca_helpers.paths import REPO_ROOT, data_dir
from alpaca_helpers.prompts import format_prompt
from alpaca_helpers.train.config import load_preset
from alpaca_helpers.train.distributed import list_checkpoints
from alpaca_helpers.train.rehearsal import SIZE_FIELDS, alpaca_parquet, llama_7b_config, small_llama
from alpaca_helpers.train.tokenize import encode_prompt, resized_rows

pytestmark = pytest.mark.slow

NOTEBOOK = NOTEBOOKS_DIR / "04_train.ipynb"
PRESET = REPO_ROOT / "configs" / "alpaca_7b.yaml"
ANSWER = "Done."  # every example's output: one short answer a random 4M-parameter model learns to end with eos
# Overrides of the preset beyond size, for a random tiny model to learn anything in ~16 steps: the preset's
# 2e-5 only nudges pretrained weights; from random, 3e-2 gets the short answer and its eos to dominate the
# 32,064 logits. One step per epoch (174 examples, global batch 128), so 16 epochs make 16 steps.
LEARNING_RATE = 3e-2
EPOCHS = 16
SAVE_STEPS = 4  # the preset's 100 would come after the run's end
MAX_NEW_TOKENS = 12
KILL_WITHIN_S = 300


def records() -> list[dict]:
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": ANSWER}
            for r in load_seed_tasks()]


def shipped_prompts() -> list[str]:
    """Every shipped Alpaca-shaped example (seed tasks, text-davinci-003's and AlpacaEval's answers, the safety
    set) as the Alpaca prompt the model is fed."""
    examples = (load_seed_tasks() + load_davinci_predictions() + load_alpaca_eval()
                + load_alpaca(data_dir() / "safety_set.json"))
    return [format_prompt(r) for r in examples]


def run_processes(out: Path) -> list:
    """The launched run's processes (accelerate's launcher and the ranks): their command lines name `out`."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "alpaca_helpers.train" in cmdline and str(out) in cmdline:
            found.append(proc)
    return found


def kill_after_first_checkpoint(out: Path, seen: dict) -> None:
    """SIGKILL every process of the run in `out` once a complete checkpoint is there (as a lost node would
    end it: no handler runs); what was there at the kill goes into `seen`."""
    deadline = time.monotonic() + KILL_WITHIN_S
    while time.monotonic() < deadline:
        if list_checkpoints(out):
            procs = run_processes(out)
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):  # a rank already ended by the launcher's exit
                    proc.send_signal(signal.SIGKILL)
            seen.update(killed=len(procs), checkpoints=[step for step, _ in list_checkpoints(out)],
                        model_saved=(out / "model").exists())
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    """Notebook 04 killed after its first checkpoint, then run again with `--resume true`."""
    root = tmp_path_factory.mktemp("rehearsal_7b")
    started = time.perf_counter()
    base = small_llama(root / "llama-7b-small")  # small_llama's default size: 2 layers, hidden 64
    data = alpaca_parquet(records(), root / "tatsu-lab-alpaca")
    out = root / "train"
    params = {"preset": "alpaca_7b", "gpus": 0, "cpu_processes": 2, "model_name_or_path": str(base),
              "data_path": str(data), "learning_rate": LEARNING_RATE, "num_train_epochs": EPOCHS,
              "max_new_tokens": MAX_NEW_TOKENS, "extra_args": f"--save_steps {SAVE_STEPS}", "output_dir": str(out)}
    seen: dict = {}
    killer = threading.Thread(target=kill_after_first_checkpoint, args=(out, seen), daemon=True)
    killer.start()
    with pytest.raises(papermill.PapermillExecutionError) as killed:
        run_notebook(NOTEBOOK, root / "killed", params, progress=False, solutions=True)
    killer.join()
    log_at_kill = (out / "train_log.jsonl").read_text()
    resumed = {**params, "extra_args": f"{params['extra_args']} --resume true"}
    executed = run_notebook(NOTEBOOK, root / "resumed", resumed, progress=False, solutions=True)
    return {"base": base, "out": out, "killed": killed.value, "seen": seen, "log_at_kill": log_at_kill,
            "text": executed.read_text(), "summary": json.loads((out / "summary.json").read_text()),
            "run": json.loads((out / "train_summary.json").read_text()), "root": root,
            "seconds": time.perf_counter() - started}


def test_the_run_is_the_alpaca_7b_preset_on_two_sharded_processes(rehearsal):
    """Everything but the size (and the overrides above) is the preset's and LLaMA-7B's."""
    summary, run = rehearsal["summary"], rehearsal["run"]
    assert f"--config {PRESET}" in summary["command"] and "--num_processes 2" in summary["command"]
    state = json.loads((rehearsal["out"] / f"checkpoint-{SAVE_STEPS * 3}" / "trainer_state.json").read_text())
    config, preset = state["config"], load_preset(PRESET)
    changed = {"model_name_or_path", "data_path", "learning_rate", "num_train_epochs", "save_steps", "resume",
               "output_dir", "device", "per_device_train_batch_size"}
    assert {k: v for k, v in preset.items() if k not in changed} == {k: config[k] for k in preset if k not in changed}
    # auto: the plan's choice
    assert preset["per_device_train_batch_size"] is None and config["per_device_train_batch_size"] in (1, 2, 4)
    assert config["global_batch_size"] == 128 and config["model_max_length"] == 512 and config["group_by_length"]
    assert run["fsdp"] and run["world_size"] == 2 and run["layer_class"] == "LlamaDecoderLayer"
    assert sum(run["parameters_per_rank"]) == run["parameters"]
    assert min(run["parameters_per_rank"]) > 0.4 * run["parameters"]
    saved = json.loads((Path(run["model_dir"]) / "config.json").read_text())
    llama = llama_7b_config()
    same = {k for k in llama if k not in (*SIZE_FIELDS, "vocab_size", "torch_dtype", "transformers_version",
                                          "max_sequence_length", "pad_token_id")}
    assert {k: saved.get(k) for k in same} == {k: llama[k] for k in same}
    assert run["steps"] == EPOCHS and run["finished"] and run["examples"] == 174  # one longer than 512 dropped


def test_the_pad_token_is_added_and_the_embeddings_resized_and_broadcast(rehearsal):
    """32,000 tokens + <pad> = 32,001, rounded to 32,064 rows: on rank 0 from the weights, on rank 1 on its meta
    skeleton, whose shards (rows 16,032 on) come by broadcast. Rows no input ever uses get no gradient: they
    must still be exactly the mean of the base model's rows that rank 0 computed, rank 1's half included."""
    run = rehearsal["run"]
    assert run["ranks_that_loaded_full_weights"] == 1
    folder = Path(run["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(rehearsal["base"]).pad_token_id is None
    assert len(tokenizer) == 32_001 and tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 32_000
    rows = resized_rows(32_000, len(tokenizer))
    assert rows == 32_064 == json.loads((folder / "config.json").read_text())["vocab_size"]
    tuned, base = load_file(folder / "model.safetensors"), load_file(rehearsal["base"] / "model.safetensors")
    embed = tuned["model.embed_tokens.weight"]
    assert embed.shape == tuned["lm_head.weight"].shape == (rows, 64)
    mean = base["model.embed_tokens.weight"].mean(dim=0)
    assert (embed[32_000:] - mean).abs().max().item() < 1e-6
    assert not torch.equal(embed[:32_000], base["model.embed_tokens.weight"])  # and the used rows trained


def test_a_killed_run_resumes_from_its_checkpoint_and_finishes(rehearsal):
    """SIGKILL of the launched run (launcher and both ranks) after its first checkpoint; the notebook fails in
    one line; `--resume true` through `extra_args` continues from the latest complete checkpoint."""
    seen, killed, out = rehearsal["seen"], rehearsal["killed"], rehearsal["out"]
    assert seen["killed"] >= 3 and not seen["model_saved"]  # the run was alive, and not finished
    assert killed.ename == "LaunchError" and "training exited with status" in killed.evalue
    logged = [json.loads(line)["step"] for line in rehearsal["log_at_kill"].splitlines()]
    start = max(seen["checkpoints"])
    assert SAVE_STEPS <= start <= max(logged) < EPOCHS
    assert f"resumed from {out / f'checkpoint-{start}'} at step {start}" in rehearsal["text"]
    assert f"step {start + 1}/{EPOCHS}" in rehearsal["text"] and f"step {start}/{EPOCHS}" not in rehearsal["text"]
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, EPOCHS + 1))
    ckpt = out / f"checkpoint-{SAVE_STEPS * 3}"
    assert sorted(p.name for p in (ckpt / "model_optim").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 < 9 < losses[0]


def test_the_saved_folder_reloads_and_answers_end_at_eos(rehearsal):
    """Plain transformers loads model/; greedy answers through the course's generation end on eos (without the
    stop markers, eos or max_new_tokens are the only ends: a row shorter than max_new_tokens ended on eos)."""
    folder = rehearsal["run"]["model_dir"]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    instructions = ["Give three tips for staying healthy.", "What is the capital of Tanzania?", "Add 12 and 30."]
    rows = generate_tokens(model, tokenizer, [format_prompt({"instruction": i}) for i in instructions],
                           decoding=Decoding(temperature=0, max_new_tokens=MAX_NEW_TOKENS, stop_at_markers=False))
    assert all(len(row) < MAX_NEW_TOKENS for row in rows), rows
    assert [tokenizer.decode(row) for row in rows] == [ANSWER] * len(instructions)
    greedy = Decoding(temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    assert generate(model, tokenizer, instructions[0], decoding=greedy) == ANSWER
    assert rehearsal["summary"]["answers"]["fine-tuned"] == ANSWER  # the notebook's own answer, too


def test_the_gguf_export_keeps_the_tokenizer_and_the_answers(rehearsal):
    """`python -m alpaca_helpers.demo.export_gguf` on model/ (LLaMA-1/2's real tokenizer, SentencePiece BPE with
    byte fallback, plus the <pad> that training added): written as llama.cpp's "llama" tokenizer model, scores
    from the merges, byte and control types, the unused embedding rows as UNUSED; transformers reads it back to
    the Hugging Face tokenizer's ids on every shipped example's prompt; the GGUF model answers the same, ending at
    eos."""
    folder, gguf_dir = rehearsal["run"]["model_dir"], rehearsal["root"] / "gguf"
    proc = subprocess.run([sys.executable, "-m", "alpaca_helpers.demo.export_gguf", folder,
                           str(gguf_dir / "alpaca-7b-rehearsal.gguf"), "--no-progress"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fields = gguf.GGUFReader(gguf_dir / "alpaca-7b-rehearsal.gguf").fields
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    scores = [float(fields["tokenizer.ggml.scores"].parts[i][0]) for i in fields["tokenizer.ggml.scores"].data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    assert len(scores) == len(types) == 32_064
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert set(types[3:259]) == {gguf.TokenType.BYTE} and types[32_000] == gguf.TokenType.CONTROL
    assert set(types[32_001:]) == {gguf.TokenType.UNUSED} and "tokenizer.ggml.merges" not in fields
    # "▁t", "er", then "▁▁" (last in LLaMA's merges): earlier merges score higher, as in tokenizer.model
    assert scores[260] > scores[261] > scores[259]
    hf = AutoTokenizer.from_pretrained(folder)
    exported = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="alpaca-7b-rehearsal.gguf")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(exported, name) == getattr(hf, name), name
    texts = [format_prompt({"instruction": "Name three primary colors."}), "The capital of France is",
             format_prompt({"instruction": "Translate to French.", "input": "Good morning, 12345 alpacas!"}),
             "  two spaces, a <pad> and </s>", "naïve café ☕ 3.14159", "\n\n   x"]
    for text in texts:
        assert exported(text)["input_ids"] == hf(text)["input_ids"], text
    prompts = shipped_prompts()
    assert len(prompts) > 1_000
    assert [encode_prompt(exported, p) for p in prompts] == [encode_prompt(hf, p) for p in prompts]
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="alpaca-7b-rehearsal.gguf",
                                                 dtype=torch.float32).eval()
    rows = generate_tokens(model, exported, prompts[:3],
                           decoding=Decoding(temperature=0, max_new_tokens=MAX_NEW_TOKENS, stop_at_markers=False))
    assert [exported.decode(row) for row in rows] == [ANSWER] * 3


def test_the_rehearsal_fits_its_ci_budget(rehearsal):
    """Both notebook runs, the model and the data: well inside CI's 30 minutes (measured 62 s)."""
    assert rehearsal["seconds"] < 300
