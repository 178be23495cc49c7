"""The memory and time plan counts what training really holds.

- Weights, gradients and AdamW state per rank: 2 CPU processes (gloo) shard a tiny LLaMA with the training
  code's own `train.distributed.shard_model` and take one optimizer step; each rank sums the bytes of the tensors
  it holds. Its vocabulary (1001 rows) does not split evenly: FSDP2 gives rank 0 the padded chunk of
  ceil(rows / 2) rows, which is what the plan counts, so rank 0 matches exactly and rank 1 holds less by at
  most that padding. Accumulating without gradient sync, each rank holds an unsharded fp32 gradient of the
  whole model: the plan's `sync_every_micro_batch=False` counts exactly that.
- Backward's working gradients: the same 2 processes shard a bf16 (FSDP mixed precision) copy and track one
  forward and backward with PyTorch's `FSDPMemTracker`, which files every tensor under the role FSDP gives it;
  the root unit's unsharded bf16 gradients plus the fp32 buffer they are reduce-scattered from are exactly the
  plan's `root_gradient_bytes`, and no moment of backward holds more such gradients and buffers than the plan's
  root and one-layer terms together.
- Activations: the plan's fp32 estimate against the bytes autograd saves for backward on CPU.
- LLaMA-7B (its config.json written out here, no download): full fine-tuning does not fit one 80 GB GPU
  and fits 8; LoRA fits one; its vocabulary is counted with the pad token training adds (32,064 rows).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed.fsdp import FSDPModule
from transformers import AutoConfig, AutoModelForCausalLM

from alpaca_helpers.models import load_vocabulary
from alpaca_helpers.train import recipe
from alpaca_helpers.train.config import check_run, make_config, parse_config
from alpaca_helpers.train.distributed import find_layer_class, shard_model
from alpaca_helpers.train.plan import (
    AUTO_MEMORY_MARGIN,
    CUDA_OVERHEAD_GIB,
    GPUS,
    PlanError,
    PlanSettings,
    activation_bytes_per_token,
    checkpoint_disk,
    choose_micro_batch,
    communication_bytes,
    explain_fsdp,
    format_plan,
    largest_fitting_micro_batch,
    layer_activation_bytes,
    link_bandwidth,
    load_model_shape,
    main,
    memory_plan,
    model_shape,
    normalise_gpu_name,
    peak_bf16_flops,
    peak_fp16_flops,
    shard_elements,
    time_plan,
)
from alpaca_helpers.train.recipe import enable_activation_checkpointing, memory_plan_for_run, train
from alpaca_helpers.train.rehearsal import llama_7b_config, small_llama

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


def checkpoint_shape(folder):
    """The shape of the model as its config.json builds it (no pad token added: what the harness trains)."""
    with torch.device("meta"):
        return model_shape(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)))


def _local_bytes(t):
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def _rank(rank: int, world: int, port: int, folder: str, out: str) -> None:
    """One training process: shard as `train` does, one micro-batch, one AdamW step, count what it holds."""
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
        held.update(_backward_gradients(folder, world))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(held, f)
        dist.barrier()  # under load a rank that tears gloo down while its peer still sends aborts ("terminate called")
    finally:
        dist.destroy_process_group()


def _backward_gradients(folder: str, world: int) -> dict[str, int]:
    """A bf16 (mixed-precision) sharded copy, one forward and backward under `FSDPMemTracker`: the root unit's
    unsharded gradients before its post-backward and its reduce-scatter buffer after, and the most unsharded
    gradients plus reduce-scatter buffers held at any moment tracked."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    shard_model(model, find_layer_class(model), torch.device("cpu"), world, bf16=True, cpu_offload=False)
    ids = torch.randint(0, 1001, (2, 16))
    tracker = FSDPMemTracker(model)
    with tracker:
        model(input_ids=ids, labels=ids).loss.backward()

    def held(snapshot: dict, *roles: str) -> int:
        return sum(v for k, v in snapshot.items() if str(k).endswith(roles))

    found = {"backward_gradients_peak": 0}
    for stats in tracker.memory_tracking.values():
        for state, snapshots in stats.snapshots.items():
            for per_device in (d for snapshot in snapshots for d in snapshot.values()):
                found["backward_gradients_peak"] = max(found["backward_gradients_peak"],
                                                       held(per_device, "UNSHARDED_GRAD", "REDUCE_SCATTER"))
                if stats.mod_fqn == type(model).__name__ and str(state).endswith("BEF_POST_BW"):
                    found["root_unsharded_gradients"] = held(per_device, "UNSHARDED_GRAD")
                if stats.mod_fqn == type(model).__name__ and str(state).endswith("AFT_POST_BW"):
                    found["root_reduce_scatter_buffer"] = held(per_device, "REDUCE_SCATTER")
    return found


