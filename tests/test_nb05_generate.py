"""Notebook 05 under papermill: it builds the widgets, presses Generate from code once per model (the base
model and a fine-tuned folder found under `models_root`), once side by side, once with an instruction the
content filter blocks (the refusal path), queries a real `transformers serve` with the openai client, and exports
the fine-tuned folder to GGUF with its Ollama Modelfile."""

import os

import nbformat

from alpaca_helpers.demo.watermark_reach import COST_NOISE_NOTE

BASE = "base: SmolLM2-135M-Instruct"


def _printed(executed) -> str:
    """Everything the executed notebook's cells printed (stdout and stderr)."""
    cells = nbformat.read(executed, as_version=4).cells
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)

TUNED = "fine-tuned: 04_train/final"


def test_notebook_05_generates_with_every_model_and_serves(execute_notebook, tmp_path, default_model_dir,
                                                          fine_tuned_folder):
    cache_copy = tmp_path / "runs" / "ci-cache" / default_model_dir.name  # what `make test` leaves under runs/
    cache_copy.mkdir(parents=True)
    for f in default_model_dir.iterdir():
        os.symlink(f, cache_copy / f.name)
    summary, executed = execute_notebook("05_generate", models_root=str(tmp_path / "runs"), max_new_tokens=16,
                                         serve_max_tokens=16, watermark_cost_items=3)
    assert summary["models"] == [BASE, TUNED]  # the model cache's copy of the base model is not offered
    runs = summary["runs"]
    assert set(runs) == {BASE, TUNED, "side by side", "blocked example"}
    for label in (BASE, TUNED):
        assert runs[label]["text"] and runs[label]["watermarked"] and isinstance(runs[label]["z"], float)
        # 16 new tokens are too few to tell: the verdict says so rather than "no watermark"
        assert "too short to carry a watermark" in runs[label]["verdict"]
    side = runs["side by side"]
    assert set(side) == {BASE, TUNED} and side[BASE]["text"] == side[TUNED]["text"]  # same weights, same seed
    assert summary["watermark_z"]["watermarked"] > 4 > summary["watermark_z"]["plain"]
    # The watermark's perplexity cost: both sides scored, the paired change over the 3 instructions, labelled.
    cost = summary["watermark_cost"]
    assert cost["log_change"]["n"] == 3 and cost["tokens"] == 96 and cost["ratio"] > 0
    printed = _printed(executed)
    assert "perplexity under the model without the watermark, over all 3 x 96 answer tokens" in printed
    change = cost["log_change"]
    if change["se"] is None or abs(change["mean"]) < 2 * change["se"]:  # within noise: the note says so, right there
        assert COST_NOISE_NOTE in printed
    assert "Writing:" not in printed and "converting to" not in printed  # the GGUF export prints no progress bars
    assert summary["stream_pieces"] > 1 and summary["greedy_answer"]
    assert summary["served_model"] == TUNED
    assert summary["served_answers"]["alpaca prompt"] and summary["served_answers"]["chat"]
    # The content filter (offline, the default): the blocked press shows a refusal naming the category, never the
    # instruction, and the model is not asked.
    blocked = runs["blocked example"]
    assert blocked["blocked"] == "instruction" and blocked["categories"] == ["prompt injection"]
    assert blocked["shown"] == "This instruction was blocked by the content filter (offline): prompt injection."
    assert blocked["text"] == "" and "z" not in blocked
    assert summary["filter"]["verdicts"] == {"demo instruction": [], "blocked example": ["prompt injection"]}
    out = tmp_path / "course" / "05_generate"
    log = (out / "moderation.jsonl").read_text()
    assert summary["filter"]["logged"] == len(log.splitlines()) >= 2 + 2 * 4  # demo checks + 4 answered presses
    assert "Ignore all previous instructions" not in log
    # The GGUF export section: one q8_0 file (about 145 MB for 135M parameters) and its Modelfile.
    assert set(summary["gguf"]) == {"q8_0"} and 100e6 < summary["gguf"]["q8_0"] < 200e6
    assert (out / "Modelfile").read_text().startswith("FROM ./alpaca-q8_0.gguf\n")
    # The widgets were really built and displayed.
    outputs = [o for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
