"""Two "machines" on 127.0.0.1: two launches of `python -m alpaca_helpers.train.launch --num_machines 2`
(the command `scripts/slurm_train.sbatch` runs on each node), one CPU process each, gloo, sharing the
output folder as nodes share a file system.

They must train the tiny LLaMA to the same per-step losses and final weights as one process over the same
global batches, within test_train_fsdp.py's tolerances (1e-4 absolute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train import make_tiny_llama

from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train.config import make_config
from alpaca_helpers.train.launch import free_port
from alpaca_helpers.train.recipe import train

pytestmark = pytest.mark.slow

RUN = {"max_examples": "48", "global_batch_size": "8", "per_device_train_batch_size": "2", "max_steps": "3",
       "learning_rate": "1e-3", "model_max_length": "256", "bf16": "false"}  # fp32: the tolerances are fp32's


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_two_machines_train_like_one_process(tmp_path, default_model_dir):
    tiny = make_tiny_llama(tmp_path / "tiny", default_model_dir)
    out = tmp_path / "two_machines"
    port = free_port()
    train_args = ["--model_name_or_path", str(tiny), "--output_dir", str(out)]
    train_args += [item for k, v in RUN.items() for item in (f"--{k}", v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    machines = [subprocess.Popen([sys.executable, "-m", "alpaca_helpers.train.launch", "--gpus", "0",
                                  "--num_machines", "2", "--machine_rank", str(rank),
                                  "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                                  "--", *train_args],
                                 cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    try:
        logs = [m.communicate(timeout=300)[0] for m in machines]
    finally:
        for m in machines:
            m.kill()
    assert [m.returncode for m in machines] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "--num_machines 2 --machine_rank 1 --main_process_ip 127.0.0.1" in logs[1]  # the command it ran
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["fsdp"] and len(summary["parameters_per_rank"]) == 2
    assert "8 = 2 per device × 2 accumulation × 2 process(es)" in logs[0]  # the global batch over both machines

    single = tmp_path / "single"
    train(make_config(model_name_or_path=str(tiny), output_dir=str(single), **RUN))
    one, two = losses(single), losses(out)
    assert len(one) == len(two) == 3
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4
    a, b = load_file(single / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
