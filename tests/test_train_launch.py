"""The GPU path's launch and process-group settings, held where a CPU machine can see them.

What these guard only shows on GPUs (NCCL timeouts, `cpu_offload` clip-norm on an NCCL-only group,
accelerate's 1 thread per GPU process, a user's accelerate default config, port 29500 taken by another
run), so the tests check the command line and the `init_process_group` arguments, plus one real
`accelerate launch` of 2 CPU processes (torchrun, the launcher GPUs use) that reports its environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import replace
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train.config import choose_preset, load_preset, make_config, overrides
from alpaca_helpers.train.distributed import DistEnv, init_distributed, process_group_args
from alpaca_helpers.train.launch import (
    LaunchError,
    accelerate_config_file,
    check_inputs,
    launch_command,
    launch_summary,
    main,
    read_log,
    run_streaming,
    total_processes,
    usable_cpus,
)
from alpaca_helpers.train.rehearsal import small_llama


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_gpu_launch_names_its_settings_instead_of_inheriting_them():
    cmd = launch_command(["--config", "configs/alpaca_7b.yaml"], gpus=8, gpus_present=8)
    assert option(cmd, "--config_file") == str(accelerate_config_file())
    assert "gpu_ids: all" in accelerate_config_file().read_text()
    assert option(cmd, "--gpu_ids") == "all" and option(cmd, "--num_processes") == "8" and "--multi_gpu" in cmd
    assert option(cmd, "--num_cpu_threads_per_process") == str(max(1, usable_cpus() // 8))
    port = int(option(cmd, "--main_process_port"))
    assert port != 29500
    with socket.socket() as s:  # free when chosen
        s.bind(("127.0.0.1", port))
    one = launch_command([], gpus=1, gpus_present=1)
    assert "--multi_gpu" not in one and option(one, "--num_cpu_threads_per_process") == str(usable_cpus())
    fixed = launch_command([], gpus=2, gpus_present=2, main_process_port=29600)
    assert option(fixed, "--main_process_port") == "29600"


def test_several_machines_split_the_global_batch_over_all_their_processes():
    cmd = launch_command([], gpus=8, gpus_present=8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    assert option(cmd, "--num_processes") == "16" and option(cmd, "--num_machines") == "2"
    assert option(cmd, "--machine_rank") == "1" and option(cmd, "--main_process_ip") == "10.0.0.1"
    assert option(cmd, "--main_process_port") == "29500"  # the same on every machine unless given
    cpu = launch_command([], gpus=0, cpu_processes=1, num_machines=2, machine_rank=0, main_process_ip="127.0.0.1",
                         main_process_port=29611)
    assert "--multi_gpu" in cpu and "--cpu" not in cpu and option(cpu, "--num_processes") == "2"
    with pytest.raises(LaunchError, match="several machines need main_process_ip"):
        launch_command([], gpus=8, gpus_present=8, num_machines=2)
    with pytest.raises(LaunchError, match=r"machine_rank must be in 0\.\.1 for 2 machine\(s\), got 2"):
        launch_command([], gpus=8, gpus_present=8, num_machines=2, machine_rank=2, main_process_ip="10.0.0.1")
    with pytest.raises(LaunchError, match="main_process_port must be in 1..65535"):
        launch_command([], main_process_port=70000)


def test_launcher_cli_refuses_a_bad_value_in_one_line(capsys):
    assert main(["--gpus", "0", "--num_machines", "2", "--", "--max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: several machines need main_process_ip") and len(err.strip().splitlines()) == 1


def test_a_real_launch_ignores_the_users_accelerate_default_config(tmp_path):
    """2 CPU processes through torchrun (the GPU launcher) with a hostile default config in HF_HOME."""
    hf_home = tmp_path / "hf_home"
    (hf_home / "accelerate").mkdir(parents=True)
    (hf_home / "accelerate" / "default_config.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nmixed_precision: fp16\n"
        "gpu_ids: '7'\nnum_processes: 4\nenable_cpu_affinity: true\nmain_process_port: 29500\n")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "env_probe.py").write_text(  # stands in for the training module: reports what it was given
        "import json, os, sys\n"
        "keys = ['CUDA_VISIBLE_DEVICES', 'OMP_NUM_THREADS', 'MASTER_PORT', 'ACCELERATE_MIXED_PRECISION',\n"
        "        'ACCELERATE_CPU_AFFINITY', 'WORLD_SIZE', 'RANK']\n"
        "out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "open(os.path.join(out, 'rank' + os.environ['RANK'] + '.json'), 'w').write(\n"
        "    json.dumps({k: os.environ.get(k) for k in keys}))\n")
    cmd = launch_command(["--output_dir", str(tmp_path)], gpus=0, cpu_processes=2)
    cmd[cmd.index("alpaca_helpers.train")] = "env_probe"
    env = {**os.environ, "HF_HOME": str(hf_home), "PYTHONPATH": str(probe)}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for s in seen:
        assert s["WORLD_SIZE"] == "2"  # our --num_processes, not the config's 4
        assert s["CUDA_VISIBLE_DEVICES"] is None  # the config's gpu_ids '7' did not leak
        assert s["ACCELERATE_MIXED_PRECISION"] == "no" and s["ACCELERATE_CPU_AFFINITY"] is None
        assert s["OMP_NUM_THREADS"] == option(cmd, "--num_cpu_threads_per_process")
        assert s["MASTER_PORT"] == option(cmd, "--main_process_port") != "29500"


def test_process_group_gets_a_long_timeout_its_device_and_gloo_beside_nccl_when_offloading():
    gpu = DistEnv(rank=3, local_rank=3, world_size=8, device=torch.device("cuda", 3))
    args = process_group_args(gpu)
    assert args == {"rank": 3, "world_size": 8, "timeout": timedelta(minutes=120), "backend": "nccl",
                    "device_id": torch.device("cuda", 3)}
    assert process_group_args(gpu, cpu_offload=True)["backend"] == "cuda:nccl,cpu:gloo"
    cpu = DistEnv(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    assert process_group_args(cpu) == {"rank": 0, "world_size": 2, "timeout": timedelta(minutes=120),
                                       "backend": "gloo"}
    assert process_group_args(cpu, minutes=240)["timeout"] == timedelta(hours=4)


def test_the_arguments_start_a_real_process_group(monkeypatch):
    """torch accepts them: a 1-rank gloo group started by `init_distributed` with a 3-hour timeout."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    init_distributed(DistEnv(0, 0, 1, torch.device("cpu")), minutes=180)
    try:
        assert dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout == timedelta(minutes=180)
        t = torch.ones(2)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0]
    finally:
        dist.destroy_process_group()


