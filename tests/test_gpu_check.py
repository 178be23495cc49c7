"""`scripts/gpu_check.sh --cpu`: the GPU proof's own code on tiny shapes, CPU and gloo, so that it cannot rot
between GPU sessions. One real run (about 1.5 minutes on 2 busy cores) that every assertion shares: the
in-process FSDP and LoRA runs with their plans, notebook 04 under papermill, and 2 gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from alpaca_helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--out", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), proc.stdout


def test_every_check_runs_and_passes(report):
    result, table, stdout = report
    assert result["mode"] == "cpu" and result["ok"]
    assert list(result["checks"]) == ["full_fsdp_bf16", "lora_7b", "notebook_04", "two_processes"]
    assert all(check["ok"] and "error" not in check for check in result["checks"].values())
    assert table in stdout and table.count("| ok |") == 4  # the table it prints is the one it writes
    assert "| check | model | micro-batch × accumulation | tokens/s | MFU | peak GiB | plan GiB |" in table


def test_the_checks_measure_what_they_say(report):
    checks = report[0]["checks"]
    full, lora = checks["full_fsdp_bf16"], checks["lora_7b"]
    assert full["fsdp"] and full["bf16"] and not full["lora"] and full["plan_mode"].startswith("full, FSDP over 1")
    assert lora["lora"] and lora["bf16"] and lora["trainable_parameters"] < lora["parameters"] / 10
    for run in (full, lora):
        assert run["tokens_per_s"] > 0 and run["planned_gib"] > 0 and run["mfu"] is None  # no MFU on CPU
    assert checks["notebook_04"]["steps"] == 2 and checks["notebook_04"]["models_released"] == 2
    two = checks["two_processes"]
    assert two["world_size"] == 2 and two["ranks_that_loaded_full_weights"] == 1 and two["finite"]


def test_a_bare_machine_without_wheels_is_told_what_to_carry(tmp_path):
    """No `datasets`/papermill and no .whl/ folder: one line naming the download script."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/bash\n[ \"$1\" = -c ] && exit 1\nexit 0\n")  # stands in for a Python lacking them
    fake.chmod(0o755)
    scripts = tmp_path / "repo" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "gpu_check.sh").write_text((REPO_ROOT / "scripts" / "gpu_check.sh").read_text())
    proc = subprocess.run(["bash", str(scripts / "gpu_check.sh")], env={**os.environ, "PYTHON": str(fake)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "scripts/gpu_check_wheels.sh" in proc.stderr


def test_the_wheel_list_pins_one_version_of_each():
    lines = [line.strip() for line in (REPO_ROOT / "scripts" / "gpu_check_requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    names = [line.split("==")[0].lower() for line in lines]
    assert all("==" in line for line in lines) and len(names) == len(set(names))
    assert {"datasets", "dill", "multiprocess", "papermill", "nbclient", "ipykernel", "pyzmq", "tornado"} <= set(names)
