"""Notebook 07 runs a small ablation on a course-shaped training set (seed + self-instruct records) end to end."""

import json

import nbformat
import pytest

from alpaca_helpers.data import load_seed_tasks, save_alpaca

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_notebook_07_runs_an_ablation_and_reads_it_honestly(execute_notebook, tmp_path):
    train_set = tmp_path / "train_set.json"  # notebook 02's shape: every record tagged with its source
    save_alpaca([{**r, "source": "self-instruct" if i % 4 == 0 else "seed"} for i, r in enumerate(load_seed_tasks())],
                train_set)
    summary, executed = execute_notebook(
        "07_understand", data_path=str(train_set), select_n=3, budget_steps=1,
        arms={"random_n": None, "prompt_loss": None},
        base={"max_examples": 20, "model_max_length": 96, "global_batch_size": 2, "per_device_train_batch_size": 2},
        evaluation={"heldout": 4, "teacher_items": 2, "shape_items": 2, "max_new_tokens": 8, "ifeval_items": 2})
    assert summary["arms"] == ["all", "longest_n", "graded_n"] and summary["baseline"] == "all"
    assert summary["runs"] == 6 and summary["seeds"] == [0, 1]
    assert summary["steps"] == [1] and summary["examples_seen"] == [2]  # the same compute for every arm
    assert summary["records"]["longest_n"] == summary["records"]["graded_n"] == 3
    assert summary["records"]["all"] == summary["pool"]
    assert set(summary["pool_sources"]) == {"seed", "self-instruct"} and summary["heldout"] == 4
    assert summary["scratch_agrees"] is True and summary["grader"] == "local:default"
    metrics = {t["metric"] for t in summary["table"]}
    assert {"val_loss", "teacher_loss", "ended_share", "mean_tokens", "ifeval_prompt_strict"} <= metrics
    assert len(summary["conclusions"]) == 2 * 5 and summary["separated"] == 0  # 2 seeds: nothing is concluded
    for line in summary["conclusions"]:
        assert "2 seeds are too few to conclude" in line or "no conclusion" in line, line
        assert "excludes no difference" not in line and " gives a " not in line
    covers = {t["arm"]: t["covers"] for t in summary["table"]}
    assert covers == {"all": "training", "longest_n": "training", "graded_n": "training"}  # the same data at each seed
    cells = {c.get("id"): c for c in nbformat.read(executed, as_version=4).cells}
    run_output = "".join(o.get("text", "") for o in cells["nb07-run"].outputs if o.get("name") == "stdout")
    run_lines = [line for line in run_output.splitlines() if line.strip()]
    assert sum(line.startswith("[") for line in run_lines) == 6 and len(run_lines) <= 6 + 3, run_lines  # one per run
    assert "step 1/1" not in run_output and "console.log" in run_output
    # streams, and the widgets' text of tqdm.auto's bars
    shown = json.dumps(cells["nb07-run"].outputs, ensure_ascii=False)
    assert "arm × seed runs" in shown and "train:" not in shown  # one bar over the runs, no step bar per run
    conclusions_output = "".join(o.get("text", "") for o in cells["nb07-conclusions"].outputs)
    assert "0 of 10 comparisons are told apart" in conclusions_output and "seeds=[0, 1, 2, 3, 4]" in conclusions_output
    out = tmp_path / "course" / "07_understand"
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    assert "step 1/1 loss" in (out / "runs" / "longest_n-seed0" / "console.log").read_text()  # the full log, kept
    assert all((out / f).is_file() for f in ("metrics.png", "differences.png", "grades.png", "results.csv"))
    assert json.loads((out / "ablation.json").read_text())["arms"]["longest_n"]["n"] == 3