def test_slurm_script_starts_one_launcher_per_node_with_its_rank(tmp_path):
    """SLURM is not available here: `srun`, `scontrol` and the Python of the nodes are stand-ins that
    record what the script asks of them (2 nodes). srun is given the job's --cpus-per-task (since Slurm
    22.05 it no longer inherits it from sbatch: the node's 8 training processes would share one core)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "scontrol": 'printf "node-a\\nnode-b\\n"\n',
        "srun": 'for a in "$@"; do [ "$a" = hostname ] && { echo "10.1.2.3 fe80::1"; exit 0; }; done\n'
                f'while [ "${{1#--}}" != "$1" ]; do echo "$1" >> {tmp_path}/srun.options; shift; done\n'
                'SLURM_NNODES=2 SLURM_NODEID=0 "$@" && SLURM_NNODES=2 SLURM_NODEID=1 "$@"\n',
        "fake_python": f'echo "$@" > {tmp_path}/node$SLURM_NODEID.args\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "PYTHON": str(bin_dir / "fake_python"), "GPUS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "64"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "slurm_train.sbatch"), "--config",
                           "configs/alpaca_13b.yaml", "--output_dir", "/shared/runs/13b"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        args = (tmp_path / f"node{rank}.args").read_text().split()
        assert args[:2] == ["-m", "alpaca_helpers.train.launch"]
        launch = dict(zip(args[2:12:2], args[3:12:2]))
        assert launch == {"--gpus": "8", "--num_machines": "2", "--machine_rank": str(rank),
                          "--main_process_ip": "10.1.2.3", "--main_process_port": "29500"}
        assert args[12:] == ["--", "--config", "configs/alpaca_13b.yaml", "--output_dir", "/shared/runs/13b"]
    assert (tmp_path / "srun.options").read_text().split() == ["--kill-on-bad-exit=1", "--cpus-per-task=64"]


def test_launch_summary_splits_the_batch_over_all_machines():
    """The notebook's plan cell: the global batch over all processes of all machines, from config.json only."""
    assert total_processes(0, 2) == 2 and total_processes(8, 1, 2) == 16 and total_processes(0, 1, 2) == 2
    config = make_config(**load_preset(choose_preset("auto", 0, False)))
    text = launch_summary(config, 0, 1, num_machines=2, gpu_memory_gb=8.0)
    assert f"batch: {config.global_batch_size} = 4 per process × 1 accumulation × 2 process(es) (2 machine(s))" in text
    assert "of 8 GiB" in text and "FSDP over 2" in text and "accumulated unsharded" not in text


LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}  # huggyllama/llama-7b's config.json


def headline_config(output_dir):
    """The configuration notebook 04 builds for `papermill ... -p gpus 8` (every other parameter left alone),
    with the lines of its first code cell."""
    preset_file = choose_preset("auto", 8, False)
    settings = overrides(model_name_or_path=None, data_path=None, max_examples=None, val_set_size=None,
                         num_train_epochs=None, model_max_length=None, learning_rate=None, max_steps=-1,
                         lora=False, report_to="none")
    return preset_file, make_config(**{**load_preset(preset_file), **settings, "output_dir": str(output_dir)})


def test_the_headline_command_is_alpacas_7b_run_and_plans_it(tmp_path, monkeypatch):
    """`-p gpus 8` with the auto preset: LLaMA-7B on the 52K, 3 epochs, global batch 128, and the plan printed
    before launch is the 7B plan. huggyllama/llama-7b's config.json is written locally (a folder of that
    name in the working directory, which is looked in first): the plan needs nothing else."""
    folder = tmp_path / "huggyllama" / "llama-7b"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    monkeypatch.chdir(tmp_path)
    preset_file, config = headline_config(tmp_path / "out")
    assert preset_file.name == "alpaca_7b.yaml"
    assert (config.model_name_or_path, config.data_path, config.num_train_epochs, config.global_batch_size,
            config.max_examples) == ("huggyllama/llama-7b", "tatsu-lab/alpaca", 3, 128, None)
    text = launch_summary(config, 8, gpu_memory_gb=80, gpu_name="NVIDIA A100-SXM4-80GB", gpu_bf16=True,
                          num_examples=52_002)
    first = text.splitlines()[0]
    assert first.startswith("huggyllama/llama-7b: 6.74B parameters") and "FSDP over 8 GPU(s); bf16 compute" in first
    # per_device_train_batch_size auto: one micro-batch of 16 per step fits 80 GB and all-gathers the weights
    # twice per step instead of 4 × 2 times
    assert "batch: 128 = 16 per device × 1 accumulation × 8 GPU(s)" in text and "fits" in text
    assert "micro-batch (per_device_train_batch_size auto): 16 × 1 accumulation" in text
    assert "runner-up 8 × 2 accumulation" in text
    assert "time: 1218 steps" in text and "NVLink 300 GB/s" in text  # 52,002 // 128 × 3 epochs


def test_a_run_the_plan_rejects_stops_in_one_line_before_launching(tmp_path, monkeypatch):
    """Notebook 04 with `gpus=1` and the 7B preset (full fine-tuning): `launch_summary`, the cell before the
    launch, refuses in one line with the planned figure, the GPU's memory and the first change that fits, unless
    `ignore_plan`. Tested at this function: on a machine without a GPU the notebook stops earlier, at
    `check_gpus` (tests/test_nb04_train.py); the GPU's memory, name and bf16 are given as when planning ahead."""
    folder = tmp_path / "huggyllama" / "llama-7b"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    monkeypatch.chdir(tmp_path)
    config = make_config(**load_preset(choose_preset("auto", 1, False)))
    gpu = dict(gpu_memory_gb=80, gpu_name="NVIDIA H100 80GB HBM3", gpu_bf16=True)
    with pytest.raises(LaunchError) as refused:
        launch_summary(config, 1, **gpu)
    message = str(refused.value)
    assert len(message.splitlines()) == 1, message
    assert re.fullmatch(r"the memory plan needs 1\d\d\.\d GiB per GPU but each of the 1 GPU\(s\) has 80 GiB: the run "
                        r"does not fit; first suggestion: 2 GPUs \(\d+\.\d GiB per GPU\); ignore_plan=true starts it "
                        r"anyway", message), message
    text = launch_summary(replace(config, ignore_plan=True), 1, **gpu)  # who knows better goes on
    assert "does NOT fit" in text


