"""Training: presets and flags, batch arithmetic, data order, layer discovery, checkpoints, NaN guard.

Single-process and in-process (seconds). The multi-process (FSDP, gloo) runs are in test_train_fsdp.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, get_scheduler

from alpaca_helpers.data import AlpacaFormatError, load_eval_set, load_seed_tasks, save_alpaca, source_counts
from alpaca_helpers.precision import NativeBf16
from alpaca_helpers.train import distributed
from alpaca_helpers.train import plan as plan_mod
from alpaca_helpers.train import recipe as train_mod
from alpaca_helpers.train.batches import (
    AlpacaCollator,
    deal_micro_batches,
    global_batches,
    load_records,
    micro_batches,
    pack_features,
    rank_micro_batches,
    split_validation,
)
from alpaca_helpers.train.config import (
    CONFIGS_DIR,
    FIELDS,
    TrainConfigError,
    build_parser,
    check_run,
    choose_preset,
    list_presets,
    load_preset,
    make_config,
    overrides,
    parse_config,
    plan_batch,
    train_args,
)
from alpaca_helpers.train.distributed import dist_env
from alpaca_helpers.train.launch import LaunchError, epoch_mean_loss, launch_command, run_streaming, show_command
from alpaca_helpers.train.plan import model_shape
from alpaca_helpers.train.recipe import (
    NonFiniteLossError,
    Recipe,
    TrainedPositionsHead,
    first_step_inputs,
    main,
    make_optimizer,
    memory_plan_for_run,
    train,
    train_step_by_hand,
)
from alpaca_helpers.train.rehearsal import small_llama
from alpaca_helpers.train.tokenize import IGNORE_INDEX, build_dataset


def make_tiny_llama(folder: Path, tokenizer_dir: Path, nan: bool = False) -> Path:
    """A 2-layer, hidden-64 LLaMA with the default model's tokenizer, saved as a plain HF folder."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if nan:  # fault injection: one poisoned weight makes the first loss NaN
        with torch.no_grad():
            model.model.norm.weight[0] = float("nan")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, default_model_dir):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", default_model_dir)


# --- presets and flags -------------------------------------------------------------------------------


def test_the_command_line_help_shows_every_setting():
    """`python -m alpaca_helpers.train --help` prints every TrainConfig field (argparse formats help with %)."""
    text = build_parser().format_help()
    assert all(f"--{name}" in text for name in FIELDS) and "10% of" in text


def test_presets_are_the_alpaca_recipes_and_name_their_command():
    assert {"alpaca_7b", "alpaca_13b", "cpu_default"} <= set(list_presets())
    for name in list_presets():
        path = CONFIGS_DIR / f"{name}.yaml"
        first = path.read_text().splitlines()[0]
        assert first.startswith("# accelerate launch ") and f"--config configs/{name}.yaml" in first
        assert "-m alpaca_helpers.train" in first
        load_preset(path)  # every key is a real setting
    seven = make_config(**load_preset(CONFIGS_DIR / "alpaca_7b.yaml"))
    assert (seven.learning_rate, seven.num_train_epochs, seven.global_batch_size, seven.model_max_length,
            seven.weight_decay, seven.warmup_ratio, seven.lr_scheduler_type) == (2e-5, 3, 128, 512, 0.0, 0.03,
                                                                                 "cosine")
    assert seven.bf16 is None and seven.tf32 is None and seven.fsdp == "auto"  # None: decided by the device
    assert seven.val_set_size == 0  # Alpaca trained on all 52K
    thirteen = make_config(**load_preset(CONFIGS_DIR / "alpaca_13b.yaml"))
    assert (thirteen.learning_rate, thirteen.num_train_epochs) == (1e-5, 5)


def test_defaults_are_the_7b_recipe_and_flags_override_a_preset():
    assert parse_config([]).learning_rate == 2e-5
    cfg = parse_config(["--config", "alpaca_13b", "--learning_rate", "3e-5", "--packing", "true",
                        "--max_examples", "none", "--bf16", "false"])
    assert (cfg.learning_rate, cfg.num_train_epochs, cfg.packing, cfg.max_examples, cfg.bf16) == (3e-5, 5, True, None,
                                                                                                 False)
    with pytest.raises(TrainConfigError, match="learning_rate: cannot read 'fast'"):
        parse_config(["--learning_rate", "fast"])
    with pytest.raises(TrainConfigError, match="no such preset"):
        parse_config(["--config", "alpaca_70b"])


