"""Fail fast: a rank that stops answering ends a run within `step_timeout_minutes`, not `dist_timeout_minutes`.

Real runs of 2 CPU processes (gloo, FSDP2) under the notebook's launcher (`launch_command`, `run_streaming`). The
fault comes from the test, not the product: a wrapper script patches the recipe in one rank, then runs the real
`recipe.main`. The short limit is a fraction of a minute here, so each run takes seconds.

Under NCCL the same timeouts are set (`_set_pg_timeout` reaches both backends), but NCCL's watchdog ends the
process itself, with its own message; only a run on several GPUs could show that.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from test_train import make_tiny_llama

from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train.config import TrainConfigError, check_run, parse_config
from alpaca_helpers.train.launch import LaunchError, launch_command, run_streaming

pytestmark = pytest.mark.slow

SHORT_MINUTES = 0.05  # 3 s: every later collective of a training step
LONG_MINUTES = 2.0  # setup, the first step, checkpoints, the final save
RUN = ["--max_examples", "24", "--global_batch_size", "4", "--per_device_train_batch_size", "2",
       "--model_max_length", "128", "--learning_rate", "1e-3", "--bf16", "false", "--progress_bar", "false",
       "--step_timeout_minutes", str(SHORT_MINUTES), "--dist_timeout_minutes", str(LONG_MINUTES)]

# Fault injection, in the test only: `hang` makes rank 1 sleep at the start of step 2; `slow_save` makes rank 0
# sleep before each save (checkpoint and final folder), longer than the short limit, shorter than the long one.
WRAPPER = '''
import os, sys, time
from alpaca_helpers.train import recipe

fault, seconds, rank = sys.argv[1], float(sys.argv[2]), int(os.environ["RANK"])
if fault == "hang" and rank == 1:
    real_step = recipe.Recipe.train_step

    def train_step(self, step):
        if step == 2:
            time.sleep(seconds)
        return real_step(self, step)

    recipe.Recipe.train_step = train_step
if fault == "slow_save" and rank == 0:
    for name in ("save_checkpoint", "save_hf_folder"):  # the names the recipe calls (imported from distributed)
        def slow(*args, _real=getattr(recipe, name), _name=name, **kwargs):
            print(f"fault: {_name} sleeps {seconds} s", flush=True)
            time.sleep(seconds)
            return _real(*args, **kwargs)

        setattr(recipe, name, slow)
raise SystemExit(recipe.main(sys.argv[3:]))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("timeouts") / "tiny", default_model_dir)


def launch_with_fault(tmp_path: Path, tiny: Path, fault: str, seconds: float, *extra: str) -> tuple[list[str], float]:
    """Run 2 processes through the wrapper; returns the output lines and the wall time (LaunchError on failure)."""
    script = tmp_path / "with_fault.py"
    script.write_text(WRAPPER)
    cmd = launch_command(["--model_name_or_path", str(tiny), "--output_dir", str(tmp_path / "out"), *RUN, *extra],
                         gpus=0, cpu_processes=2, main_process_port=free_port())
    at = cmd.index("alpaca_helpers.train")
    cmd[at - 1:at + 1] = [str(script), fault, str(seconds)]  # the script instead of `-m alpaca_helpers.train`
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    lines: list[str] = []
    start = time.perf_counter()
    try:
        run_streaming(cmd, echo=lines.append, env=env)
    finally:
        elapsed = time.perf_counter() - start
    return lines, elapsed


def test_a_rank_that_stops_answering_ends_the_run_within_the_short_limit(tmp_path, tiny):
    """Rank 1 sleeps 90 s in step 2; rank 0 gives up after 3 s with one line naming the phase and itself, and
    the launcher stops rank 1. Before this, a hung rank kept the others waiting the whole `dist_timeout_minutes`."""
    start = time.perf_counter()
    with pytest.raises(LaunchError) as failed:
        launch_with_fault(tmp_path, tiny, "hang", 90, "--max_steps", "3", "--save_steps", "0")
    elapsed = time.perf_counter() - start
    first_line = str(failed.value).splitlines()[0]
    assert first_line == ("training exited with status 1: rank 0 waited more than 0.05 min for the other ranks "
                          "during training step 2 (step_timeout_minutes): a rank stopped answering; last lines:")
    assert elapsed < 60 < LONG_MINUTES * 60  # start-up (~10-20 s) included; rank 1's sleep alone is 90 s
    assert not (tmp_path / "out" / "model").exists()


def test_a_slow_rank_0_save_under_the_long_limit_succeeds(tmp_path, tiny):
    """Rank 0 takes 4 s (longer than the 3 s step limit) before the checkpoint and before the final save while
    rank 1 waits: the saves run under `dist_timeout_minutes`, and step 3 runs under the short limit again."""
    lines, elapsed = launch_with_fault(tmp_path, tiny, "slow_save", 4, "--max_steps", "3", "--save_steps", "2")
    out = tmp_path / "out"
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and (out / "model" / "config.json").is_file()
    assert any(line.startswith("done: 3/3 steps") for line in lines), lines[-20:]
    assert [line for line in lines if line.startswith("fault: ")] == ["fault: save_checkpoint sleeps 4.0 s",
                                                                      "fault: save_hf_folder sleeps 4.0 s"]
    assert elapsed > 8  # both slow saves happened


def test_step_timeout_takes_fractions_and_must_be_positive():
    assert parse_config([]).step_timeout_minutes == 5.0 and parse_config([]).dist_timeout_minutes == 120.0
    assert parse_config(["--step_timeout_minutes", "0.5"]).step_timeout_minutes == 0.5
    with pytest.raises(TrainConfigError, match="step_timeout_minutes must be > 0, got 0"):
        check_run(parse_config(["--step_timeout_minutes", "0"]), 2, on_gpu=False)
