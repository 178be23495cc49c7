"""Notebook 01 (self-instruct) runs end to end on the embedded teacher, with small CI parameters."""

import json

import nbformat
from rouge_score import rouge_scorer

from alpaca_helpers.data import load_alpaca, load_seed_tasks
from alpaca_helpers.self_instruct.parse import FILTER_REASONS, PARSE_REASONS, filter_reason


def test_notebook_01_generates_filtered_alpaca_data(execute_notebook):
    summary, executed = execute_notebook("01_self_instruct", num_instructions=2, concurrency=4, tasks_per_prompt=2,
                                         max_tokens=128, max_requests=60)
    assert summary["teacher"] == "embedded" and summary["complete"] is True and summary["kept"] == 2
    records = load_alpaca(summary["output_path"])
    assert len(records) == 2
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = [s["instruction"] for s in load_seed_tasks()]
    for r in records:
        assert filter_reason(r["instruction"]) is None
        assert max(scorer.score(r["instruction"], p)["rougeL"].fmeasure for p in pool) <= 0.7
        pool.append(r["instruction"])
    assert set(summary["rejections"]) <= set(PARSE_REASONS + FILTER_REASONS)
    assert summary["requests"] >= 1 and summary["prompt_tokens"] > 0 and summary["cost_usd"] == 0.0
    projection = summary["projection"]
    assert projection["instructions"] == 52002 and projection["cost_usd"] == 0.0
    assert projection["requests"] == round(summary["requests"] * 52002 / 2) and projection["hours"] > 0
    # The executed notebook shows the prompt it sent and the raw completion.
    outputs = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    assert "4. Instruction:" in outputs and "finish_reason=" in outputs
    assert json.loads(json.dumps(summary))  # JSON-safe
