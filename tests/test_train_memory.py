"""Memory that tells the truth: the CUDA allocator's expandable segments in every launch, the reserved peak
beside the allocated one in the log, and the GPU proof's peak-to-plan ratio on the reserved figure.

`group_by_length` gives every micro-batch a new shape, which fragments CUDA's caching allocator: memory held
but unused, which `max_memory_allocated` hides and an OOM counts. Only a GPU can show the fragmentation itself
and its reserved figure; here the environment each launch path gives its processes (a real subprocess reports
what it got), the log row's field on CPU, and the ratio computed from log rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from test_train import make_tiny_llama

from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train import launch
from alpaca_helpers.train.allocator import ALLOCATOR_SETTING
from alpaca_helpers.train.config import make_config
from alpaca_helpers.train.gpu_check import peak_over_plan, steady_figures
from alpaca_helpers.train.launch import launch_environment, run_streaming
from alpaca_helpers.train.recipe import console_line, peak_memory_gb, peak_reserved_gb, train

ALLOCATOR_NAMES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
PRINT_ALLOCATOR = "import os; print([os.environ.get(n) for n in ('PYTORCH_ALLOC_CONF', 'PYTORCH_CUDA_ALLOC_CONF')])"


def test_the_launch_environment_has_expandable_segments_unless_the_user_set_an_allocator():
    assert ALLOCATOR_SETTING == "expandable_segments:True"
    assert launch_environment(base={})["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    mine = {"PYTORCH_ALLOC_CONF": "backend:cudaMallocAsync"}
    assert launch_environment(base=mine)["PYTORCH_ALLOC_CONF"] == "backend:cudaMallocAsync"
    older = launch_environment(base={"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"})  # torch reads it first
    assert older["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128" and "PYTORCH_ALLOC_CONF" not in older
    given = launch_environment({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}, base={})
    assert "PYTORCH_ALLOC_CONF" not in given  # a caller's own setting counts as the user's
    assert launch_environment(base={})["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize("user", [None, "PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"])
def test_a_launched_process_gets_it_and_a_users_value_is_kept(monkeypatch, user):
    """`run_streaming` (notebooks, the ablation runner, the GPU proof's 2 processes) starts a real process."""
    for name in ALLOCATOR_NAMES:
        monkeypatch.delenv(name, raising=False)
    if user:
        monkeypatch.setenv(user, "garbage_collection_threshold:0.8")
    seen = run_streaming([sys.executable, "-c", PRINT_ALLOCATOR], echo=lambda line: None)
    expected = {None: ["expandable_segments:True", None],
                "PYTORCH_ALLOC_CONF": ["garbage_collection_threshold:0.8", None],
                "PYTORCH_CUDA_ALLOC_CONF": [None, "garbage_collection_threshold:0.8"]}[user]
    assert seen == [str(expected)]


def test_the_launcher_cli_and_a_hand_launch_of_the_training_module_get_it(monkeypatch):
    """`python -m alpaca_helpers.train.launch` (one per node under SLURM) execs accelerate with it; and
    `accelerate launch -m alpaca_helpers.train` by hand sets it in each training process before torch starts."""
    for name in ALLOCATOR_NAMES:
        monkeypatch.delenv(name, raising=False)
    execs = []

    class Execed(Exception):
        pass

    def fake_execve(path, args, env):
        execs.append(env)
        raise Execed

    monkeypatch.setattr(launch.os, "execve", fake_execve)
    with pytest.raises(Execed):
        launch.main(["--gpus", "0", "--", "--max_steps", "1"])
    assert execs[0]["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    probe = ("import os, runpy, sys\nsys.argv = ['alpaca_helpers.train', '--learning_rate', 'fast']\ntry:\n"
             "    runpy.run_module('alpaca_helpers.train', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             + PRINT_ALLOCATOR.replace("print(", "print('ALLOC', "))
    for user, expected in ((None, "expandable_segments:True"), ("max_split_size_mb:64", None)):
        env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_NAMES}
        if user:
            env["PYTORCH_CUDA_ALLOC_CONF"] = user
        proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        line = next(line for line in proc.stdout.splitlines() if line.startswith("ALLOC"))
        assert line == f"ALLOC {[expected, user]}", proc.stderr[-2000:]


def test_the_reserved_peak_is_read_from_the_allocator_on_cuda(monkeypatch):
    """Stand-ins for CUDA's counters (no GPU here): the reserved figure is `max_memory_reserved`, not the
    allocated one; on CPU there is none (the resident set, `peak_memory_gb`, is already all the process holds)."""
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 10 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 12 * 2**30)
    cuda = SimpleNamespace(type="cuda")
    assert (peak_memory_gb(cuda), peak_reserved_gb(cuda)) == (10.0, 12.0)
    assert peak_reserved_gb(torch.device("cpu")) is None and peak_memory_gb(torch.device("cpu")) > 0


def test_the_log_row_carries_the_reserved_peak_and_the_console_shows_it_where_there_is_one(tmp_path,
                                                                                            default_model_dir):
    tiny = make_tiny_llama(tmp_path / "tiny", default_model_dir)
    out = tmp_path / "run"
    summary = train(make_config(model_name_or_path=str(tiny), output_dir=str(out), max_examples=8,
                                global_batch_size=4, per_device_train_batch_size=2, max_steps=1,
                                model_max_length=128, device="cpu"))
    row = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert "peak_reserved_gb" in row and row["peak_reserved_gb"] is None and row["peak_memory_gb"] > 0  # CPU
    assert summary["peak_reserved_gb_per_rank"] is None and summary["peak_memory_gb_per_rank"][0] > 0
    assert console_line(row, 1).endswith(f"peak mem {row['peak_memory_gb']:.2f} GB")
    gpu_row = {**row, "peak_memory_gb": 61.25, "peak_reserved_gb": 70.5}
    assert console_line(gpu_row, 1).endswith("peak mem 61.25 GB (70.50 reserved)")


def log_row(step: int, allocated: float, reserved: float | None) -> dict:
    return {"step": step, "seconds": 2.0, "tokens": 1000, "trained_tokens": 500, "mfu": 0.4 if reserved else None,
            "loss": 1.0, "peak_memory_gb": allocated, "peak_reserved_gb": reserved}


def test_the_gpu_proof_sets_the_reserved_peak_against_the_plan():
    """Rows as a GPU run logs them: allocated peaks 9-10 GiB, reserved 12 (fragmentation); plan 10 GiB. The
    ratio is 1.2 (reserved), not 1.0 (allocated, which would hide the 2 GiB the allocator holds)."""
    rows = [log_row(1, 9.0, 11.0), log_row(2, 10.0, 12.0), log_row(3, 10.0, 11.5)]
    figures = steady_figures(rows)
    assert (figures["peak_memory_gib"], figures["peak_reserved_gib"]) == (10.0, 12.0)
    assert peak_over_plan(figures, 10.0) == pytest.approx(1.2)
    assert figures["tokens_per_s"] == 500.0 and figures["steps"] == 3  # step 1, the warm-up, left out of speed
    assert steady_figures(rows, warmup=2)["mfu"] == pytest.approx(0.4)
    cpu = steady_figures([log_row(1, 0.8, None), log_row(2, 0.9, None)])  # resident memory: no ratio
    assert cpu["peak_reserved_gib"] is None and peak_over_plan(cpu, 0.1) is None