def test_per_rank_weights_gradients_and_optimizer_state_are_what_fsdp_ranks_hold(tmp_path):
    folder = write_config(tmp_path / "tiny", TINY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(folder), str(tmp_path)), nprocs=2, join=True)
    held = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    shape = checkpoint_shape(folder)
    assert load_model_shape(str(folder)).vocab == 1024  # a run would add a pad token: 1002 rounded up to 64s
    settings = PlanSettings(world_size=2, gpu_memory_gb=1, per_device=1, global_batch_size=4, model_max_length=16,
                            bf16=False)
    plan = memory_plan(shape, replace(settings, sync_every_micro_batch=False))
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
    synced = memory_plan(shape, replace(settings, sync_every_micro_batch=True))
    assert synced.accumulation_gradients_bytes == 0  # reduce-scatter every micro-batch: none kept
    auto = memory_plan(shape, replace(settings, gpu_memory_gb=80))
    assert not auto.sync_every_micro_batch and auto.accumulation_gradients_bytes == plan.accumulation_gradients_bytes
    assert auto.sync_reason.startswith("auto: the unsharded fp32 gradients") and "fit" in auto.sync_reason

    # Backward, bf16: the root unit's unsharded bf16 gradients, and the fp32 buffer (padded to whole rows per
    # rank) they are copied into for the reduce-scatter, both alive during that copy: the plan's root term.
    # No tracked moment holds more such gradients and buffers than root + one layer.
    bf16 = memory_plan(shape, replace(settings, bf16=True))
    buffer = shard_elements(list(shape.root_shapes), 2) * 2 * 4
    assert bf16.root_gradient_bytes == shape.root_elements * 2 + buffer
    assert bf16.layer_gradient_bytes == shape.layer_elements * 6  # 2 rows per rank divide every layer tensor
    for rank in held:
        assert rank["root_unsharded_gradients"] == shape.root_elements * 2
        assert rank["root_reduce_scatter_buffer"] == buffer
        assert bf16.layer_gradient_bytes < rank["backward_gradients_peak"]  # one layer's alone is not enough
        assert rank["backward_gradients_peak"] <= bf16.root_gradient_bytes + bf16.layer_gradient_bytes
    assert bf16.components_gib["unsharded gradients + reduce-scatter buffers"] == round(
        (bf16.root_gradient_bytes + bf16.layer_gradient_bytes) / 2**30, 3)


