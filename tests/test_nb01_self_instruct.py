"""Notebook 01 (self-instruct) runs end to end on the embedded teacher, with small CI parameters."""

import json

import nbformat
from rouge_score import rouge_scorer

from alpaca_helpers.data import load_alpaca, load_seed_tasks
from alpaca_helpers.self_instruct.parse import FILTER_REASONS, PARSE_REASONS, filter_reason


def cell_text(cell) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def test_notebook_01_generates_filtered_alpaca_data(execute_notebook):
    # One kept instruction is enough to prove the run, the files, the table and the projection (2 took 2x as long).
    summary, executed = execute_notebook("01_self_instruct", num_instructions=1, concurrency=4, tasks_per_prompt=2,
                                         max_tokens=128, max_requests=60)
    assert summary["teacher"] == "embedded" and summary["complete"] is True and summary["kept"] == 1
    records = load_alpaca(summary["output_path"])
    assert len(records) == 1
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = [s["instruction"] for s in load_seed_tasks()]
    for r in records:
        assert filter_reason(r["instruction"]) is None
        assert max(scorer.score(r["instruction"], p)["rougeL"].fmeasure for p in pool) <= 0.7
        pool.append(r["instruction"])
    assert set(summary["rejections"]) <= set(PARSE_REASONS + FILTER_REASONS)
    assert summary["requests"] >= 1 and summary["prompt_tokens"] > 0 and summary["cost_usd"] == 0.0
    # Reply tokens count the text up to the stop string; the server decodes more when it runs past it.
    assert 0 < summary["completion_tokens"] <= summary["generated_tokens"] <= 128 * summary["requests"]
    example = summary["example_tokens"]
    assert example["reply"] <= example["generated"] <= 128 and example["reply"] <= example["reply_chars"] + 1
    projection = summary["projection"]
    assert projection["instructions"] == 52002 and projection["cost_usd"] == 0.0
    assert projection["requests"] == round(summary["requests"] * 52002) and projection["hours"] > 0
    at_20 = summary["projection_at_20_per_request"]
    assert at_20["requests"] == 2601 and at_20["prompt_tokens"] < projection["prompt_tokens"]

    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    outputs = "".join(cell_text(c) for c in cells)
    # The executed notebook shows the prompt it sent and the raw completion.
    assert "4. Instruction:" in outputs and "finish_reason=" in outputs
    assert "Empty DataFrame" not in outputs  # an empty table is replaced by a line that says why
    # Degenerate cases carry their note directly under the output: a worked example that parsed to nothing...
    example_cell = next(c for c in cells if "parse_completion(reply.text" in c.source)
    assert ("Nothing parsed:" in cell_text(example_cell)) == (summary["example_parsed_tasks"] == 0)
    if example["generated"] > example["reply"]:
        assert f"the server decoded {example['generated']} tokens" in cell_text(example_cell)
    # ... and a projection far above Alpaca's < $500, reconciled in the same cell with Alpaca's 20 per request.
    cost_cell = next(c for c in cells if "cost_note(" in c.source)
    cost_text = cell_text(cost_cell)
    assert "Why this is not Alpaca's < $500" in cost_text and "at 20 tasks per request" in cost_text
    assert json.loads(json.dumps(summary))  # JSON-safe
