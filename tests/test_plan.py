"""The memory and time plan counts what training really holds.

- Weights, gradients and AdamW state per rank: 2 CPU processes (gloo) shard a tiny LLaMA with the training
  code's own `train.distributed.shard_model` and take one optimizer step; each rank sums the bytes of the tensors
  it holds. Its vocabulary (1001 rows) does not split evenly: FSDP2 gives rank 0 the padded chunk of
  ceil(rows / 2) rows, which is what the plan counts, so rank 0 matches exactly and rank 1 holds less by at
  most that padding. Accumulating without gradient sync, each rank holds an unsharded fp32 gradient of the
  whole model: the plan's `sync_every_micro_batch=False` counts exactly that.
- Activations: the plan's fp32 estimate against the bytes autograd saves for backward on CPU.
- LLaMA-7B (its config.json written out here, no download): full fine-tuning does not fit one 80 GB GPU
  and fits 8; LoRA fits one.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

from alpaca_helpers.train.plan import (
    PlanError,
    activation_bytes_per_token,
    layer_activation_bytes,
    load_model_shape,
    main,
    memory_plan,
    peak_bf16_flops,
    shard_elements,
)

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1001,
        "max_position_embeddings": 256, "tie_word_embeddings": False}
LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}


def write_config(folder, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _local_bytes(t):
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def _rank(rank: int, world: int, port: int, folder: str, out: str) -> None:
    """One training process: shard as `train` does, one micro-batch, one AdamW step, count what it holds."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from transformers import AutoConfig, AutoModelForCausalLM

    from alpaca_helpers.train.distributed import find_layer_class, shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        shard_model(model, find_layer_class(model), torch.device("cpu"), world, bf16=False, cpu_offload=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(0, 1001, (2, 16), generator=torch.Generator().manual_seed(rank))
        model(input_ids=ids, labels=ids).loss.backward()
        held = {"weights": sum(_local_bytes(p) for p in model.parameters()),
                "gradients": sum(_local_bytes(p.grad) for p in model.parameters()),
                "optimizer": 0}
        optimizer.step()
        held["optimizer"] = sum(_local_bytes(v) for s in optimizer.state.values() for v in s.values())
        optimizer.zero_grad(set_to_none=True)
        model.set_requires_gradient_sync(False)  # a micro-batch that is not the last of its step
        model(input_ids=ids, labels=ids).loss.backward()
        fsdp_params = [fp for m in model.modules() if isinstance(m, FSDPModule)
                       for fp in m._get_fsdp_state()._fsdp_param_group.fsdp_params]
        held["accumulated"] = sum(_local_bytes(fp._unsharded_param.grad) for fp in fsdp_params
                                  if fp._unsharded_param.grad is not None)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(held, f)
    finally:
        dist.destroy_process_group()


def test_per_rank_weights_gradients_and_optimizer_state_are_what_fsdp_ranks_hold(tmp_path):
    import torch.multiprocessing as mp

    folder = write_config(tmp_path / "tiny", TINY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(folder), str(tmp_path)), nprocs=2, join=True)
    held = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    shape = load_model_shape(str(folder))
    plan = memory_plan(shape, world_size=2, gpu_memory_gb=1, per_device=1, global_batch_size=4,
                       model_max_length=16, bf16=False, sync_every_micro_batch=False)
    padding = (shard_elements(shape.shapes, 2) * 2 - shape.parameters) * 4  # bytes, all ranks' padding
    assert 0 < padding <= 4 * TINY["hidden_size"] * 2  # the two 1001-row matrices: one row each
    assert held[0]["weights"] == plan.weights_bytes and held[0]["gradients"] == plan.gradients_bytes
    assert held[0]["optimizer"] == plan.optimizer_bytes  # two fp32 moments + a float32 step per tensor
    for rank in held[1:]:
        for key, planned in (("weights", plan.weights_bytes), ("gradients", plan.gradients_bytes)):
            assert planned - padding <= rank[key] < planned
    assert held[0]["weights"] + held[1]["weights"] == shape.parameters * 4
    assert plan.accumulation == 2  # 4 = 1 per device × 2 micro-batches × 2 ranks
    assert [r["accumulated"] for r in held] == [plan.accumulation_gradients_bytes] * 2 == [shape.parameters * 4] * 2
    synced = memory_plan(shape, world_size=2, gpu_memory_gb=1, per_device=1, global_batch_size=4,
                         model_max_length=16, bf16=False)
    assert synced.accumulation_gradients_bytes == 0  # the default: reduce-scatter every micro-batch