def test_activation_estimate_is_close_to_what_autograd_saves(tmp_path):
    config = {**TINY, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 3}
    folder = write_config(tmp_path / "act", config)
    shape = load_model_shape(str(folder))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).train()
    for checkpointing in (False, True):
        if checkpointing:
            enable_activation_checkpointing(model)
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
    # 6,738,415,616 in the checkpoint; training adds a pad token: embeddings and head grow to 32,064 rows
    assert one["fits"] is False and one["per_device_gb"] > 100 and one["parameters"] == 6_738_415_616 + 2 * 64 * 4096
    changes = [s["change"] for s in one["suggestions"]]
    assert "--fsdp full_shard --cpu_offload true" in changes and any("--lora true" in c for c in changes)
    assert main(["--model", folder, "--gpus", "8", "--gpu_memory_gb", "80", "--json"]) == 0
    eight = json.loads(capsys.readouterr().out)
    assert eight["fits"] is True and eight["per_device_gb"] < 80
    assert (eight["per_device"], eight["accumulation"]) == (16, 1)
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
    settings = PlanSettings(world_size=8, gpu_memory_gb=80, per_device=4, global_batch_size=128, model_max_length=512)
    no_sync = memory_plan(shape, replace(settings, sync_every_micro_batch=False))
    assert not no_sync.fits and 45 < no_sync.components_gib["accumulated unsharded gradients"] < 50
    auto = memory_plan(shape, settings)  # auto chooses every micro-batch here, and says why
    assert auto.fits and auto.sync_every_micro_batch and auto.sync_setting is None
    assert auto.sync_reason.startswith("auto: keeping the unsharded fp32 gradients")
    assert "would need" in auto.sync_reason
    seven = memory_plan(load_model_shape(str(write_config(tmp_path / "llama-7b", LLAMA_7B))), settings)
    assert seven.fits and not seven.sync_every_micro_batch  # 7B: once per step fits, and moves fewer bytes


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    folder = str(write_config(tmp_path / "llama-7b", LLAMA_7B))
    for argv, message in ((["--model", str(tmp_path / "nope")], "no such model folder"),
                          (["--model", folder, "--gpus", "0"], "--gpus and --num_machines must be >= 1"),
                          (["--model", folder, "--gpus", "3"], "not divisible by per_device_train_batch_size 1 × 3"),
                          (["--model", folder, "--gpus", "3", "--per_device_train_batch_size", "4"],
                           "not divisible by per_device_train_batch_size 4 × 3"),
                          (["--model", folder, "--mfu", "2"], "mfu is a fraction"),
                          (["--model", folder, "--gpus", "8", "--lora", "true"], "lora runs on a single process"),
                          (["--model", folder, "--config", "nope"], "no such preset")):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(PlanError, match="gpu_memory_gb must be > 0"):
        memory_plan(load_model_shape(folder), PlanSettings(world_size=1, gpu_memory_gb=0, per_device=4,
                                                           global_batch_size=128, model_max_length=512))


def test_gpu_peaks_tell_the_pcie_h100_apart():
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Tesla V100-SXM2-32GB") is None  # no bf16


def test_device_names_match_exactly_never_by_a_part():
    """The device table is looked up by the exact name `torch.cuda.get_device_name` gives (case, spacing, "-" and
    a leading NVIDIA/Tesla aside): the H100 NVL is not the SXM, the L40S is not the L4, an L40 or an unknown card
    has no peak (so no MFU), and T4 and V100 have an fp16 peak but no bf16 one. Main matched parts of names: "H100
    NVL" got the SXM's 989 TFLOP/s and "NVIDIA L40" the L4's."""
    assert peak_bf16_flops("NVIDIA H100 NVL") == 835e12 != peak_bf16_flops("NVIDIA H100 80GB HBM3")
    assert peak_bf16_flops("NVIDIA L40S") == 362e12 and peak_bf16_flops("NVIDIA L4") == 121e12
    for unknown in ("NVIDIA L40", "NVIDIA B200", "NVIDIA H100 80GB HBM3 (MIG 1g.10gb)", "NVIDIA GeForce RTX 4090 D",
                    "A100-SXM4", "H1"):
        assert peak_bf16_flops(unknown) is None and peak_fp16_flops(unknown) is None
        assert link_bandwidth(unknown) is None
    assert peak_bf16_flops("  nvidia a100-sxm4-80gb ") == 312e12 == peak_bf16_flops("NVIDIA A100 80GB PCIe")
    assert peak_bf16_flops("Tesla T4") is None and peak_fp16_flops("Tesla T4") == 65e12
    assert peak_fp16_flops("Tesla V100-SXM2-16GB") == 125e12 and peak_fp16_flops("Tesla V100-PCIE-32GB") == 112e12
    assert peak_bf16_flops("NVIDIA GeForce RTX 4090") == 165.2e12 and peak_bf16_flops("NVIDIA A10G") == 125e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12 and peak_bf16_flops("NVIDIA A100-PCIE-40GB") == 312e12
    assert link_bandwidth("NVIDIA H100 NVL")[1].startswith("PCIe")  # its NVLink bridge joins pairs only
    owners = {}
    for spec in GPUS:
        for name in {normalise_gpu_name(n) for n in spec.names}:
            assert owners.setdefault(name, spec) is spec, name  # no name in two entries


