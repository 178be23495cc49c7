"""The GPU path's launch and process-group settings, held where a CPU machine can see them.

What these guard only shows on GPUs (NCCL timeouts, `cpu_offload` clip-norm on an NCCL-only group,
accelerate's 1 thread per GPU process, a user's accelerate default config, port 29500 taken by another
run), so the tests check the command line and the `init_process_group` arguments, plus one real
`accelerate launch` of 2 CPU processes (torchrun, the launcher GPUs use) that reports its environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import timedelta

import pytest
import torch

from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train.distributed import DistEnv, init_distributed, process_group_args
from alpaca_helpers.train.launch import LaunchError, accelerate_config_file, launch_command, main, usable_cpus


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
    assert option(launch_command([], gpus=2, gpus_present=2, main_process_port=29600), "--main_process_port") == "29600"


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
    import torch.distributed as dist

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
    record what the script asks of them (2 nodes)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "scontrol": 'printf "node-a\\nnode-b\\n"\n',
        "srun": 'for a in "$@"; do [ "$a" = hostname ] && { echo "10.1.2.3 fe80::1"; exit 0; }; done\n'
                'while [ "${1#--}" != "$1" ]; do shift; done\n'
                'SLURM_NNODES=2 SLURM_NODEID=0 "$@" && SLURM_NNODES=2 SLURM_NODEID=1 "$@"\n',
        "fake_python": f'echo "$@" > {tmp_path}/node$SLURM_NODEID.args\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "PYTHON": str(bin_dir / "fake_python"), "GPUS_PER_NODE": "8"}
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


def test_launch_plan_splits_the_batch_over_all_machines():
    """The notebook's plan cell: the global batch over all processes of all machines, from config.json only."""
    from alpaca_helpers.train.config import choose_preset, load_preset, make_config
    from alpaca_helpers.train.launch import launch_plan, total_processes

    assert total_processes(0, 2) == 2 and total_processes(8, 1, 2) == 16 and total_processes(0, 1, 2) == 2
    config = make_config(**load_preset(choose_preset("auto", 0, False)))
    text = launch_plan(config, 0, 1, num_machines=2, gpu_memory_gb=8.0)
    assert f"batch: {config.global_batch_size} = 4 per device × 1 accumulation × 2 GPU(s) (2 machine(s))" in text
    assert "of 8 GiB" in text and "FSDP over 2" in text and "accumulated unsharded" not in text


def test_read_log_leaves_out_a_torn_last_line(tmp_path):
    from alpaca_helpers.train.launch import read_log

    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert list(read_log(tmp_path)["step"]) == [1, 2]