def test_unknown_preset_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-5\nfsdp_layer: LlamaDecoderLayer\n")
    with pytest.raises(TrainConfigError, match=r"unknown setting\(s\) \['fsdp_layer'\]"):
        load_preset(bad)


# --- batch arithmetic --------------------------------------------------------------------------------


@pytest.mark.parametrize("world, per_device, accumulation", [(8, 4, 4), (4, 4, 8), (1, 4, 32), (2, 64, 1)])
def test_global_batch_stays_128_whatever_the_process_count(world, per_device, accumulation):
    plan = plan_batch(128, per_device, world)
    assert plan.accumulation == accumulation
    assert plan.per_device * plan.accumulation * plan.world_size == 128


def test_impossible_batch_split_is_a_clear_error():
    with pytest.raises(TrainConfigError,
                       match=r"not divisible by per_device_train_batch_size 3 × 8 process\(es\) = 24"):
        plan_batch(128, 3, 8)
    with pytest.raises(TrainConfigError, match="not the global batch 128"):
        plan_batch(128, 4, 8, accumulation=2)
    assert plan_batch(128, 4, 8, accumulation=4).accumulation == 4


def test_batch_error_comes_before_any_model_loads(capsys):
    # The model path does not exist: reaching the model would fail differently.
    code = main(["--model_name_or_path", "/nonexistent/llama-7b", "--per_device_train_batch_size", "3"])
    assert code == 1
    assert "not divisible by per_device_train_batch_size 3" in capsys.readouterr().err


# --- data order --------------------------------------------------------------------------------------


def test_global_batches_are_a_seeded_permutation():
    a = global_batches(100, 16, seed=1, epoch=0)
    assert len(a) == 6 and all(len(b) == 16 for b in a)  # the last incomplete batch is dropped
    assert len({i for b in a for i in b}) == 96
    assert a == global_batches(100, 16, seed=1, epoch=0)
    assert a != global_batches(100, 16, seed=1, epoch=1)


@pytest.mark.parametrize("group", [True, False])
def test_ranks_split_each_global_batch_exactly(group):
    lengths = [(i * 37) % 101 + 5 for i in range(64)]
    batch = global_batches(64, 32, seed=0, epoch=0)[0]
    plan = plan_batch(32, 4, 2)
    parts = [rank_micro_batches(batch, lengths, plan, r, group) for r in range(2)]
    assert all(len(p) == plan.accumulation and all(len(m) == 4 for m in p) for p in parts)
    assert sorted(i for p in parts for m in p for i in m) == sorted(batch)
    if group:  # similar lengths share a micro-batch: less padding than in random order
        def waste(ps):
            return sum(max(lengths[i] for i in m) * len(m) - sum(lengths[i] for i in m) for p in ps for m in p)
        random_parts = [rank_micro_batches(batch, lengths, plan, r, False) for r in range(2)]
        assert waste(parts) < waste(random_parts) / 3


def test_micro_batches_are_dealt_so_that_ranks_balance():
    """Sorted longest first and dealt round-robin, rank 0 would get the longest micro-batch of every round
    (here 8 rounds over 4 ranks: the most work in every step). Dealt by work, the ranks' totals stay within
    a few percent, and micro-batch k of every rank still comes from round k (similar lengths)."""
    lengths = [(i * 37) % 101 + 20 for i in range(128)]
    for step in range(4):
        batch = global_batches(128, 128, seed=step, epoch=0)[0]
        cut = micro_batches(batch, lengths, 4, group_by_length=True)

        def work(ms):
            return sum(len(m) * max(lengths[i] for i in m) for m in ms)

        round_robin = [work(cut[r::4]) for r in range(4)]
        assert round_robin[0] == max(round_robin) and max(round_robin) / min(round_robin) > 1.1
        dealt = deal_micro_batches(cut, lengths, 4)
        assert max(map(work, dealt)) / min(map(work, dealt)) < 1.03
        assert all(dealt[r][k] in cut[4 * k:4 * k + 4] for r in range(4) for k in range(8))
    # the LM head's work per trained token counts too when asked: equal padded work, unequal trained tokens
    lengths, trained = [10] * 8, [9, 1, 9, 1, 9, 1, 9, 1]
    by_head = deal_micro_batches([[0], [1], [2], [3]], lengths, 2, trained, head_weight=10.0)
    assert sorted(sum(trained[i] for m in ms for i in m) for ms in by_head) == [10, 10]


# --- layer discovery ---------------------------------------------------------------------------------