def test_an_unknown_gpu_gives_no_mfu_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Imaginary X1")
    cuda = SimpleNamespace(type="cuda")
    assert recipe.peak_flops(cuda) is None and recipe.peak_flops(cuda) is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "'NVIDIA Imaginary X1' is not in the plan's device table" in lines[0]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert recipe.peak_flops(cuda) == 362e12 and recipe.peak_flops(cuda, "fp16") == 362e12
    assert capsys.readouterr().out == ""  # a known GPU: nothing to say


def test_time_projection_counts_fsdps_communication_at_the_links_bandwidth(tmp_path):
    """Per GPU and step: two all-gathers of the bf16 weights per micro-batch and an fp32 reduce-scatter per
    sync, each (ranks - 1) / ranks of the model, at NVLink's nominal 300 GB/s on one A100 machine and one
    HDR InfiniBand port (25 GB/s) per GPU across machines."""
    shape = load_model_shape(str(write_config(tmp_path / "llama-7b", LLAMA_7B)))
    settings = PlanSettings(world_size=8, gpu_memory_gb=80, per_device=4, global_batch_size=128, model_max_length=512)
    once, every = memory_plan(shape, settings), memory_plan(shape, replace(settings, sync_every_micro_batch=True))
    n = once.parameters
    assert communication_bytes(once) == pytest.approx(7 / 8 * (2 * 4 * n * 2 + n * 4))
    assert communication_bytes(every) == pytest.approx(7 / 8 * (2 * 4 * n * 2 + 4 * n * 4))
    assert link_bandwidth("NVIDIA A100-SXM4-80GB") == (300e9, "NVLink 300 GB/s per direction")
    assert link_bandwidth("NVIDIA H100 80GB HBM3", num_machines=2)[0] == 50e9
    assert link_bandwidth("NVIDIA H100 PCIe")[1].startswith("PCIe") and link_bandwidth("NVIDIA B200") is None
    assert link_bandwidth("Tesla T4") == (16e9, "PCIe 16 GB/s per direction")
    assert link_bandwidth("Tesla T4", num_machines=2) is None  # its network between machines is not known
    t = time_plan(shape, once, 52_002, 3, 0.35, "A100")
    assert t["communication_hours"] == round(t["steps"] * communication_bytes(once) / 300e9 / 3600, 2)
    assert t["hours"] == pytest.approx(t["compute_hours"] + t["communication_hours"], abs=0.011)
    assert t["hours_overlapped"] == max(t["compute_hours"], t["communication_hours"])
    assert time_plan(shape, every, 52_002, 3, 0.35, "A100")["communication_hours"] > t["communication_hours"]
    two = memory_plan(shape, replace(settings, world_size=16, num_machines=2))
    assert time_plan(shape, two, 52_002, 3, 0.35, "A100")["link"].startswith("InfiniBand 200 Gb/s")
    alone = memory_plan(shape, replace(settings, world_size=1, per_device=8, lora=True))
    assert communication_bytes(alone) == 0
    assert time_plan(shape, alone, 52_002, 3, 0.35, "L4")["communication_hours"] == 0


def test_host_memory_counts_rank_0s_full_copy_and_the_offloaded_state(tmp_path):
    shape = load_model_shape(str(write_config(tmp_path / "llama-7b", LLAMA_7B)))
    settings = PlanSettings(world_size=8, gpu_memory_gb=80, per_device=4, global_batch_size=128, model_max_length=512)
    plain = memory_plan(shape, settings)
    assert plain.cpu_memory_per_machine_gib == round(shape.parameters * 4 / 2**30, 3)  # rank 0's fp32 copy
    offload = memory_plan(shape, replace(settings, cpu_offload=True))
    state = (offload.weights_bytes + offload.gradients_bytes + offload.optimizer_bytes) * 8
    host = max(state, shape.parameters * 4 + offload.weights_bytes * 8)
    assert offload.cpu_memory_per_machine_gib == round(host / 2**30, 3)
    # ~108 GB: one fp32 copy's worth per machine × 4, not 8 copies
    assert 100 < offload.cpu_memory_per_machine_gib < 101


