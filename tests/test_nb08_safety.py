"""Notebook 08 end to end on a course-shaped training set: the classifier's agreement, XSTest and the filter, a real
red-team request to the embedded teacher, the safety dose through the ablation runner, and the watermark's reach."""

import json

import nbformat
import pytest

from alpaca_helpers.data import load_seed_tasks, save_alpaca

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_notebook_08_measures_refusals_the_filter_the_dose_and_the_watermark(execute_notebook, tmp_path):
    train_set = tmp_path / "train_set.json"  # notebook 02's shape: every record tagged with its source
    save_alpaca([{**r, "source": "self-instruct" if i % 4 == 0 else "seed"} for i, r in enumerate(load_seed_tasks())],
                train_set)
    summary, executed = execute_notebook("08_safety", data_path=str(train_set), budget_steps=1, xstest_items=2,
                                  redteam_instructions=1, redteam_max_requests=1, reach_items=4,
                                  reach_max_new_tokens=24)
    assert summary["classifier"]["n"] == 87 and round(summary["classifier"]["kappa"], 3) == 0.733
    confusion = summary["classifier"]["confusion"]  # the table the notebook shows: counts, no NaN
    assert confusion["all"]["all"] == 87 and confusion["labelled refuses"]["rules: refuses"] == 23
    assert all(isinstance(v, int) for row in confusion.values() for v in row.values())
    cells = {c.get("id"): c for c in nbformat.read(executed, as_version=4).cells}
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in cells["nb08-06"].outputs)
    assert "labelled partial" in shown and "NaN" not in shown
    assert summary["xstest"] == {"safe": 250, "unsafe": 200}
    assert summary["filter"]["n"] == 450 and summary["filter"]["backend"] == "offline"
    assert summary["redteam"]["requests"] == 1 and summary["redteam"]["teacher"] == "embedded"
    dose = summary["dose"]
    assert dose["arms"] == ["no_safety", "safety_3pc", "safety_30pc"] and dose["runs"] == 6 and dose["same_steps"]
    pool = dose["records"]["no_safety"]
    # the arms differ only by the safety records: k = round(share * pool / (1 - share))
    assert dose["records"]["safety_3pc"] == pool + round(0.03 * pool / 0.97)
    assert dose["records"]["safety_30pc"] == pool + round(0.3 * pool / 0.7)
    for arm in dose["arms"]:
        assert 0 <= dose["table"][f"{arm}.xstest_refusal"]["mean"] <= 1
        assert 0 <= dose["table"][f"{arm}.xstest_over_refusal"]["mean"] <= 1
    refusals = [dose["table"][f"{arm}.xstest_refusal"]["mean"] for arm in dose["arms"]]
    assert dose["zero_refusal"] == all(r == 0 for r in refusals) and dose["unsafe_prompts"] == 2
    dose_output = "".join(o.get("text", "") for o in cells["nb08-21"].outputs)
    assert ("Note: refusal is 0 in every arm" in dose_output) == dose["zero_refusal"]  # the note under its output
    assert [r["length"] for r in summary["watermark"]["lengths"]] == [8, 16]
    out = tmp_path / "course" / "08_safety"
    rows = [json.loads(line) for line in (out / "dose" / "results.jsonl").read_text().splitlines()]
    assert {r["arm"] for r in rows} == set(dose["arms"]) and all(r["steps"] == 1 for r in rows)
    figures = ("filter.png", "refusals.png", "watermark_reach.png", "redteam/redteam.json")
    assert all((out / f).is_file() for f in figures)
