"""Notebook 09 end to end with its defaults and the real embedded model: constrained prompts from the seed tasks,
real samples, the verifier's pairs, the in-process judge, a real DPO run through the training recipe, the three arms
measured, the DPO loss by hand equal to the recipe's, the exercise's solution graded right, and the "you should see"
ranges; run again on its folder, the complete seed gives the same rows without loading a model or training."""

import json

import nbformat
import pytest

from alpaca_helpers.feedback import compare
from alpaca_helpers.feedback.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_notebook_09_compares_sft_best_of_n_and_dpo(execute_notebook, tmp_path, monkeypatch):
    summary, executed = execute_notebook("09_feedback")  # its defaults: what a learner runs
    assert summary["arms"] == ["sft", "best_of_n", "dpo"] and summary["rows"] == 3 and summary["seeds"] == [0]
    assert summary["prompts"]["train"] == 12 and summary["prompts"]["held_out"] == 8
    assert 4 <= summary["pairs"]["0"] <= 12 and summary["judge"]["pairs"] == summary["pairs"]["0"]
    assert summary["dpo_loss"]["by_hand"] == pytest.approx(summary["dpo_loss"]["helper"], abs=1e-4)
    for arm in summary["arms"]:
        for metric in ("constraints_prompt", "constraints_instruction", "ifeval_prompt_strict"):
            assert 0 <= summary["table"][f"{arm}.{metric}"]["mean"] <= 1
    assert summary["table"]["best_of_n.teacher_loss"]["mean"] == summary["table"]["sft.teacher_loss"]["mean"]
    assert summary["table"]["dpo.teacher_loss"]["mean"] != summary["table"]["sft.teacher_loss"]["mean"]
    assert summary["train_log"]["steps"] >= 1 and 0 <= summary["train_log"]["last"]["rewards/accuracies"] <= 1
    out = tmp_path / "course" / "09_feedback"
    exercise = json.loads((out / "exercises.json").read_text())["09.1"]
    assert exercise["settings"] == {"beta_try": 0.5} and exercise["prediction"] == "no"
    assert exercise["answer"] == pytest.approx(0.6931, abs=2e-3)  # log 2: the starting model is the reference
    cells = {c.get("id"): c for c in nbformat.read(executed, as_version=4).cells}
    table_output = "".join(o.get("text", "") for o in cells["nb09-06"].outputs)
    assert "Note: 1 seed(s): no standard error over seeds" in table_output  # the caveat under its output
    rows = [json.loads(line) for line in (out / "compare" / "results.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in rows] == ["sft", "best_of_n", "dpo"]
    assert all((out / f).is_file() for f in ("dpo_curves.png", "arms.png", "compare/seed0/pairs.jsonl"))

    def refuse(*_args, **_kwargs):  # injected fault: a complete seed must need neither
        raise AssertionError("a complete seed loaded the starting model or trained again")

    monkeypatch.setattr(compare, "load_model", refuse)
    monkeypatch.setattr(compare, "train_or_launch", refuse)
    again = compare.run_feedback(load_settings("cpu_course"), out / "compare", echo=lambda _line: None)
    assert again.rows == rows