def test_the_gpu_benchmarks_3b_micro_batch_fits_80gb_by_the_plan(tmp_path):
    """benchmarks/bench_train_gpu.py picks each model's micro-batch with `largest_fitting_micro_batch`: its
    3B row (Llama-3.2-3B's shape with a 49K vocabulary) planned 86.6 GiB at the 16 it used before."""
    config = {**LLAMA_7B, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
              "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 49152}
    shape = load_model_shape(str(write_config(tmp_path / "3b", config)))
    settings = PlanSettings(world_size=1, gpu_memory_gb=80, global_batch_size=64, model_max_length=512, per_device=16)
    assert not memory_plan(shape, settings).fits
    chosen = largest_fitting_micro_batch(shape, settings)
    assert chosen is not None and chosen.per_device_gb <= 80 and chosen.per_device < 16
    assert not memory_plan(shape, replace(settings, per_device=chosen.per_device * 2)).fits
    assert largest_fitting_micro_batch(shape, replace(settings, gpu_memory_gb=10)) is None


def test_a_cpu_plan_speaks_of_processes_and_counts_no_cuda_context(tmp_path):
    """The plan of a CPU run (notebook 04's default, or cpu_processes=2): processes against their share of RAM,
    no CUDA context; the same tensors as on GPUs."""
    shape = load_model_shape(str(write_config(tmp_path / "tiny", TINY)))
    settings = PlanSettings(world_size=2, gpu_memory_gb=15.61234, per_device=4, global_batch_size=8,
                            model_max_length=64, bf16=False)
    cpu, gpu = memory_plan(shape, replace(settings, device="cpu")), memory_plan(shape, settings)
    assert cpu.components_gib["CUDA context and allocator slack"] == 0
    assert gpu.per_device_gb == pytest.approx(cpu.per_device_gb + CUDA_OVERHEAD_GIB, abs=1e-3)
    assert cpu.mode == "full, FSDP over 2 process(es)" and gpu.mode == "full, FSDP over 2 GPU(s)"
    text = format_plan(cpu, [], checkpoint_disk(cpu, 1), None)
    assert "GPU" not in text and "CUDA" not in text and "8 = 4 per process × 1 accumulation" in text
    assert "× 2 process(es) (1 machine(s))" in text and "of 15.6 GiB (its share of this machine's RAM)" in text
    one = format_plan(memory_plan(shape, replace(settings, device="cpu", world_size=1)), [], checkpoint_disk(cpu, 1),
                      None)
    assert "one process without FSDP" in one and "GPU" not in one
    with pytest.raises(PlanError, match="device must be gpu or cpu"):
        memory_plan(shape, replace(settings, device="tpu"))


def test_fsdp_is_explained_with_the_plans_own_numbers(tmp_path):
    """Notebook 04's FSDP walk-through: each rank's share, the per-layer all-gather and reduce-scatter and the
    traffic per step are the plan's figures."""
    shape = load_model_shape(str(write_config(tmp_path / "tiny", TINY)))
    settings = PlanSettings(world_size=2, gpu_memory_gb=16, per_device=2, global_batch_size=8, model_max_length=64)
    plan = memory_plan(shape, replace(settings, bf16=False, device="cpu"))
    text = explain_fsdp(shape, plan)
    assert text.startswith(f"FSDP full shard over 2 process(es): {shape.layers} decoder layers")
    assert f"{shard_elements(shape.shapes, 2) / 1e6:.1f}M of {shape.parameters / 1e6:.1f}M parameters" in text
    assert f"all-gather collects its {shape.layer_elements / 1e6:.2f}M parameters" in text
    assert f"({shape.layer_elements * 4 / 1e6:.1f} MB in fp32)" in text
    assert "once per step, after the last of 2 micro-batches" in text  # auto: the unsharded gradients fit
    assert f"about {communication_bytes(plan) / 1e6:,.0f} MB sent per rank" in text
    every = memory_plan(shape, replace(settings, bf16=True, sync_every_micro_batch=True))
    assert "after every micro-batch" in explain_fsdp(shape, every) and "in bf16" in explain_fsdp(shape, every)
    with pytest.raises(PlanError, match="2 or more processes"):
        explain_fsdp(shape, memory_plan(shape, replace(settings, world_size=1)))


def test_auto_micro_batch_on_8_h100_chooses_16_for_the_least_traffic_and_says_why(tmp_path, capsys):
    """`per_device_train_batch_size: auto` (the 7B preset's): on 8 × H100 80 GB the plan picks 16 × 1, which fits
    with 10% free and all-gathers the weights 2 times per step instead of 4 × 2 (47.2 GB of traffic per GPU per
    step instead of 117.9 at 4 × 4), and prints the choice and the runner-up with memory and traffic. A number
    given still wins, and the plan then says what auto would choose."""
    folder = str(write_config(tmp_path / "llama-7b", LLAMA_7B))
    assert main(["--model", folder, "--gpus", "8", "--gpu", "H100"]) == 0
    text = capsys.readouterr().out
    assert "batch: 128 = 16 per device × 1 accumulation × 8 GPU(s)" in text
    assert re.search(r"micro-batch \(per_device_train_batch_size auto\): 16 × 1 accumulation: 69\.\d GiB, 47\.2 GB "
                     r"FSDP traffic per GPU per step ≈ 0\.10 s; runner-up 8 × 2 accumulation: 68\.\d GiB, "
                     r"70\.8 GB FSDP traffic per GPU per step ≈ 0\.16 s; chosen: the least traffic of the "
                     r"micro-batches that fit in 72\.0 of 80 GiB \(10% kept free\); seconds at NVLink 450 GB/s per "
                     r"direction, nominal", text), text
    argv = ["--model", folder, "--gpus", "8", "--gpu", "H100", "--per_device_train_batch_size", "4", "--json"]
    assert main(argv) == 0
    given = json.loads(capsys.readouterr().out)
    assert (given["per_device"], given["accumulation"]) == (4, 4)  # the number given wins
    assert given["micro_batch_reason"].startswith("micro-batch 4 × 4 accumulation: 56.2 GiB, 117.9 GB FSDP traffic")
    assert "auto would choose 16 × 1 accumulation" in given["micro_batch_reason"]
    # Less memory: the largest that fits with the margin, and every larger one does not
    shape = load_model_shape(folder)
    settings = PlanSettings(world_size=8, gpu_memory_gb=70, global_batch_size=128, model_max_length=512)
    chosen = choose_micro_batch(shape, settings)
    assert chosen.per_device_gb <= 70 * (1 - AUTO_MEMORY_MARGIN) and chosen.per_device < 16
    for larger in (m for m in (8, 16) if m > chosen.per_device):
        assert memory_plan(shape, replace(settings, per_device=larger)).per_device_gb > 70 * (1 - AUTO_MEMORY_MARGIN)
    assert communication_bytes(chosen) < communication_bytes(memory_plan(shape, replace(settings, per_device=1)))
    nothing = choose_micro_batch(shape, replace(settings, world_size=1, gpu_memory_gb=40))
    assert not nothing.fits and nothing.per_device == 1 and "none fits in 36.0 of 40 GiB" in nothing.micro_batch_reason


def test_auto_micro_batch_on_cpu_is_at_most_4_and_a_number_wins(tmp_path):
    """On CPU (no GPU, no link) auto takes the largest of 4, 2, 1 that splits the batch and fits the process's
    share of RAM; `check_run` holds that split until the plan decides; "auto" parses like the other auto
    settings; a number given is the plan's and the run's."""
    shape = load_model_shape(str(write_config(tmp_path / "tiny", TINY)))
    auto = make_config(per_device_train_batch_size="auto", global_batch_size=16)
    assert auto.per_device_train_batch_size is None
    assert parse_config(["--per_device_train_batch_size", "auto"]).per_device_train_batch_size is None
    run = check_run(auto, 2, on_gpu=False)
    assert (run.batch.per_device, run.batch.accumulation) == (4, 2)  # until the plan decides: the largest of 4, 2, 1
    plan = memory_plan_for_run(auto, shape, run, 2, 1, 15.0, device="cpu")
    assert (plan.per_device, plan.accumulation) == (4, 2) and "up to 4" in plan.micro_batch_reason
    assert "s at" not in plan.micro_batch_reason  # no link on CPU: traffic in bytes only
    six = make_config(per_device_train_batch_size="auto", global_batch_size=6)
    assert memory_plan_for_run(six, shape, check_run(six, 1, on_gpu=False), 1, 1, 15.0, device="cpu").per_device == 2
    given = make_config(per_device_train_batch_size=8, global_batch_size=16)
    fixed = memory_plan_for_run(given, shape, check_run(given, 2, on_gpu=False), 2, 1, 15.0, device="cpu")
    assert (fixed.per_device, fixed.micro_batch_reason) == (8, "")
    with pytest.raises(Exception, match="per_device_train_batch_size: cannot read 'big'"):
        make_config(per_device_train_batch_size="big")


def test_auto_micro_batch_trains_on_cpu(tmp_path, capsys):
    """A real run with the auto micro-batch on CPU: the plan's choice (4 of a global batch of 8) is the run's."""
    model = small_llama(tmp_path / "llama")
    summary = train(make_config(model_name_or_path=str(model), data_path="seed", output_dir=str(tmp_path / "run"),
                                max_examples=16, global_batch_size=8, per_device_train_batch_size="auto", max_steps=1,
                                model_max_length=128, device="cpu"))
    out = capsys.readouterr().out
    assert summary["finished"] and "micro-batch 4 (per_device_train_batch_size auto" in out
    assert "steps of 8 = 4 per device × 2 accumulation × 1 process(es)" in out


def test_a_run_the_plan_rejects_stops_before_loading_unless_ignore_plan(tmp_path, monkeypatch, capsys):
    """`python -m alpaca_helpers.train` with a model whose plan cannot fit (LLaMA-65B's shape from its config.json,
    no weights, fully fine-tuned in one CPU process: about 1 TB against this machine's RAM) stops after the plan,
    before any data or weights load, in one `error:` line; `--ignore_plan true` goes on to load them. (On a GPU
    the same check runs against the GPU's memory; the GPU case is tested at `launch_summary`, test_train_launch.py.)"""
    folder = tmp_path / "llama-65b"
    folder.mkdir()
    size = dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=64)
    (folder / "config.json").write_text(json.dumps({**llama_7b_config(**size), "vocab_size": 32000}))
    load_vocabulary("llama-spm").save_pretrained(folder)
    loaded = []

    class Loading(Exception):
        pass

    def setup_data(self):
        loaded.append(True)
        raise Loading

    monkeypatch.setattr(recipe.Recipe, "setup_data", setup_data)
    argv = ["--model_name_or_path", str(folder), "--data_path", "seed", "--output_dir", str(tmp_path / "run"),
            "--device", "cpu", "--global_batch_size", "8", "--per_device_train_batch_size", "auto"]
    assert recipe.main(argv) == 1 and not loaded
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert re.match(r"error: the memory plan needs [\d,.]+ GiB per process but each of the 1 process\(es\) has "
                    r"[\d.]+ GiB of this machine's RAM: the run does not fit; "
                    r"(first suggestion|no single change)", err), err
    with pytest.raises(Loading):
        recipe.main(argv + ["--ignore_plan", "true"])
    assert loaded and "starting anyway (ignore_plan=true)" in capsys.readouterr().out


def test_the_7b_preset_is_planned_offline_from_the_shipped_config(monkeypatch, capsys):
    """`python -m alpaca_helpers.train.plan --config alpaca_7b --gpus 8 --gpu H100` plans the preset's own model
    (huggyllama/llama-7b) with no network, from the config.json the project ships (configs/models/), and picks
    16 × 1 as with the real folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--config", "alpaca_7b", "--gpus", "8", "--gpu", "H100"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("huggyllama/llama-7b: 6.74B parameters") and "16 per device × 1 accumulation" in text
