"""fp16 where bf16 is missing: GPUs of compute capability 7.x (T4 on Colab and Kaggle, V100) train with fp16
autocast and a dynamic loss scale (`torch.amp.GradScaler`), fp32 master weights. Shown on CPU, where torch runs
fp16 autocast and the scaler too: the choice for a stand-in GPU's capability (this machine has none), the scaler's
step (gradients unscaled before clipping, a planted inf skips the step and logs it), and the embedded model trained
a few steps in fp16 against fp32.

What only a GPU shows: the speed of the tensor cores, and the memory of a real T4 run (neither measured here).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_tiny_llama

from alpaca_helpers.precision import FORCE_ENV, gpu_native_bf16, inference_choice
from alpaca_helpers.train import recipe as recipe_module
from alpaca_helpers.train.config import TrainConfigError, check_run, make_config, parse_config
from alpaca_helpers.train.distributed import dist_env
from alpaca_helpers.train.plan import LOSS_SCALER_BYTES, checkpoint_disk, format_plan, load_model_shape
from alpaca_helpers.train.recipe import NonFiniteLossError, Recipe, memory_plan_for_run, train

FP16_LOSS_TOL = 2e-2  # fp16 has a 10-bit mantissa (~0.1% relative); losses near 2-11


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_fp16") / "model", default_model_dir)


def stand_in_gpu(monkeypatch, capability: tuple[int, int], name: str) -> None:
    """torch.cuda as a GPU of `capability` would answer (no GPU here); nothing that allocates is answered."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("capability, name, chosen", [((7, 5), "Tesla T4", "fp16"),
                                                      ((7, 0), "Tesla V100-SXM2-32GB", "fp16"),
                                                      ((6, 0), "Tesla P100-PCIE-16GB", "fp32"),
                                                      ((8, 0), "NVIDIA A100-SXM4-80GB", "bf16")])
def test_the_rule_picks_fp16_on_compute_capability_7_and_keeps_bf16_on_8(monkeypatch, capability, name, chosen):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    stand_in_gpu(monkeypatch, capability, name)
    native = gpu_native_bf16(torch.device("cuda", 0))
    precision = check_run(parse_config([]), 1, on_gpu=True, native=native).precision
    assert ("bf16" if precision.bf16 else "fp16" if precision.fp16 else "fp32") == chosen
    assert f"compute capability {capability[0]}.{capability[1]}" in precision.reason
    if chosen == "fp16":
        assert precision.reason.endswith("fp16 tensor cores: fp16 with a dynamic loss scale")
        assert inference_choice(torch.device("cuda", 0)).name == "fp32"  # inference never takes fp16
        # settings win: bf16=false alone is the fp32 run, fp16=false too
        assert not check_run(parse_config(["--bf16", "false"]), 1, on_gpu=True, native=native).precision.fp16
        assert not check_run(parse_config(["--fp16", "false"]), 1, on_gpu=True, native=native).precision.fp16
        monkeypatch.setenv(FORCE_ENV, "false")  # the whole course in fp32
        forced = check_run(parse_config([]), 1, on_gpu=True, native=recipe_module.native_bf16("cuda:0")).precision
        assert not forced.fp16 and not forced.bf16


def test_fp16_settings_are_checked_before_loading():
    assert parse_config(["--fp16", "auto"]).fp16 is None and parse_config(["--fp16", "true"]).fp16 is True
    on = check_run(parse_config(["--fp16", "true"]), 1, on_gpu=False).precision
    assert on.fp16 and not on.bf16 and on.reason == "fp16=true"
    with pytest.raises(TrainConfigError,
                       match=r"^bf16=true and fp16=true: choose one \(fp16 is for GPUs without bf16"):
        check_run(parse_config(["--fp16", "true", "--bf16", "true"]), 1, on_gpu=False)
    with pytest.raises(TrainConfigError, match="fp16 with cpu_offload is not supported"):
        check_run(parse_config(["--fp16", "true", "--cpu_offload", "true"]), 2, on_gpu=False)


def test_the_plan_counts_fp16_as_bf16s_bytes_plus_the_scaler(default_model_dir):
    shape = load_model_shape(str(default_model_dir))
    plans = {}
    for flag in ("bf16", "fp16"):
        cfg = make_config(model_name_or_path=str(default_model_dir), **{flag: True})
        plans[flag] = memory_plan_for_run(cfg, shape, check_run(cfg, 1, on_gpu=False), 1, 1, 15.0)
    assert plans["fp16"].fp16 and not plans["bf16"].fp16 and LOSS_SCALER_BYTES == 12
    assert plans["fp16"].components_gib == plans["bf16"].components_gib
    assert plans["fp16"].per_device_gb == pytest.approx(plans["bf16"].per_device_gb, abs=1e-3)
    text = format_plan(plans["fp16"], [], checkpoint_disk(plans["fp16"], 2, 4), None)
    assert "fp16 compute with a dynamic loss scale" in text.splitlines()[0]


def tiny_recipe(tiny, out, **extra) -> Recipe:
    """A recipe set up on the tiny LLaMA, small steps: fp16 matmuls on a CPU without avx512_fp16 run ~25x slower
    than fp32 (0.65 GFLOP/s measured on the course's 2-core AMD EPYC), and the 49K-row LM head dominates."""
    cfg = make_config(model_name_or_path=str(tiny), output_dir=str(out), max_examples=24, val_set_size=0,
                      global_batch_size=4, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3,
                      warmup_ratio=0.0, max_grad_norm=0.5, model_max_length=96, **extra)  # short examples only
    recipe = Recipe(cfg, dist_env(force_cpu=True), check_run(cfg, 1, on_gpu=False))
    recipe.setup()
    recipe.model.train()
    return recipe


