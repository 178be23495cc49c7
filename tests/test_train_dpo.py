"""DPO through the training recipe (`--loss dpo`): the recipe's loss on a batch is `train.preference`'s by hand (the
loss test_feedback_dpo.py shows equal to TRL's), a short run learns a preference, a run stopped after a checkpoint
resumes to the same log rows as an uninterrupted one, the memory plan counts a pair's two rows, and a wrong setting
is refused in one line. Single process, on the tiny LLaMA of test_train.py, with pairs as notebook 09 writes them
(`feedback.pairs.save_pairs`, the reference from `feedback.dpo.reference_logps`)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import make_tiny_llama
from test_train_fsdp import RUN, launch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alpaca_helpers.data import load_seed_tasks
from alpaca_helpers.feedback.dpo import reference_logps, with_reference_logps
from alpaca_helpers.feedback.pairs import save_pairs
from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.prompts import format_prompt
from alpaca_helpers.train.config import LOSS_ROWS, TrainConfigError, check_run, make_config
from alpaca_helpers.train.distributed import dist_env
from alpaca_helpers.train.plan import PlanSettings, load_model_shape, memory_plan
from alpaca_helpers.train.preference import dpo_loss, dpo_metrics, pair_batch, sequence_logps
from alpaca_helpers.train.recipe import Recipe, main, read_train_log, train

MAX_LENGTH = 256
N_PAIRS = 16  # 12 to train on (3 steps of 4 per epoch), 4 held out
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")  # TRL's names
TIMING = {"seconds", "cpu_seconds", "tokens_per_s", "trained_tokens_per_s", "tokens_per_s_per_device", "mfu",
          "peak_memory_gb", "peak_reserved_gb"}  # what differs between two runs of the same rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, default_model_dir):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", default_model_dir)


@pytest.fixture(scope="module")
def pairs(tiny_model):
    """Short seed tasks; the chosen answer is the task's own, the rejected one the same in capitals (a preference
    a model can learn in a few steps), the reference the tiny model's own, computed once, as notebook 09 does."""
    tasks = [t for t in load_seed_tasks() if len(t["output"]) < 120 and len(t["instruction"] + t["input"]) < 200
             and t["output"].upper() != t["output"]][:N_PAIRS]
    made = [{"key": t["id"], "prompt": format_prompt(t), "chosen": t["output"], "rejected": t["output"].upper(),
             "chosen_score": 1.0, "rejected_score": 0.0} for t in tasks]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reference = reference_logps(model, AutoTokenizer.from_pretrained(tiny_model), made, max_length=MAX_LENGTH)
    return with_reference_logps(made, reference)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, pairs):
    return save_pairs(pairs, tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def dpo_config(model, data_path, out, **settings):
    values = {"model_name_or_path": str(model), "data_path": str(data_path), "output_dir": str(out), "loss": "dpo",
              "dpo_beta": 0.5, "global_batch_size": 4, "per_device_train_batch_size": 2, "max_steps": 6,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "bf16": False, "model_max_length": MAX_LENGTH,
              "val_set_size": 0, "progress_bar": False}
    return make_config(**{**values, **settings})


def same_rows(a: dict, b: dict) -> bool:
    """Two log rows agree on every field but the timings (floats to 1e-6)."""
    assert set(a) == set(b)
    for key in set(a) - TIMING:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), (a["step"], key)
        else:
            assert a[key] == b[key], (a["step"], key)
    return True


