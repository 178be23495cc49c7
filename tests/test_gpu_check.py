"""`scripts/gpu_check.sh --cpu`: the GPU proof's own code on tiny shapes, CPU and gloo, so that it cannot rot
between GPU sessions. One real run (about a minute on 2 busy cores) that every assertion shares: the
in-process FSDP and LoRA runs with their plans, a checkpoint, stop, resume and final save, notebook 04 under
papermill, and 2 gloo processes, all with the real LLaMA-1/2 tokenizer (SentencePiece, no pad token)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import pytest

from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train.gpu_check import markdown

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
    assert list(result["checks"]) == ["full_fsdp_bf16", "full_fsdp_bf16_compiled", "lora_7b", "checkpoint_resume",
                                      "notebook_04", "two_processes"]
    assert all(check["ok"] and "error" not in check for check in result["checks"].values())
    assert table in stdout and table.count("| ok |") == 5  # the table it prints is the one it writes
    assert "| full_fsdp_bf16_compiled |" in table and "skipped on CPU" in table  # said in the table
    assert ("| check | model | micro-batch × accumulation | tokens/s | MFU | peak allocated GiB | peak reserved GiB "
            "| plan GiB | reserved / plan |") in table


def test_the_checks_measure_what_they_say(report):
    checks = report[0]["checks"]
    full, lora = checks["full_fsdp_bf16"], checks["lora_7b"]
    assert full["fsdp"] and full["bf16"] and not full["lora"] and full["plan_mode"].startswith("full, FSDP over 1")
    assert lora["lora"] and lora["bf16"] and lora["trainable_parameters"] < lora["parameters"] / 10
    for run in (full, lora):
        assert run["tokens_per_s"] > 0 and run["planned_gib"] > 0 and run["mfu"] is None  # no MFU on CPU
        assert run["peak_reserved_gib"] is None and run["peak_over_plan"] is None  # no caching allocator on CPU
    assert checks["notebook_04"]["steps"] == 2 and checks["notebook_04"]["models_released"] == 2
    two = checks["two_processes"]
    assert two["world_size"] == 2 and two["ranks_that_loaded_full_weights"] == 1 and two["finite"]


def test_the_models_have_the_real_llama_vocabulary(report):
    """LLaMA-1/2's 32,000 tokens and no pad token: the run adds <pad> and grows the embeddings to 32,064 rows."""
    result = report[0]
    assert result["vocabulary"] == "llama-spm"
    resume = result["checks"]["checkpoint_resume"]
    assert resume["reloaded_vocabulary"] == 32001 and resume["reloaded_pad_token"] == "<pad>"
    assert resume["reloaded_embedding_rows"] == 32064
    assert 32000 * 64 * 2 < result["checks"]["full_fsdp_bf16"]["parameters"]  # untied embeddings of 32K rows


def test_a_stopped_run_resumes_and_its_final_save_reloads(report):
    resume = report[0]["checks"]["checkpoint_resume"]
    assert resume["stopped"] == {"steps": 2, "finished": False, "checkpoints": ["checkpoint-2"], "model_saved": False}
    assert resume["steps_logged"] == [1, 2, 3, 4] and resume["log_kept_before_resume"] and resume["finished"]
    assert resume["reload_max_logit_diff"] < 1e-4


def test_a_missing_package_is_one_line_before_any_model(tmp_path):
    """A real Python without the checks' packages (a bare virtual environment): exit 2 in seconds, one line
    naming what to carry, nothing built."""
    venv.create(tmp_path / "bare", with_pip=False)
    out = tmp_path / "out"
    proc = subprocess.run([str(tmp_path / "bare" / "bin" / "python"), "-m", "alpaca_helpers.train.gpu_check", "--cpu",
                           "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.strip().count("\n") == 0
    assert all(name in proc.stderr for name in ("torch", "transformers", "gguf", "datasets", "papermill", "pyyaml"))
    assert "scripts/gpu_check_requirements.txt" in proc.stderr and not out.exists()


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
    assert {"datasets", "dill", "multiprocess", "gguf", "papermill", "nbclient", "ipykernel", "pyzmq",
            "tornado"} <= set(names)


def test_the_table_sets_the_reserved_peak_against_the_plan_and_the_compiled_run_beside_the_eager_one():
    """The layout of a GPU report (stand-in figures, not measurements: no GPU here): the ratio column is the
    reserved peak over the plan, and a line compares the run with `torch_compile` on and off."""
    eager = {"parameters": 1.1e9, "micro_batch": 8, "accumulation": 8, "tokens_per_s": 20000.0, "mfu": 0.40,
             "peak_memory_gib": 50.0, "peak_reserved_gib": 55.0, "planned_gib": 50.0, "peak_over_plan": 1.1,
             "check_seconds": 60.0, "ok": True}
    report = {"mode": "cuda", "seconds": 120.0, "checks": {
                  "full_fsdp_bf16": eager, "full_fsdp_bf16_compiled": {**eager, "tokens_per_s": 25000.0, "mfu": 0.5}},
              "environment": {"device": "stand-in", "gpus": 1, "versions": {"torch": "2.13", "transformers": "5.25"}}}
    table = markdown(report)
    assert "| full_fsdp_bf16 | 1.10B | 8 × 8 | 20,000 | 40.0% | 50.00 | 55.00 | 50.00 | 1.10 | 60 | ok |" in table
    assert ("torch_compile (each decoder layer compiled): 25,000 tokens/s against 20,000 without (× 1.25), "
            "MFU 50.0% against 40.0%") in table
    del report["checks"]["full_fsdp_bf16_compiled"]
    assert "torch_compile" not in markdown(report)