def weights(recipe: Recipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in recipe.model.state_dict().items()}


def plant_inf(recipe: Recipe):
    """Every loss of `recipe` becomes inf, so every gradient inf or NaN; returns the real loss to put back."""
    real_loss = recipe.loss
    recipe.loss = lambda inputs, num_items: real_loss(inputs, num_items) * float("inf")
    return real_loss


def test_the_scaler_unscales_before_clipping_and_skips_a_step_with_a_planted_inf(tmp_path, tiny, capsys, monkeypatch):
    """Step 1 clips the unscaled gradient (its norm is the fp32 run's, not 65536 times it) and moves the weights as
    fp32 does; step 2, with an inf planted in the loss, is skipped and logged; a second overflow in a row, with the
    limit set to 2, stops the run in one line (overflow no scale cures: the forward itself)."""
    fp32 = tiny_recipe(tiny, tmp_path / "fp32", bf16=False)
    fp16 = tiny_recipe(tiny, tmp_path / "fp16", fp16=True)
    assert fp32.scaler is None and fp16.scaler is not None and fp16.base_dtype == torch.float32  # fp32 masters
    assert "precision: fp16 compute (autocast), dynamic loss scale" in capsys.readouterr().out
    one, ref = fp16.train_step(1), fp32.train_step(1)
    assert (one["skipped"], one["loss_scale"]) == (False, 2.0**16) and "skipped" not in ref
    assert one["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-2) and one["grad_norm"] > 0.5  # clipped
    assert one["loss"] == pytest.approx(ref["loss"], abs=FP16_LOSS_TOL)
    ours, theirs = weights(fp16), weights(fp32)
    assert {v.dtype for v in ours.values()} == {torch.float32}
    # Adam's first step is +-lr per weight whatever the gradient's size: only near-zero gradients whose sign
    # fp16 flips differ (by up to 2 lr), observed for 0.05% of the weights
    diff = torch.cat([(ours[k] - theirs[k]).abs().flatten() for k in ours])
    assert diff.max() <= 2.5e-3 and (diff > 1e-4).float().mean() < 0.01
    plant_inf(fp16)
    before, moments = weights(fp16), [s["exp_avg"].clone() for s in fp16.optimizer.state.values()]
    lr_step = fp16.scheduler.last_epoch
    two = fp16.train_step(2)
    assert (two["skipped"], two["loss_scale"]) == (True, 2.0**16) and fp16.scaler.get_scale() == 2.0**15
    after = weights(fp16)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, fp16.optimizer.state.values()))
    assert fp16.scheduler.last_epoch == lr_step  # the schedule waits too
    overflowed = "step 2: fp16 gradients overflowed (inf/NaN), step skipped; loss scale 65536 -> 32768"
    assert overflowed in capsys.readouterr().out
    monkeypatch.setattr(recipe_module, "FP16_MAX_SKIPS_IN_A_ROW", 2)
    with pytest.raises(NonFiniteLossError, match=r"step 3: fp16 gradients overflowed in 2 steps in a row \(loss scale "
                                                 r"down to 16384\): the forward overflows fp16; train in fp32"):
        fp16.train_step(3)


def test_fp16_trains_close_to_the_fp32_run_and_saves_fp32(tmp_path, tiny):
    """The tiny LLaMA (the default model's tokenizer) fine-tuned 3 steps through `train` in fp16 and in fp32: the
    same losses within FP16_LOSS_TOL, no step skipped, the fields in every log row, an fp32 model saved. (The
    embedded 135M model would take minutes per step in fp16 on this CPU; on a T4 it is the fp16 path's model.)"""
    runs = {}
    for name, precision in (("fp32", {"bf16": False}), ("fp16", {"fp16": True})):
        out = tmp_path / name
        summary = train(make_config(model_name_or_path=str(tiny), output_dir=str(out), max_examples=24,
                                    val_set_size=0, global_batch_size=2, per_device_train_batch_size=2, max_steps=3,
                                    model_max_length=96, learning_rate=1e-3, warmup_ratio=0.0, **precision))
        assert summary["finished"] and summary["fp16"] is (name == "fp16") and summary["skipped_steps"] == 0
        runs[name] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    fp32, fp16 = [[row["loss"] for row in runs[k]] for k in ("fp32", "fp16")]
    assert len(fp16) == 3 and [(r["skipped"], r["loss_scale"]) for r in runs["fp16"]] == [(False, 2.0**16)] * 3
    assert max(abs(a - b) for a, b in zip(fp32, fp16)) < FP16_LOSS_TOL, (fp32, fp16)
    saved = load_file(tmp_path / "fp16" / "model" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_a_resumed_fp16_run_keeps_the_loss_scale_it_had_reached(tmp_path, tiny):
    """The loss scale is part of the checkpoint: after an overflow halved it, a resumed run starts from the halved
    scale, not from 65536 again (which would cost the overflowing steps a second time)."""
    first = tiny_recipe(tiny, tmp_path / "run", fp16=True)
    real_loss = plant_inf(first)
    row = first.train_step(1)
    assert row["skipped"] and first.scaler.get_scale() == 2.0**15
    first.loss = real_loss
    first.save_checkpoint(1, row)
    resumed = tiny_recipe(tiny, tmp_path / "run", fp16=True, resume=True)
    assert resumed.start == 1 and resumed.scaler.get_scale() == 2.0**15