@pytest.mark.parametrize("trained_only", [True, False])
def test_the_recipes_dpo_loss_is_the_loss_by_hand(tmp_path, tiny_model, pairs, trained_only):
    """Step 1 of the recipe (2 micro-batches of 2 pairs, each chosen rows then rejected rows; logits at trained
    positions only, or everywhere) gives the loss and TRL's metrics of `preference`'s functions on the same pairs,
    by hand on a fresh model. The stored reference is shifted, so that the loss is not log 2."""
    shifted = [{**p, "ref_chosen_logps": p["ref_chosen_logps"] - 1.0 - i % 3,
                "ref_rejected_logps": p["ref_rejected_logps"] + 0.5 * (i % 2)} for i, p in enumerate(pairs)]
    data = save_pairs(shifted, tmp_path / "shifted.jsonl")
    cfg = dpo_config(tiny_model, data, tmp_path / "run", logits_on_trained_only=trained_only)
    recipe = Recipe(cfg, dist_env(force_cpu=True), check_run(cfg, 1, on_gpu=False))
    recipe.setup()
    assert recipe.run_setup.batch.accumulation == 2 and (recipe.head is not None) == trained_only
    batch = [recipe.data.records[i] for i in recipe.global_batch(1)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        chosen, rejected = sequence_logps(model, pair_batch(recipe.tokenizer, batch, MAX_LENGTH))
    ref = torch.tensor([[p["ref_chosen_logps"], p["ref_rejected_logps"]] for p in batch], dtype=torch.float64)
    by_hand = dpo_metrics(*dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], cfg.dpo_beta), chosen, rejected)
    recipe.model.train()
    row = recipe.train_step(1)
    assert row["loss"] == pytest.approx(by_hand["loss"], abs=1e-5) and abs(row["loss"] - math.log(2)) > 0.05
    assert {k: row[k] for k in METRICS} == pytest.approx({k: by_hand[k] for k in METRICS}, rel=1e-5, abs=1e-5)
    assert row["trained_tokens"] == sum(recipe.data.trained[i] for i in recipe.global_batch(1))


def test_a_short_dpo_run_learns_the_preference(tmp_path, tiny_model, pairs_file):
    """3 epochs of 12 pairs: the first step's policy is the reference (loss log 2, margin 0: the stored reference
    counts the tokens the recipe trains), then the loss falls and the rewards rank the chosen answer first; the
    held-out pairs' loss falls too, and the run ends as any run does (summary, model folder)."""
    out = tmp_path / "run"
    summary = train(dpo_config(tiny_model, pairs_file, out, max_steps=-1, num_train_epochs=3, val_set_size=4))
    log = read_train_log(out / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 10)) and summary["finished"] and summary["loss"] == "dpo"
    assert set(METRICS) <= set(log[0])
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and log[0]["rewards/margins"] == pytest.approx(
        0.0, abs=1e-4)
    last = log[-3:]  # the last epoch
    assert sum(r["loss"] for r in last) / 3 < math.log(2) - 0.2
    assert sum(r["rewards/accuracies"] for r in last) / 3 >= 0.75 and all(r["rewards/margins"] > 0 for r in last)
    assert summary["eval_loss_at_start"] == pytest.approx(math.log(2), abs=1e-4)
    assert summary["eval_loss"] < summary["eval_loss_at_start"]
    assert summary["examples"] == 12 and summary["validation_examples"] == 4
    assert (out / "model" / "model.safetensors").is_file()


