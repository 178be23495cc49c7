"""Notebook 02 (dedup analysis) runs end to end and reports the same filter decisions as the helper."""

from __future__ import annotations

import random

import nbformat

from alpaca_helpers.data import load_alpaca, load_eval_set, load_seed_tasks, save_alpaca
from alpaca_helpers.self_instruct.diversity import verb_object_counts
from alpaca_helpers.self_instruct.rouge import filter_similar, max_similarity


def planted_duplicates(n: int = 100, n_dups: int = 20) -> list[dict]:
    """The first `n` evaluation-set records plus `n_dups` copies of some of them with one word changed."""
    rng = random.Random(0)
    records = load_eval_set()[:n]
    dups = []
    for record in rng.sample(records, n_dups):
        words = record["instruction"].split()
        words[rng.randrange(len(words))] = "banana"
        dups.append({**record, "instruction": " ".join(words)})
    return records + dups


def test_notebook_02_on_a_file_with_planted_duplicates(execute_notebook, tmp_path):
    records = planted_duplicates()
    path = save_alpaca(records, tmp_path / "data.json")
    summary, executed = execute_notebook("02_dedup_analysis", data_path=str(path), top_verbs=10, n_closest=5)
    instructions = [r["instruction"] for r in records]
    seeds = [r["instruction"] for r in load_seed_tasks()]
    kept = filter_similar(instructions, seeds)
    assert summary["data_source"] == str(path) and summary["n_records"] == 120 and summary["n_analysed"] == 295
    assert summary["kept"] == sum(kept) and summary["rejected"] == 120 - sum(kept)
    assert summary["rejected"] >= 10  # most one-word edits of a ~10-word instruction are caught
    # The file is analysed with the seed tasks, as the training set it joins: each group against the same pool.
    best, _ = max_similarity(seeds + instructions)
    assert summary["mean_max_rouge"] == float(best[175:].mean())
    assert summary["seed_mean_max_rouge"] == float(best[:175].mean())
    assert summary["closest_pair_rouge"] == float(best.max())
    assert summary["scratch_agrees"] is True and summary["scratch_pairs_checked"] == 300
    timing = summary["timing"]
    assert timing["helper_pairs"] == 295 ** 2 and timing["scratch_pairs_timed"] == 3000 and timing["identical"] is True
    assert summary["verb_object_method"] == "heuristic" and len(summary["top_verbs"]) == 5
    out = tmp_path / "course" / "02_dedup_analysis"
    for name in ("max_rouge_hist.png", "lengths.png", "verbs_objects.png"):
        assert (out / name).stat().st_size > 10_000
    nb = nbformat.read(executed, as_version=4)
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Nothing rejected" not in outputs_of(executed) and "a rough guess" not in outputs_of(executed)
    # The course's training set: the seed tasks, then what passed the filter, each tagged with its source.
    train = load_alpaca(out / "train_set.json")
    assert summary["train_set"]["sources"] == {"seed": 175, "self-instruct": sum(kept)}
    assert [r["instruction"] for r in train[175:]] == [t for t, k in zip(instructions, kept) if k]
    assert {r["source"] for r in train[:175]} == {"seed"}
    assert set(train[0]) == {"instruction", "input", "output", "source"}


def outputs_of(executed) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code" for o in c.outputs)


def test_notebook_02_in_a_course_shaped_run_analyses_the_training_set(execute_notebook, tmp_path):
    # A laptop run of notebook 01 keeps a handful of records, all of which passed the filter: too few to study alone.
    seeds = [r["instruction"] for r in load_seed_tasks()]
    pool = load_eval_set()[:30]
    records = [r for r, k in zip(pool, filter_similar([r["instruction"] for r in pool], seeds)) if k][:8]
    path = save_alpaca(records, tmp_path / "regen.json")
    summary, executed = execute_notebook("02_dedup_analysis", data_path=str(path), timing_pairs=2000)
    assert summary["n_records"] == 8 and summary["n_analysed"] == 183 >= 50
    assert summary["kept"] == 8 and summary["rejected"] == 0
    assert summary["timing"]["helper_pairs"] == 183 ** 2 and summary["timing"]["scratch_pairs_timed"] == 2000
    assert summary["timing"]["helper_s"] < summary["timing"]["scratch_s_extrapolated"]
    text = outputs_of(executed)
    # The degenerate cases say so under their outputs: nothing rejected, and a mean over 8 records.
    assert "Nothing rejected, as expected" in text
    assert "a mean of n = 8" in text and "regen.json (n=8)" in text and "seed tasks (n=175)" in text
    assert "(extrapolated)" in text
    assert summary["train_set"]["sources"] == {"seed": 175, "self-instruct": 8}


def test_notebook_02_falls_back_to_the_seed_tasks(execute_notebook, tmp_path):
    summary, _ = execute_notebook("02_dedup_analysis", data_path=str(tmp_path / "missing.json"))
    assert summary["data_source"] == "seed tasks" and summary["n_records"] == 175 and summary["n_analysed"] == 175
    assert summary["mean_max_rouge"] == summary["seed_mean_max_rouge"]
    assert summary["rejected"] == sum(not k for k in filter_similar([r["instruction"] for r in load_seed_tasks()], []))
    verb, count, _ = verb_object_counts([r["instruction"] for r in load_seed_tasks()])[0]
    assert summary["top_verbs"][0] == [verb, count] and verb == "write"
    assert summary["scratch_agrees"] is True
    assert summary["train_set"]["sources"] == {"seed": 175}  # nothing generated yet: the seed tasks alone