def test_decoder_layer_class_is_found_from_the_model(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert distributed.find_layer_class(model).__name__ == "LlamaDecoderLayer"
    assert distributed.find_layer_class(model, "LlamaDecoderLayer").__name__ == "LlamaDecoderLayer"
    model._no_split_modules = None  # falls back to the class repeated in the layer list
    assert distributed.find_layer_class(model).__name__ == "LlamaDecoderLayer"
    with pytest.raises(ValueError, match="'LLaMADecoderLayer' is not in this model.*LlamaDecoderLayer"):
        distributed.find_layer_class(model, "LLaMADecoderLayer")


# --- checkpoints -------------------------------------------------------------------------------------


def _tiny_training_state(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    ids = torch.arange(3, 19)[None]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_checkpoint_round_trip_keeps_last_n(tmp_path, tiny_model):
    model, optimizer, scheduler = _tiny_training_state(tiny_model)
    for step in range(1, 4):
        _step(model, optimizer, scheduler)
        distributed.save_checkpoint(tmp_path, step, model, optimizer, scheduler, {"note": "x"}, rank=0, keep_last=2)
    assert [s for s, _ in distributed.list_checkpoints(tmp_path)] == [2, 3]
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    rng_after_save = torch.rand(3)
    fresh, fresh_opt, fresh_sched = _tiny_training_state(tiny_model)
    state = distributed.load_checkpoint(distributed.latest_checkpoint(tmp_path), fresh, fresh_opt, fresh_sched, rank=0)
    assert state["step"] == 3 and state["note"] == "x"
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())
    assert fresh_sched.last_epoch == scheduler.last_epoch
    assert torch.equal(torch.rand(3), rng_after_save)  # RNG restored to its state at the save
    # The optimizer state came back too: one more identical step gives identical weights.
    _step(model, optimizer, scheduler)
    _step(fresh, fresh_opt, fresh_sched)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_kill_during_save_leaves_the_last_good_checkpoint(tmp_path, tiny_model, monkeypatch):
    model, optimizer, scheduler = _tiny_training_state(tiny_model)
    _step(model, optimizer, scheduler)
    good = distributed.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, rank=0, keep_last=1)
    real_save = dcp.save

    def killed_mid_save(state, checkpoint_id):  # fault injection: half the files, then the process dies
        real_save(state, checkpoint_id=checkpoint_id)
        next(Path(checkpoint_id).glob("*.distcp")).write_bytes(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(dcp, "save", killed_mid_save)
    _step(model, optimizer, scheduler)
    with pytest.raises(KeyboardInterrupt):
        distributed.save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}, rank=0, keep_last=1)
    assert distributed.latest_checkpoint(tmp_path) == good
    fresh, fresh_opt, fresh_sched = _tiny_training_state(tiny_model)
    assert distributed.load_checkpoint(good, fresh, fresh_opt, fresh_sched, rank=0)["step"] == 1
    monkeypatch.setattr(dcp, "save", real_save)
    distributed.save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}, rank=0, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]  # torn temp folder and old one gone


# --- NaN guard ---------------------------------------------------------------------------------------


def test_nan_loss_stops_with_step_and_example_ids(tmp_path, default_model_dir):
    poisoned = make_tiny_llama(tmp_path / "nan_model", default_model_dir, nan=True)
    cfg = make_config(model_name_or_path=str(poisoned), output_dir=str(tmp_path / "run"), max_examples=16,
                      global_batch_size=4, per_device_train_batch_size=2, max_steps=2)
    with pytest.raises(NonFiniteLossError,
                       match=r"step 1: loss nan .* example ids of the batch: \[\d+, \d+, \d+, \d+\]"):
        train(cfg)
    assert not (tmp_path / "run" / "model").exists()


def test_single_process_run_logs_every_step_and_saves_a_loadable_folder(tmp_path, tiny_model):
    out = tmp_path / "run"
    summary = train(make_config(model_name_or_path=str(tiny_model), output_dir=str(out), max_examples=18,
                                global_batch_size=8, per_device_train_batch_size=4, num_train_epochs=2,
                                learning_rate=1e-3, packing=True))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and summary["finished"] and summary["total_steps"] == 4
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "trained_tokens_per_s", "mfu", "peak_memory_gb"):
        assert key in log[0]
    assert log[0]["mfu"] is None  # no MFU on CPU
    assert log[-1]["loss"] < log[0]["loss"]
    assert max(r["lr"] for r in log) == pytest.approx(1e-3)
    assert sum(r["padding"] for r in log) / len(log) < 0.1  # packing leaves little padding
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 4
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert next(model.parameters()).dtype == torch.float32
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (out / "model").iterdir()}


# --- launching from a notebook -----------------------------------------------------------------------