def test_activation_estimate_is_close_to_what_autograd_saves(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {**TINY, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 3}
    folder = write_config(tmp_path / "act", config)
    shape = load_model_shape(str(folder))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).train()
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        storages: dict[int, int] = {}

        def keep(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 1001, (2, 96))
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model.model(input_ids=ids, use_cache=False)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = sum(n for ptr, n in storages.items() if ptr not in weights)
        planned = activation_bytes_per_token(shape, 4, checkpointing)
        if checkpointing:  # the forward keeps the layer inputs; the recomputed layer appears in backward
            planned -= layer_activation_bytes(shape, 4)
        assert 0.9 < ids.numel() * planned / saved < 1.1, (checkpointing, planned, saved)


def test_llama_7b_full_fine_tuning_needs_more_than_one_80gb_gpu(tmp_path, capsys):
    folder = str(write_config(tmp_path / "llama-7b", LLAMA_7B))
    assert main(["--model", folder, "--gpus", "1", "--gpu_memory_gb", "80", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["fits"] is False and one["per_device_gb"] > 100 and one["parameters"] == 6_738_415_616
    changes = [s["change"] for s in one["suggestions"]]
    assert "--fsdp full_shard --cpu_offload true" in changes and any("--lora true" in c for c in changes)
    assert main(["--model", folder, "--gpus", "8", "--gpu_memory_gb", "80", "--json"]) == 0
    eight = json.loads(capsys.readouterr().out)
    assert eight["fits"] is True and eight["per_device_gb"] < 80 and eight["accumulation"] == 4
    assert 80 < eight["disk"]["checkpoint_gib"] * 2**30 / 1e9 < 82  # ~81 GB: fp32 weights + AdamW moments
    assert main(["--model", folder, "--gpus", "1", "--lora", "true", "--json"]) == 0
    lora = json.loads(capsys.readouterr().out)
    assert lora["fits"] is True and lora["mode"].startswith("LoRA") and lora["trainable_parameters"] < 5e7
    assert main(["--model", folder, "--gpus", "8"]) == 0
    assert "fits" in capsys.readouterr().out


def test_13b_accumulating_without_sync_does_not_fit_8x80gb_and_with_sync_does(tmp_path):
    config = {**LLAMA_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
              "num_attention_heads": 40, "num_key_value_heads": 40}
    shape = load_model_shape(str(write_config(tmp_path / "llama-13b", config)))
    settings = dict(world_size=8, gpu_memory_gb=80, per_device=4, global_batch_size=128, model_max_length=512)
    no_sync = memory_plan(shape, sync_every_micro_batch=False, **settings)
    assert not no_sync.fits and 45 < no_sync.components_gib["accumulated unsharded gradients"] < 50
    assert memory_plan(shape, **settings).fits


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    folder = str(write_config(tmp_path / "llama-7b", LLAMA_7B))
    for argv, message in ((["--model", str(tmp_path / "nope")], "no such model folder"),
                          (["--model", folder, "--gpus", "0"], "--gpus and --num_machines must be >= 1"),
                          (["--model", folder, "--gpus", "3"], "not divisible by per_device_train_batch_size 4 × 3"),
                          (["--model", folder, "--mfu", "2"], "mfu is a fraction"),
                          (["--model", folder, "--gpus", "8", "--lora", "true"], "lora runs on a single process"),
                          (["--model", folder, "--config", "nope"], "no such preset")):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(PlanError, match="gpu_memory_gb must be > 0"):
        memory_plan(load_model_shape(folder), world_size=1, gpu_memory_gb=0, per_device=4, global_batch_size=128,
                    model_max_length=512)


def test_gpu_peaks_tell_the_pcie_h100_apart():
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Tesla V100-SXM2-32GB") is None  # no bf16
