"""Real ablations on the real default model: what the arms train on, equal steps, the statistics of real
results, the files, and a real run killed with kill -9 and resumed to identical results.

One small ablation (3 arms × 2 seeds, 2 steps each) runs once from Python; its results are the reference the
killed-and-resumed command-line run (the same ablation at seed 0: 3 runs) must reproduce exactly.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import make_tiny_llama

from alpaca_helpers.data import load_seed_tasks, save_alpaca
from alpaca_helpers.evaluate.ifeval import load_ifeval, score_ifeval
from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.understand.ablate import RESULTS_FILE, prepare, run_ablation
from alpaca_helpers.understand.errors import AblationError
from alpaca_helpers.understand.spec import parse_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SPEC = {
    "base": {"model_name_or_path": "default", "data_path": "seed", "max_examples": 24, "model_max_length": 96,
             "global_batch_size": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-4, "warmup_ratio": 0.0},
    "budget": {"steps": 2}, "seeds": [0, 1], "baseline": "all",
    "evaluation": {"heldout": 4, "teacher_items": 3, "shape_items": 2, "max_new_tokens": 8, "ifeval_items": 2,
                   "metrics": ["val_loss", "teacher_agreement", "answer_shape", "ifeval"]},
    "arms": {"all": {"kind": "base"}, "graded_n": {"kind": "selection", "method": "graded", "n": 4},
             "prompt_loss": {"kind": "mask", "train_on_prompt": True}},
}
DATA_ARMS = {
    "all": {"kind": "base"},
    "random_n": {"kind": "selection", "method": "random", "n": 6},
    "longest_n": {"kind": "selection", "method": "longest", "n": 6},
    "graded_n": {"kind": "selection", "method": "graded", "n": 6},
    "half": {"kind": "size", "fraction": 0.5},
    "diverse": {"kind": "diversity", "threshold": 0.3},
    "clean": {"kind": "cleaning"},
    "seed_only": {"kind": "source", "source": "seed"},
    "prompt_loss": {"kind": "mask", "train_on_prompt": True},
    "lr_high": {"kind": "setting", "learning_rate": 3e-4},
}


def without_timing(rows):
    return [{k: v for k, v in r.items() if k != "timing"} for r in rows]


ECHOED: list[str] = []  # what the reference run printed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation") / "api"
    return run_ablation(parse_spec(copy.deepcopy(SPEC)), out, progress=False, echo=ECHOED.append)


def test_each_run_prints_one_line_and_keeps_its_full_console_in_a_file(reference):
    runs = [line for line in ECHOED if line.startswith("[")]
    assert len(runs) == 6 and len(ECHOED) == 8  # the pool, the plan of runs, then one line per arm × seed
    assert runs[0].startswith("[1/6] all-seed0: ") and "steps of 2" in runs[0] and "val_loss " in runs[0]
    assert not any("step 2/2" in line or line.startswith("done:") for line in ECHOED)
    for row in reference.rows:
        log = (reference.output_dir / "runs" / f"{row['arm']}-seed{row['seed']}" / "console.log").read_text()
        assert "step 2/2 loss" in log and "done: 2/2 steps" in log  # the run's own lines, kept whole
        assert f"log {reference.output_dir / 'runs' / (row['arm'] + '-seed' + str(row['seed'])) / 'console.log'}" in \
            next(line for line in runs if f"{row['arm']}-seed{row['seed']}:" in line)


def test_the_arms_differ_in_their_data_and_only_there(tmp_path):
    seeds = load_seed_tasks()
    data = tmp_path / "pool.json"  # the course's shape: seed tasks and (here, pretend) self-instruct records
    save_alpaca([{**r, "source": "seed" if i % 3 else "self-instruct"} for i, r in enumerate(seeds[:60])], data)
    safety = tmp_path / "safety.json"  # a dose of extra records: what notebook 08's safety arms add
    save_alpaca([{"instruction": f"Explain how to do harmful thing number {i}.", "input": "",
                  "output": "I can't help with that.", "source": "safety"} for i in range(40)], safety)
    mix_arms = {f"safety_{share}": {"kind": "mix", "data_path": str(safety), "share": share}
                for share in (0, 0.03, 0.5)}
    spec = parse_spec({**copy.deepcopy(SPEC), "arms": {**DATA_ARMS, **mix_arms},
                       "base": {**SPEC["base"], "data_path": str(data), "max_examples": 30}})
    prepared = prepare(spec, tmp_path / "out", progress=False)
    pool = prepared.pool.train
    jobs = {(j.arm.name, j.seed): j for j in prepared.jobs}
    records = {key: json.loads(open(j.config.data_path).read()) for key, j in jobs.items()}
    for (name, seed), job in jobs.items():
        base = vars(jobs["all", seed].config)
        changed = {k for k, v in vars(job.config).items() if base[k] != v} - {"output_dir"}
        if name == "all":
            assert changed == set()
        elif name == "prompt_loss":
            assert changed == {"data_path", "train_on_prompt"} and job.config.train_on_prompt
        elif name == "lr_high":
            assert changed == {"data_path", "learning_rate"}
        else:
            assert changed == {"data_path"}, name  # a data arm changes its data and nothing else
        same_data = name in ("all", "prompt_loss", "lr_high", "safety_0")
        assert (records[name, seed] == records["all", seed]) == same_data, name
        drawn = records[name, seed][:len(pool)] if name.startswith("safety_") else records[name, seed]
        assert all(r in pool for r in drawn) and job.config.max_steps == 2
        assert job.config.seed == seed and job.config.val_set_size == 0 and job.config.model_name_or_path == "default"
    assert records["all", 0] == pool and not any(r in pool for r in prepared.pool.heldout)
    assert records["random_n", 0] != records["random_n", 1]  # the run seed draws the sample ...
    assert records["longest_n", 0] == records["longest_n", 1]  # ... the other selections are the same
    longest = sorted((len(r["output"]) for r in pool), reverse=True)[:6]
    assert sorted((len(r["output"]) for r in records["longest_n", 0]), reverse=True) == longest
    grade = {r["instruction"] + r["output"]: g for r, g in zip(pool, prepared.grades)}
    chosen = sorted((grade[r["instruction"] + r["output"]] for r in records["graded_n", 0]), reverse=True)
    assert chosen == sorted(prepared.grades, reverse=True)[:6]
    assert {r["source"] for r in records["seed_only", 0]} == {"seed"}
    assert len(records["half", 0]) == round(len(pool) / 2)
    assert len(records["diverse", 0]) < len(pool) and len(records["clean", 0]) < len(pool)
    # The dose arms: the whole pool, then round(share * pool / (1 - share)) safety records, the same for every seed.
    for name, k in (("safety_0.03", round(0.03 * len(pool) / 0.97)), ("safety_0.5", len(pool))):
        assert records[name, 0] == records[name, 1] and records[name, 0][:len(pool)] == pool
        assert [r["source"] for r in records[name, 0][len(pool):]] == ["safety"] * k and k >= 1


def test_every_arm_trains_the_same_steps_and_the_mask_arm_more_tokens(reference):
    rows = reference.rows
    assert [(r["arm"], r["seed"]) for r in rows] == [(a, s) for a in SPEC["arms"] for s in (0, 1)]
    assert {r["steps"] for r in rows} == {2} and {r["examples_seen"] for r in rows} == {4}
    for row in rows:
        run_dir = reference.output_dir / "runs" / f"{row['arm']}-seed{row['seed']}"
        log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and sum(r["trained_tokens"] for r in log) == row["trained_tokens"]
        assert not (run_dir / "model").exists()  # measured, removed
        assert set(row["metrics"]) == {"val_loss", "teacher_loss", "ended_share", "mean_tokens", "empty_share",
                                       "ifeval_prompt_strict", "ifeval_instruction_strict"}
        assert 0 < row["metrics"]["val_loss"] < 10 and 0 < row["metrics"]["teacher_loss"] < 10
    by = {(r["arm"], r["seed"]): r for r in rows}
    for seed in (0, 1):  # same records, same order: the prompt's tokens are what the mask arm adds
        assert by["prompt_loss", seed]["trained_tokens"] > 1.5 * by["all", seed]["trained_tokens"]
    assert by["graded_n", 0]["records"] == 4 and by["all", 0]["records"] > 4


def test_standard_errors_and_paired_differences_equal_a_direct_computation(reference):
    value = {(r["arm"], r["seed"], m): v for r in reference.rows for m, v in r["metrics"].items()}
    for t in reference.table:
        own = [value[t["arm"], s, t["metric"]] for s in (0, 1)]
        assert t["mean"] == pytest.approx(statistics.fmean(own), abs=1e-12)
        assert t["se"] == pytest.approx(statistics.stdev(own) / math.sqrt(2), abs=1e-12)
        if t["arm"] == "all":
            assert t["diff"] is None
            continue
        diffs = [value[t["arm"], s, t["metric"]] - value["all", s, t["metric"]] for s in (0, 1)]
        assert t["diff"] == pytest.approx((diffs[0] + diffs[1]) / 2, abs=1e-12)
        assert t["diff_se"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2, abs=1e-12)  # sd / sqrt(2) for n = 2
        assert t["diff_high"] - t["diff"] == pytest.approx(12.706 * t["diff_se"], abs=1e-12)


def test_the_result_files(reference):
    out = reference.output_dir
    tidy = list(csv.DictReader((out / "results.csv").open()))
    assert len(tidy) == len(reference.rows) * 7
    assert {(r["arm"], int(r["seed"]), r["metric"]): float(r["value"]) for r in tidy} == {
        (r["arm"], r["seed"], m): v for r in reference.rows for m, v in r["metrics"].items()}
    by_arm = list(csv.DictReader((out / "results_by_arm.csv").open()))
    assert [(r["arm"], r["metric"]) for r in by_arm] == [(t["arm"], t["metric"]) for t in reference.table]
    arms = json.loads((out / "ablation.json").read_text())["arms"]
    assert arms["graded_n"] == {"kind": "selection", "method": "graded", "n": 4}
    assert len(json.loads((out / "eval_sets.json").read_text())["heldout"]) == 4
    # the pool, graded once
    assert len((out / "grades.jsonl").read_text().splitlines()) == reference.rows[0]["records"]


def test_ifeval_is_notebook_06s_score_of_each_runs_own_answers(reference):
    keys = json.loads((reference.output_dir / "eval_sets.json").read_text())["ifeval"]
    prompts = {p["key"]: p for p in load_ifeval()}
    assert len(keys) == 2
    for row in reference.rows:
        answers = [json.loads(line) for line in (reference.output_dir / "runs" / f"{row['arm']}-seed{row['seed']}"
                                                 / "ifeval_answers.jsonl").read_text().splitlines()]
        by_id = {a["id"]: a["output"] for a in answers}
        scores = score_ifeval({prompts[k]["prompt"]: by_id[str(k)] for k in keys}, [prompts[k] for k in keys])
        assert row["metrics"]["ifeval_prompt_strict"] == scores["prompt_strict"]
        assert row["metrics"]["ifeval_instruction_strict"] == scores["instruction_strict"]


def test_a_finished_ablation_is_not_trained_again_and_never_mixed_with_other_settings(reference):
    lines = []
    again = run_ablation(parse_spec(copy.deepcopy(SPEC)), reference.output_dir, progress=False, echo=lines.append)
    assert without_timing(again.rows) == without_timing(reference.rows) and "6 already measured" in lines[-1]
    changed = copy.deepcopy(SPEC)
    changed["base"]["learning_rate"] = 5e-4
    with pytest.raises(AblationError, match="all-seed0 was measured under other settings"):
        run_ablation(parse_spec(changed), reference.output_dir, progress=False, echo=lines.append)


def test_kill_minus_9_then_resume_gives_identical_results(reference, tmp_path):
    spec, out = tmp_path / "ablation.yaml", tmp_path / "cli"
    spec.write_text(yaml.safe_dump(SPEC))
    # The reference's seed 0 only (`--seeds`): 3 arm × seed runs, each must equal the reference's row.
    command = [sys.executable, "-m", "alpaca_helpers.understand", "--spec", str(spec), "--output_dir", str(out),
               "--seeds", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 1500
    while not (out / RESULTS_FILE).exists() or not (out / "runs" / "graded_n-seed0").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # no cleanup of any kind: the second arm × seed was just starting
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert len((out / RESULTS_FILE).read_text().splitlines()) == 1
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "3 arm × seed runs (3 arms × 1 seeds), 1 already measured" in resumed.stdout
    rows = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert without_timing(rows) == without_timing([r for r in reference.rows if r["seed"] == 0]) and len(rows) == 3
    assert "| graded_n | 4 |" in resumed.stdout  # the table printed at the end


def test_with_several_processes_each_arm_is_its_own_accelerate_launch_with_its_plan(tmp_path, default_model_dir):
    """The GPU path's mechanics on CPU: every arm × seed is an `accelerate launch` of 2 processes (FSDP over
    gloo), its memory plan and command printed first; a tiny random-weight model keeps it short."""
    tiny = make_tiny_llama(tmp_path / "tiny", default_model_dir)
    spec = copy.deepcopy(SPEC)
    spec["base"].update(model_name_or_path=str(tiny), report_to="tensorboard", per_device_train_batch_size=1)
    spec.update(seeds=[0], cpu_processes=2, budget={"steps": 1},
                arms={"all": {"kind": "base"}, "lr_high": {"kind": "setting", "learning_rate": 1e-3}})
    lines = []
    result = run_ablation(parse_spec(spec), tmp_path / "launched", progress=False, echo=lines.append, verbose=True)
    launches = [line for line in lines if line.startswith("accelerate launch")]
    assert len(launches) == 2 and all("--num_processes 2" in line for line in launches)
    assert sum("per process (GiB):" in line for line in lines) == 2  # the plan (of CPU processes), per arm
    assert any("FSDP over 2" in line for line in lines)  # the runs themselves say they are sharded
    assert [(r["arm"], r["steps"]) for r in result.rows] == [("all", 1), ("lr_high", 1)]
    config = (tmp_path / "launched" / "runs" / "lr_high-seed0" / "arm_config.yaml").read_text()
    assert "learning_rate: 0.001" in config and "train_on_prompt: false" in config
    events = EventAccumulator(str(tmp_path / "launched" / "runs" / "lr_high-seed0" / "tensorboard")).Reload()
    assert {"train/loss", "ablation/val_loss", "ablation/teacher_loss"} <= set(events.Tags()["scalars"])
    assert events.Scalars("ablation/val_loss")[0].value == pytest.approx(result.rows[1]["metrics"]["val_loss"])
