"""Notebook 03 runs top to bottom under papermill and its summary holds together."""

from __future__ import annotations

import json

from alpaca_helpers.course import NOTEBOOKS_DIR
from alpaca_helpers.data import load_seed_tasks, save_alpaca
from alpaca_helpers.train.tokenize import alpaca_original_tokenize, build_dataset, original_recipe_fault

NOTEBOOK = "03_tokenize_and_mask"


def test_notebook_is_stripped_and_has_one_parameters_cell():
    nb = json.loads((NOTEBOOKS_DIR / f"{NOTEBOOK}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    source = "".join(params[0]["source"])
    assert 'output_dir = "runs/03_tokenize_and_mask"  #' in source
    assert 'data_path = "seed"  #' in source  # never the evaluation set by default: notebook 06 tests on it


def test_notebook_runs_and_its_summary_matches_the_helpers(execute_notebook, default_tokenizer, tmp_path):
    # A chained course set as notebook 02 writes it: seed tasks plus generated records, each with its source.
    generated = [{"instruction": f"List {n} prime numbers.", "input": "", "output": ", ".join(["2"] * n),
                  "source": "self-instruct"} for n in range(1, 21)]
    records = [{**r, "source": "seed"} for r in load_seed_tasks()] + generated
    train_set = save_alpaca(records, tmp_path / "train_set.json")
    summary, executed = execute_notebook(NOTEBOOK, data_path=str(train_set), max_length=256, n_examples=300,
                                         batch_sizes=[4, 16, 64])
    assert summary["sources"] == {"seed": 175, "self-instruct": 20}
    _, stats = build_dataset(records, default_tokenizer, max_length=256)
    assert (summary["n_records"], summary["kept"], summary["truncated"], summary["dropped"]) == (
        stats.total, stats.kept, stats.truncated, stats.dropped)
    assert summary["dropped"] > 0 and summary["truncated"] > 0  # 256 tokens is short for some records
    assert summary["max_tokens"] <= 256 and summary["pad_equals_eos"] is True
    assert summary["eos_trained_in_batch"] is True
    # LLaMA's SentencePiece twin of the boundary lesson: alone the response gains a space, continued it does not
    assert summary["sentencepiece_exact"] == {"alone": False, "continued": True}

    faults = [original_recipe_fault(r, alpaca_original_tokenize(r, default_tokenizer, 256), default_tokenizer)
              for r in records]
    assert summary["boundary_merges"] == faults.count("prompt not a prefix (boundary merge)") > 0
    assert sum(summary["original_wrong"].values()) == sum(f is not None for f in faults)

    waste = summary["padding_waste_pct"]
    assert set(waste) == {"random", "length-grouped", "packed"}
    for bs in ("4", "16", "64"):
        assert 0 <= waste["packed"][bs] < waste["length-grouped"][bs] < waste["random"][bs] < 100
    assert waste["random"]["64"] > waste["random"]["4"]  # bigger random batches pad more
    html = executed.read_text()
    assert "masked (label -100)" in html and "image/png" in html  # the colored tokens and the plots rendered