def test_a_missing_model_or_data_set_is_one_line_naming_the_parameter(tmp_path, monkeypatch, default_model_dir):
    """Offline (or without the weights) the headline command stops before launching, in one line that says
    what is missing and which parameter to set."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    _, config = headline_config(tmp_path / "out")
    with pytest.raises(LaunchError) as nothing:  # neither a local folder nor in the Hub cache
        check_inputs(config, "alpaca_7b.yaml")
    folder = tmp_path / "huggyllama" / "llama-7b"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    with pytest.raises(LaunchError) as no_weights:  # the plan's config.json, but no weights
        check_inputs(config, "alpaca_7b.yaml")
    for error, what in ((nothing, "huggyllama/llama-7b"), (no_weights, "has no safetensors weights")):
        message = str(error.value)
        assert len(message.splitlines()) == 1 and what in message and "-p model_name_or_path" in message, message
    missing = make_config(model_name_or_path=str(default_model_dir), data_path=str(tmp_path / "alpaca_data.json"))
    with pytest.raises(LaunchError, match=r"^data \(from the preset\) .*alpaca_data\.json.*-p data_path") as no_data:
        check_inputs(missing)
    assert len(str(no_data.value).splitlines()) == 1
    assert check_inputs(make_config(model_name_or_path=str(default_model_dir), data_path="seed")) == 175


def test_read_log_leaves_out_a_torn_last_line(tmp_path):
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert list(read_log(tmp_path)["step"]) == [1, 2]


@pytest.fixture(scope="module")
def refused_model(tmp_path_factory, boundary_changing_tokenizer):
    """A small LLaMA (LLaMA-7B's config, random weights) whose tokenizer cannot be trained on."""
    folder = small_llama(tmp_path_factory.mktemp("refused") / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    boundary_changing_tokenizer.save_pretrained(folder)
    return folder


def test_a_tokenizer_that_cannot_work_or_none_is_one_line_before_launching(tmp_path, refused_model):
    """`check_inputs` loads the tokenizer next to the config and data: a refused one, a missing one, or a chat
    format without a template stops in one line naming the tokenizer, so no GPU ever spins up for it."""
    with pytest.raises(LaunchError) as refused:
        check_inputs(make_config(model_name_or_path=str(refused_model), data_path="seed"), "alpaca_7b.yaml")
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"the tokenizer of {refused_model}")
    assert "changes text at the boundary" in message and "alpaca_7b.yaml" in message
    bare = tmp_path / "bare"
    shutil.copytree(refused_model, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    no_tokenizer = r"^model .*bare \(from the preset\) has no tokenizer that loads here"
    with pytest.raises(LaunchError, match=no_tokenizer) as none:
        check_inputs(make_config(model_name_or_path=str(bare), data_path="seed"))
    assert len(str(none.value).splitlines()) == 1
    llama = small_llama(tmp_path / "llama")  # LLaMA's real tokenizer: accepted, but it has no chat template
    assert check_inputs(make_config(model_name_or_path=str(llama), data_path="seed")) == 175
    with pytest.raises(LaunchError, match="has no chat template: use prompt_format alpaca"):
        check_inputs(make_config(model_name_or_path=str(llama), data_path="seed", prompt_format="chat"))


@pytest.mark.slow
def test_a_failed_launch_names_the_ranks_own_error_first(tmp_path, refused_model):
    """When a launched run fails, the error's first line is the ranks' `error:` line, not torchelastic's
    `ChildFailedError` summary (a real 2-process launch that skips `check_inputs`)."""
    cmd = launch_command(["--config", "configs/cpu_default.yaml", "--model_name_or_path", str(refused_model),
                          "--data_path", "seed", "--output_dir", str(tmp_path / "out")], cpu_processes=2)
    with pytest.raises(LaunchError) as failed:
        run_streaming(cmd, echo=lambda line: None)
    first = str(failed.value).splitlines()[0]
    assert first.startswith("training exited with status 1: ") and "changes text at the boundary" in first, first