def test_launch_command_for_cpu_and_gpus():
    cpu = launch_command(["--max_steps", "2"], gpus=0, cpu_processes=1, gpus_present=0)
    assert cpu[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--cpu" in cpu
    assert cpu[-6:] == ["-m", "alpaca_helpers.train", "--max_steps", "2", "--device", "cpu"]
    sharded_cpu = launch_command([], gpus=0, cpu_processes=2, gpus_present=0)
    assert "--multi_gpu" in sharded_cpu and sharded_cpu[sharded_cpu.index("--num_processes") + 1] == "2"
    eight = launch_command(["--config", "configs/alpaca_7b.yaml"], gpus=8, gpus_present=8)
    assert show_command(eight).startswith("accelerate launch ")
    assert "--multi_gpu --num_processes 8" in show_command(eight)
    with pytest.raises(LaunchError, match=r"gpus=8 but this machine has 0 GPU\(s\)"):
        launch_command([], gpus=8, gpus_present=0)


def test_run_streaming_shows_lines_live_and_fails_with_the_tail():
    seen = []
    lines = run_streaming([sys.executable, "-c", "import sys\nfor i in range(3): print('line', i)\n"
                           "sys.stderr.write('bar 1\\rbar 2\\n')"], echo=seen.append)
    assert seen == lines == ["line 0", "line 1", "line 2", "bar 2"]
    failing = [sys.executable, "-c", "import sys\nfor i in range(100): print('step', i)\nsys.exit(3)"]
    with pytest.raises(LaunchError, match=r"status 3; last lines:\nstep 60\n(.|\n)*step 99$"):
        run_streaming(failing, echo=lambda line: None)


def test_wrong_layer_class_fails_the_run_before_training(tmp_path, tiny_model, capsys):
    code = main(["--model_name_or_path", str(tiny_model), "--output_dir", str(tmp_path), "--max_examples", "8",
                 "--global_batch_size", "4", "--fsdp_transformer_layer_cls_to_wrap", "LLaMADecoderLayer"])
    assert code == 1
    err = capsys.readouterr().err
    assert "'LLaMADecoderLayer' is not in this model" in err and "LlamaDecoderLayer" in err
    assert not (tmp_path / "train_log.jsonl").exists()


def test_training_refuses_a_file_with_evaluation_tasks(tmp_path):
    path = save_alpaca(load_seed_tasks()[:5] + load_eval_set()[:1], tmp_path / "leaky.json")
    with pytest.raises(AlpacaFormatError, match="repeat evaluation-set instructions"):
        load_records(str(path))
    assert len(load_records("seed")) == 175


def test_epoch_mean_loss_groups_steps_by_epoch():
    log = pd.DataFrame({"step": [1, 2, 3, 4, 5, 6], "epoch": [0.3333, 0.6667, 1.0, 1.3333, 1.6667, 2.0],
                        "loss": [3.0, 2.0, 1.0, 1.0, 0.5, 0.0]})
    table = epoch_mean_loss(log)
    assert table["loss"].to_dict() == {1: 2.0, 2: 0.5}
    assert table["first_step"].tolist() == [1, 4] and table["last_step"].tolist() == [3, 6]


@pytest.mark.parametrize("packing", [False, True])
def test_trained_positions_head_gives_the_full_heads_loss_and_gradients(tiny_model, packing):
    """Logits only where a label is trained: same loss and gradients as `labels=` on every position."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = build_dataset(load_seed_tasks()[:6], tok, max_length=256).dataset
    features = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    if packing:
        features = pack_features(features, sum(len(f["input_ids"]) for f in features))
    batch = AlpacaCollator(pad_token_id=tok.pad_token_id)(features)
    n = int((batch["labels"][:, 1:] != -100).sum())
    grads = []
    for selective in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        if selective:
            loss = TrainedPositionsHead(model).loss(model, batch, n)
        else:
            loss = model(**batch, use_cache=False, num_items_in_batch=n).loss
        loss.backward()
        grads.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-6, rtol=1e-5)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-6, rtol=1e-4)
    assert model(**{k: v for k, v in batch.items() if k != "labels"}).logits.shape[1] == batch["input_ids"].shape[1]


# --- data by name, validation split, torn log, the full-scale command ---------------------------------


def test_held_out_examples_never_reach_a_training_batch(tiny_model, tmp_path):
    cfg = make_config(model_name_or_path=str(tiny_model), output_dir=str(tmp_path), max_examples=60,
                      val_set_size=0.25, global_batch_size=8, per_device_train_batch_size=4, num_train_epochs=3)
    recipe = Recipe(cfg, dist_env(force_cpu=True), check_run(cfg, 1, on_gpu=False))
    recipe.setup_model_source()
    recipe.setup_data()  # no weights needed
    key = lambda r: (r["instruction"], r["input"])  # noqa: E731
    held_out = {key(r) for r in recipe.val.records}
    assert len(held_out) == 15 and len(recipe.data.records) == 45
    seen = {key(recipe.data.records[recipe.data.example_ids[i]])
            for step in range(1, recipe.steps + 1) for i in recipe.global_batch(step)}
    assert seen and not seen & held_out
    assert source_counts(recipe.data.records) == {}
    with pytest.raises(TrainConfigError, match="nothing would be left to train on"):
        split_validation(recipe.val.records, 15, seed=0)


def test_max_examples_is_a_seeded_sample_of_every_source(tmp_path):
    seeds = [{**r, "source": "seed"} for r in load_seed_tasks()]
    generated = [{"instruction": f"Write a haiku about the number {i}.", "input": "", "output": "...",
                  "source": "self-instruct"} for i in range(100)]
    path = save_alpaca(seeds + generated, tmp_path / "train_set.json")  # as notebook 02 writes it
    sample = load_records(str(path), max_examples=80, seed=42)
    assert len(sample) == 80 and {r["source"] for r in sample} == {"seed", "self-instruct"}
    assert sample == load_records(str(path), max_examples=80, seed=42)


def test_resume_survives_a_torn_last_log_line(tmp_path, tiny_model):
    out = tmp_path / "run"
    args = dict(model_name_or_path=str(tiny_model), output_dir=str(out), max_examples=20, global_batch_size=4,
                per_device_train_batch_size=2, max_steps=4, model_max_length=256, save_steps=2)
    train(make_config(**args, stop_after_steps=3))
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"step": 4, "loss"')  # a kill in the middle of a write
    summary = train(make_config(**args, resume=True))
    assert summary["finished"]
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_full_scale_command_with_a_hub_layout_copy_builds_the_launch_and_trains(tmp_path, tiny_model, monkeypatch):
    """Issue 12's command, `-p gpus 8 -p model_name_or_path huggyllama/llama-7b -p data_path tatsu-lab/alpaca`,
    with `tatsu-lab/alpaca` a local folder in Hub layout; then the same arguments train on CPU, tiny."""
    parquet = tmp_path / "tatsu-lab" / "alpaca" / "data" / "train-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True)
    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"], "text": "..."}
            for r in load_seed_tasks()[:24]]
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    monkeypatch.chdir(tmp_path)

    preset = choose_preset("auto", gpus=8)
    assert preset == CONFIGS_DIR / "alpaca_7b.yaml"
    settings = overrides(model_name_or_path="huggyllama/llama-7b", data_path="tatsu-lab/alpaca", max_steps=-1)
    args = train_args(preset, settings, tmp_path / "out")
    cmd = launch_command(args, gpus=8, gpus_present=8)
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "8" and "--cpu" not in cmd
    assert {"--model_name_or_path=huggyllama/llama-7b", "--data_path=tatsu-lab/alpaca", str(preset)} <= set(cmd)

    tiny = ["--model_name_or_path", str(tiny_model), "--max_steps", "2", "--global_batch_size", "4",
            "--per_device_train_batch_size", "2", "--model_max_length", "256", "--device", "cpu"]
    assert main(args + tiny) == 0
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["finished"] and summary["data_path"] == "tatsu-lab/alpaca" and summary["examples"] > 20


def test_unreachable_data_or_model_names_fail_in_one_line(tmp_path, tiny_model, capsys):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "alpaca_helpers.train", "--data_path", "yahma/alpaca-cleaned",
                           "--model_name_or_path", str(tiny_model), "--output_dir", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: yahma/alpaca-cleaned: not a local file or folder")
    assert "HF_HUB_OFFLINE is set" in last
    assert main(["--model_name_or_path", "/nope", "--output_dir", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip() == "error: /nope: no such model folder"


def test_notebook_preset_policy():
    """gpus >= 1 means Alpaca's run: LLaMA-7B (by a Hub name that needs no access request) on the 52K."""
    assert choose_preset("auto", gpus=0).name == "cpu_default.yaml"
    for gpus, lora in ((1, False), (8, False), (1, True)):
        preset = load_preset(choose_preset("auto", gpus=gpus, lora=lora))
        assert (preset["model_name_or_path"], preset["data_path"]) == ("huggyllama/llama-7b", "tatsu-lab/alpaca")
    assert "huggyllama/llama-7b" in (CONFIGS_DIR / "alpaca_7b.yaml").read_text().split("model_name_or_path:")[0]
    assert choose_preset("auto", gpus=1, lora=True).name == "alpaca_7b_lora.yaml"
    assert choose_preset("alpaca_13b", gpus=8).name == "alpaca_13b.yaml"
    with pytest.raises(TrainConfigError, match="no such preset"):
        choose_preset("alpaca_70b", gpus=8)
    assert overrides(data_path=None, learning_rate=1e-5, max_steps=-1, lora=False) == {"learning_rate": 1e-5}
    assert overrides(max_steps=3, lora=True) == {"max_steps": 3, "lora": True}
    with pytest.raises(TrainConfigError, match="unknown setting"):
        overrides(learnig_rate=1e-5)


def test_bf16_and_tf32_are_typed_choices_checked_before_loading():
    assert parse_config(["--bf16", "auto"]).bf16 is None and parse_config(["--tf32", "true"]).tf32 is True
    assert check_run(parse_config([]), 1, on_gpu=True).precision.bf16 is True  # native bf16 assumed when not read
    assert check_run(parse_config([]), 1, on_gpu=False).precision.bf16 is True
    assert check_run(parse_config(["--bf16", "false"]), 1, on_gpu=False).precision.bf16 is False
    with pytest.raises(TrainConfigError, match="tf32 is a GPU setting"):
        check_run(parse_config(["--tf32", "true"]), 1, on_gpu=False)
    with pytest.raises(TrainConfigError, match="bf16: cannot read 'maybe'"):
        parse_config(["--bf16", "maybe"])
    with pytest.raises(TrainConfigError, match="report_to"):
        parse_config(["--report_to", "mlflow"])


def test_bf16_on_cpu_trains_and_keeps_fp32_weights(tmp_path, tiny_model):
    """One process: autocast to bf16 on CPU (issue 15 extends this to the sharded path)."""
    out = tmp_path / "run"
    summary = train(make_config(model_name_or_path=str(tiny_model), output_dir=str(out), max_examples=12,
                                global_batch_size=4, per_device_train_batch_size=2, max_steps=2, bf16=True,
                                model_max_length=256, learning_rate=1e-3))
    assert summary["finished"] and summary["bf16"] and summary["final_loss"] > 0
    assert next(AutoModelForCausalLM.from_pretrained(out / "model").parameters()).dtype == torch.float32


def test_bf16_auto_needs_native_bf16_and_explicit_bf16_on_a_gpu_without_it_is_refused():
    """V100 and older, or a CPU without avx512_bf16/AMX (`precision.native_bf16` says so; passed in here, so this
    runs on any machine): auto is fp32, bf16=true is refused on the GPU and runs (emulated) on the CPU."""
    none = NativeBf16(False, "no native bf16 here")
    auto = check_run(parse_config([]), 1, on_gpu=True, native=none).precision
    assert auto.bf16 is False and auto.reason == "auto: no native bf16 here"
    assert check_run(parse_config(["--bf16", "false"]), 1, on_gpu=True, native=none).precision.bf16 is False
    with pytest.raises(TrainConfigError, match="no bf16 support"):
        check_run(parse_config(["--bf16", "true"]), 1, on_gpu=True, native=none)
    assert check_run(parse_config(["--bf16", "true"]), 1, on_gpu=False, native=none).precision.bf16
    assert check_run(parse_config([]), 1, on_gpu=False, native=none).precision.bf16 is False


def test_dist_timeout_comes_from_the_config(monkeypatch, tmp_path, tiny_model):
    """`train` gives `init_distributed` the configured minutes (120 by default); <= 0 is refused first."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_init(env, cpu_offload=False, minutes=None):
        seen["minutes"] = minutes
        raise Stop

    monkeypatch.setattr(train_mod, "init_distributed", fake_init)
    for given, expected in (({}, 120.0), ({"dist_timeout_minutes": 7.5}, 7.5)):
        with pytest.raises(Stop):
            train(make_config(model_name_or_path=str(tiny_model), output_dir=str(tmp_path), fsdp="full_shard",
                              device="cpu", **given))
        assert seen["minutes"] == expected
    assert parse_config(["--dist_timeout_minutes", "30"]).dist_timeout_minutes == 30.0
    with pytest.raises(TrainConfigError, match="dist_timeout_minutes must be > 0"):
        check_run(parse_config(["--dist_timeout_minutes", "0"]), 2, on_gpu=False)


def test_reduce_scatter_setting_reaches_the_memory_plan(tiny_model):
    """What `train` prints and plans counts what the loop does: with reduce-scatter after every micro-batch
    no unsharded fp32 gradient is held during accumulation; with it off, one of the whole model. Auto (the
    default) is off where that fits and on where it does not."""
    with torch.device("meta"):
        shape = model_shape(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model)))
    base = ["--global_batch_size", "8", "--per_device_train_batch_size", "2"]
    on = parse_config(base + ["--reduce_scatter_every_micro_batch", "true"])
    run = check_run(on, 2, on_gpu=False)
    assert run.batch.accumulation == 2
    plan = memory_plan_for_run(on, shape, run, 2, 1, 80.0)
    assert plan.sync_every_micro_batch and plan.accumulation_gradients_bytes == 0
    off = parse_config(base + ["--reduce_scatter_every_micro_batch", "false"])
    plan_off = memory_plan_for_run(off, shape, check_run(off, 2, on_gpu=False), 2, 1, 80.0)
    assert not plan_off.sync_every_micro_batch
    assert plan_off.accumulation_gradients_bytes == shape.parameters * 4
    assert plan_off.per_device_gb > plan.per_device_gb
    auto = parse_config(base)
    assert auto.reduce_scatter_every_micro_batch is None and parse_config(
        base + ["--reduce_scatter_every_micro_batch", "auto"]).reduce_scatter_every_micro_batch is None
    assert not memory_plan_for_run(auto, shape, run, 2, 1, 80.0).sync_every_micro_batch  # fits: once per step
    between = (plan.per_device_gb + plan_off.per_device_gb) / 2  # where only syncing every micro-batch fits
    tight = memory_plan_for_run(auto, shape, run, 2, 1, between)
    assert tight.sync_every_micro_batch and tight.fits and "would need" in tight.sync_reason


def test_a_failing_rank_leaves_the_process_group_to_the_launcher(monkeypatch, tmp_path, default_model_dir, tiny_model):
    """On an error `train` raises without `destroy_process_group`, which under NCCL blocks while the other
    ranks sit in a collective (the hang needs NCCL and several GPUs; here a real 1-rank gloo group and an
    injected NaN show the exception path skips the call); a clean run destroys the group."""
    calls = []
    real_destroy = dist.destroy_process_group

    def spy(*args, **kwargs):
        calls.append(args)
        return real_destroy(*args, **kwargs)

    monkeypatch.setattr(dist, "destroy_process_group", spy)
    args = dict(output_dir=str(tmp_path / "run"), max_examples=8, global_batch_size=4, per_device_train_batch_size=2,
                max_steps=1, model_max_length=128, fsdp="full_shard", device="cpu")
    poisoned = make_tiny_llama(tmp_path / "nan_model", default_model_dir, nan=True)
    try:
        with pytest.raises(NonFiniteLossError):
            train(make_config(model_name_or_path=str(poisoned), **args))
        assert calls == [] and dist.is_initialized()  # left for the process's exit (and the launcher)
    finally:
        if dist.is_initialized():
            real_destroy()
    assert train(make_config(model_name_or_path=str(tiny_model), **args))["finished"]
    assert len(calls) == 1 and not dist.is_initialized()


def test_bfloat16_save_says_bfloat16_in_its_config(tmp_path, tiny_model):
    """`save_dtype: bfloat16` writes bf16 weights and `"dtype": "bfloat16"` (save_pretrained alone would write
    the live fp32 parameters' dtype), so `dtype="auto"` loads them at their own size."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    folder = distributed.save_hf_folder(model, AutoTokenizer.from_pretrained(tiny_model), tmp_path / "model",
                                        torch.bfloat16, is_main=True)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(AutoModelForCausalLM.from_pretrained(folder, dtype="auto").parameters()).dtype == torch.bfloat16


def test_mfu_uses_the_plans_flops_and_peaks(monkeypatch, tiny_model):
    """MFU = plan.flops_per_token (non-embedding parameters, LM head at trained positions only) × tokens/s
    / (plan.peak_bf16_flops × processes): the H100 PCIe is 756 TFLOP/s, not the SXM's 989."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    cuda = SimpleNamespace(type="cuda")
    assert train_mod.peak_flops(cuda) == 756e12 and train_mod.peak_flops(SimpleNamespace(type="cpu")) is None
    assert not hasattr(train_mod, "PEAK_BF16_FLOPS") and train_mod.flops_per_token is plan_mod.flops_per_token
    with torch.device("meta"):
        shape = plan_mod.model_shape(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model)))
    recipe = train_mod.Recipe.__new__(train_mod.Recipe)
    recipe.shape, recipe.head = shape, object()
    recipe.cfg, recipe.env = make_config(), SimpleNamespace(device=cuda, world_size=2)
    expected = plan_mod.flops_per_token(shape, 100.0, 0.25) * 5000.0 / (756e12 * 2)
    assert recipe.mfu(100.0, 5000.0, 0.25) == pytest.approx(expected)
    assert shape.non_embedding < shape.parameters  # the embedding is not counted as 6N


def test_prompt_format_chat_trains_the_same_answers_behind_the_chat_template(tmp_path, tiny_model):
    settings = dict(model_name_or_path=str(tiny_model), max_examples=16, global_batch_size=8,
                    per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-3)
    built = {}
    for fmt in ("alpaca", "chat"):
        cfg = make_config(**settings, output_dir=str(tmp_path / fmt), prompt_format=fmt)
        recipe = Recipe(cfg, dist_env(force_cpu=True), check_run(cfg, 1, on_gpu=False))
        recipe.setup_model_source()
        recipe.setup_data()
        built[fmt] = recipe
    chat_row, alpaca_row = built["chat"].built.dataset[0], built["alpaca"].built.dataset[0]
    assert built["chat"].tokenizer.decode(chat_row["input_ids"][:1]) == "<|im_start|>"
    trained = {fmt: [t for t in row["labels"] if t != IGNORE_INDEX] for fmt, row in
               (("chat", chat_row), ("alpaca", alpaca_row))}
    assert trained["chat"] == trained["alpaca"]  # the same answer and eos; only the masked prompt differs
    summary = train(make_config(**settings, output_dir=str(tmp_path / "run"), prompt_format="chat"))
    assert summary["finished"] and summary["total_steps"] >= 1
    with pytest.raises(TrainConfigError, match="prompt_format: expected alpaca or chat"):
        make_config(prompt_format="chatml")


@pytest.mark.parametrize("kind", ["smollm2", "llama"])
def test_the_step_by_hand_is_the_recipes_first_step(tmp_path, tiny_model, kind):
    """Notebook 04's one training step written out (`train_step_by_hand`, on the step's examples collated as one
    batch) gives the recipe's step 1: the same loss, and the same weights after the update. The recipe cuts the
    batch into 2 micro-batches, computes logits at trained positions only and accumulates gradients. With
    LLaMA's real tokenizer (no pad token) both add one and grow the embeddings the same way. Each micro-batch
    comes with its trained positions, found on the CPU before the copy (`batches.trained_positions`); the copy
    without a host wait (pinned, non_blocking) and the overlap it buys only show on a GPU."""
    if kind == "llama":
        tiny_model = small_llama(tmp_path / "llama")
    cfg = make_config(model_name_or_path=str(tiny_model), output_dir=str(tmp_path), max_examples=24,
                      val_set_size=0, global_batch_size=8, per_device_train_batch_size=4, num_train_epochs=1,
                      learning_rate=1e-3, warmup_ratio=0.0, weight_decay=0.1, max_grad_norm=0.5, bf16=False)
    recipe = Recipe(cfg, dist_env(force_cpu=True), check_run(cfg, 1, on_gpu=False))
    recipe.setup()
    assert recipe.run_setup.batch.accumulation == 2 and recipe.scheduler.get_last_lr()[0] == pytest.approx(1e-3)
    model, batch = first_step_inputs(cfg)
    assert model.get_input_embeddings().weight.shape == recipe.model.get_input_embeddings().weight.shape
    by_hand = train_step_by_hand(model, batch, make_optimizer(model, cfg), cfg.max_grad_norm, rows_at_once=3)
    recipe.model.train()
    real_loss, seen = recipe.loss, []
    recipe.loss = lambda inputs, num_items: seen.append(inputs) or real_loss(inputs, num_items)
    row = recipe.train_step(1)
    assert len(seen) == 2 and all(len(x["trained_labels"]) == len(x["trained_index"]) > 0 for x in seen)
    assert sum(len(x["trained_labels"]) for x in seen) == row["trained_tokens"]
    assert by_hand == pytest.approx(row["loss"], rel=1e-5)
    assert row["grad_norm"] > cfg.max_grad_norm  # the clipping was part of the step
    start = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    theirs = recipe.model.state_dict()
    moved = 0
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight, theirs[name], atol=1e-5, rtol=1e-4)
        rows = len(start[name])  # grown embeddings (LLaMA's pad): their original rows
        moved += int((weight[:rows] - start[name]).abs().max() > 1e-4)
    assert moved >= len(start) - 1  # every tensor moved (lr 1e-3), but possibly a norm with no gradient