def test_a_killed_dpo_run_resumes_to_the_same_rows(tmp_path, tiny_model, pairs_file):
    """A run stops after step 3 (its checkpoint is step 2's) with a torn last log line, as a kill mid-write leaves
    it; resumed, its log has the rows of an uninterrupted run: losses, TRL's metrics, held-out losses, grad norms."""
    settings = {"save_steps": 2, "val_set_size": 4, "eval_steps": 2}
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    train(dpo_config(tiny_model, pairs_file, whole, **settings))
    train(dpo_config(tiny_model, pairs_file, stopped, **settings, stop_after_steps=3))
    assert (stopped / "checkpoint-2").is_dir() and not (stopped / "model").exists()
    with open(stopped / "train_log.jsonl", "a") as f:
        f.write('{"step": 4, "loss"')  # killed in the middle of a write
    summary = train(dpo_config(tiny_model, pairs_file, stopped, **settings, resume=True))
    assert summary["finished"]
    rows, resumed = read_train_log(whole / "train_log.jsonl"), read_train_log(stopped / "train_log.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6] and "eval_loss" in resumed[3]
    assert all(same_rows(a, b) for a, b in zip(rows, resumed))


@pytest.mark.slow
def test_a_dpo_run_killed_for_real_resumes_to_the_same_rows(tmp_path, tiny_model, pairs_file):
    """`python -m alpaca_helpers.train --loss dpo` in its own process, SIGKILLed once its first checkpoint is on disk
    (wherever it then is: a later checkpoint, a torn log line); `--resume true` then gives the log rows of an
    uninterrupted run, every step, to 1e-6."""
    settings = {"save_steps": 2, "max_steps": 16, "val_set_size": 4, "eval_steps": 4}
    train(dpo_config(tiny_model, pairs_file, tmp_path / "whole", **settings))
    killed = tmp_path / "killed"
    flags = [f"--{k}={v}" for k, v in vars(dpo_config(tiny_model, pairs_file, killed, **settings)).items()
             if v is not None]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # the threads of this process: the same float sums
    proc = subprocess.Popen([sys.executable, "-m", "alpaca_helpers.train", *flags], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-2").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert not (killed / "model").exists()
    stopped_at = len(read_train_log(killed / "train_log.jsonl"))
    summary = train(dpo_config(tiny_model, pairs_file, killed, **settings, resume=True))
    assert summary["finished"] and stopped_at < 16
    rows, resumed = read_train_log(tmp_path / "whole" / "train_log.jsonl"), read_train_log(killed / "train_log.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 17))
    assert all(same_rows(a, b) for a, b in zip(rows, resumed))


@pytest.mark.slow
def test_two_sharded_processes_train_the_same_dpo_steps_as_one(tmp_path, tiny_model, pairs_file):
    """`accelerate launch` on 2 CPU processes (gloo, FSDP2), as test_train_fsdp.py launches SFT: the same losses, TRL's
    metrics and held-out losses as one process, step by step (fp32, 1e-4); rank 1 also runs an empty held-out share."""
    dpo = ["--loss", "dpo", "--data_path", str(pairs_file), "--dpo_beta", "0.5", "--save_steps", "0"]
    proc = launch(tiny_model, tmp_path / "sharded", *dpo)
    assert "FSDP over 2" in proc.stdout and "training preference pairs" in proc.stdout
    flags = dict(zip(RUN[::2], RUN[1::2]))
    single = {k.lstrip("-"): v for k, v in flags.items()} | {"model_name_or_path": str(tiny_model), "loss": "dpo",
                                                              "data_path": str(pairs_file), "dpo_beta": 0.5,
                                                              "save_steps": 0, "output_dir": str(tmp_path / "one")}
    train(make_config(**single))
    one, two = read_train_log(tmp_path / "one" / "train_log.jsonl"), read_train_log(tmp_path / "sharded" /
                                                                                     "train_log.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in ("loss", "eval_loss", *METRICS):
            assert (key in a) == (key in b) and a.get(key, 0.0) == pytest.approx(b.get(key, 0.0), abs=1e-4), key
    assert two[-1]["loss"] < two[0]["loss"]


def test_the_memory_plan_counts_two_rows_per_pair(tiny_model):
    shape = load_model_shape(str(tiny_model))
    plans = {loss: memory_plan(shape, PlanSettings.from_config(make_config(loss=loss), 1, gpu_memory_gb=80.0,
                                                              per_device=4, bf16=True)) for loss in LOSS_ROWS}
    assert plans["dpo"].components_gib["activations"] == pytest.approx(
        2 * plans["sft"].components_gib["activations"], rel=1e-2)
    assert set(Recipe.OBJECTIVES) == set(LOSS_ROWS)


def test_dpo_settings_and_data_are_refused_in_one_line(tmp_path, tiny_model, pairs, capsys):
    with pytest.raises(TrainConfigError, match=r"^loss dpo does not take packing=true .*: unset it$"):
        make_config(loss="dpo", packing=True)
    with pytest.raises(TrainConfigError, match=r"^loss: expected sft or dpo, got 'ppo'$"):
        make_config(loss="ppo")
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for p in pairs))
    assert main(["--loss", "dpo", "--data_path", str(bare), "--model_name_or_path", str(tiny_model),
                 "--output_dir", str(tmp_path / "run"), "--bf16", "false"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pair 0: no reference log-probability" in err[0]
