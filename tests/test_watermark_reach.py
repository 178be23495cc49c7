"""The watermark's reach by answer length: the measurement on synthetic token sequences whose green tokens are
chosen with the real `Watermark`, the shortest reliable length, the "too short" verdict, and one small real-model
run of `generate_for_reach`. The real measurement is `benchmarks/bench_watermark_reach.py`."""

import math

import numpy as np
import pytest
import torch

from alpaca_helpers.demo.decoding import Decoding
from alpaca_helpers.demo.generate import BASE_MODEL, extract_response, generate_batch, generate_tokens, load_model
from alpaca_helpers.demo.watermark import MIN_WATERMARK_TOKENS, Detection, Watermark, detect_ids, verdict_text
from alpaca_helpers.demo.watermark_reach import (
    COST_NOISE_NOTE,
    cost_report,
    detection_by_length,
    generate_for_reach,
    perplexity_cost,
    scored_prefix,
    shortest_reliable_length,
)
from alpaca_helpers.prompts import format_prompt

WM = Watermark()
VOCAB = 49152


def sequence(pattern: list[bool], rng: np.random.Generator) -> list[int]:
    """Token ids, all different, where token i+1 is green after token i exactly when pattern[i]."""
    ids = [int(rng.integers(VOCAB))]
    for green in pattern:
        while True:
            t = int(rng.integers(VOCAB))
            if t not in ids and bool(WM.is_green(ids[-1], t)) == green:
                ids.append(t)
                break
    return ids


def test_scored_prefix_counts_distinct_pairs_as_the_detector_does():
    a, b, c, d = 11, 22, 33, 44
    loop = [a, b, a, b, a, b, c, d]  # pairs ab ba ab ba ab bc cd: four distinct
    assert scored_prefix(loop, 1).tolist() == [a, b]
    assert scored_prefix(loop, 3).tolist() == [a, b, a, b, a, b, c]
    assert scored_prefix(loop, 5) is None and scored_prefix([a], 1) is None
    for length in (1, 2, 3, 4):
        assert detect_ids(scored_prefix(loop, length), WM).n_scored == length


def test_detection_by_length_follows_a_known_green_fraction():
    rng = np.random.default_rng(0)
    # two green, one red, repeated: 8 green of 12 scored gives z = 3.33, 16 of 24 gives z = 4.71
    marked = [sequence([i % 3 != 2 for i in range(n)], rng) for n in (24, 30, 36, 48)]
    unmarked = [rng.choice(VOCAB, size=n, replace=False).tolist() for n in [13] * 30 + [49] * 40]
    rows = detection_by_length(marked, unmarked, WM, [12, 24, 36, 48])
    by = {r["length"]: r for r in rows}
    assert [r["n_marked"] for r in rows] == [4, 4, 2, 1] and [r["n_unmarked"] for r in rows] == [70, 40, 40, 40]
    assert by[12]["detection"] == 0.0 and by[12]["mean_z_marked"] == pytest.approx((8 - 3) / math.sqrt(12 * 3 / 16))
    assert by[24]["detection"] == by[36]["detection"] == by[48]["detection"] == 1.0
    assert by[24]["mean_z_marked"] == pytest.approx((16 - 6) / math.sqrt(24 * 3 / 16))
    assert by[24]["detection_se"] == 0.0
    # random tokens: about a quarter green, no false positives at z > 4
    assert all(r["false_positive"] == 0.0 and abs(r["mean_z_unmarked"]) < 0.6 for r in rows)
    # the threshold is z > 4 with no minimum length: 8 of 8 green is z = 4.90
    green = sequence([True] * 8, rng)
    assert detection_by_length([green], [], WM, [8])[0]["detection"] == 1.0
    assert detection_by_length([green], [], WM, [8], z_threshold=5)[0]["detection"] == 0.0
    empty = detection_by_length([green], [], WM, [8])[0]
    assert empty["n_unmarked"] == 0 and math.isnan(empty["false_positive"])
    half = detection_by_length([green, marked[0][:13]], [], WM, [8])[0]  # one of two detected
    assert half["detection"] == 0.5 and half["detection_se"] == pytest.approx(math.sqrt(0.25 / 2))
    with pytest.raises(ValueError, match="at least 1"):
        detection_by_length(marked, unmarked, WM, [0])


def _row(length, detection, false_positive=0.0, n=20):
    return {"length": length, "detection": detection, "false_positive": false_positive, "n_marked": n,
            "n_unmarked": n}


def test_shortest_reliable_length_needs_every_longer_length_to_hold():
    rows = [_row(8, 0.2), _row(16, 0.96), _row(32, 0.9), _row(64, 0.95), _row(128, 1.0)]
    assert shortest_reliable_length(rows) == 64  # 16 passes, but 32 does not
    assert shortest_reliable_length(list(reversed(rows))) == 64  # order of the rows does not matter
    assert shortest_reliable_length(rows, min_detection=0.9) == 16
    assert shortest_reliable_length(rows + [_row(160, 0.5)]) is None  # the longest fails
    assert shortest_reliable_length(rows[:-1] + [_row(128, 1.0, false_positive=0.05)]) is None
    assert shortest_reliable_length(rows[:-1] + [_row(128, 1.0, false_positive=0.05)], max_false_positive=0.1) == 64
    assert shortest_reliable_length(rows + [_row(160, 0.5, n=3)]) == 64  # too few answers to judge
    assert shortest_reliable_length([]) is None


def test_verdict_calls_short_unflagged_text_too_short():
    short = Detection(z=1.2, p_value=0.1, n_scored=20, n_green=7, detected=False)
    assert verdict_text(short, min_tokens=64) == ("z = 1.20 (7/20 green): too short to carry a watermark "
                                                 "(20 tokens; detection needs about 64)")
    flagged = Detection(z=6.0, p_value=1e-9, n_scored=40, n_green=25, detected=True)
    assert verdict_text(flagged, min_tokens=64) == str(flagged) and str(flagged).endswith(": watermarked")
    long = Detection(z=0.5, p_value=0.3, n_scored=64, n_green=17, detected=False)
    assert verdict_text(long, min_tokens=64) == str(long) and str(long).endswith(": no watermark")
    empty = detect_ids([], WM)
    assert verdict_text(empty).endswith(f"too short to carry a watermark (0 tokens; detection needs about "
                                        f"{MIN_WATERMARK_TOKENS})")
    assert MIN_WATERMARK_TOKENS >= 25  # never below the detector's own floor


def test_generate_for_reach_answers_each_instruction_with_and_without_the_mark():
    model, tokenizer = load_model(BASE_MODEL, dtype=torch.float32)
    instructions = ["Name three colours.", "What is an alpaca?"]
    decoding = dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8)
    marked, unmarked = generate_for_reach(model, tokenizer, instructions, WM, seed=5, **decoding)
    assert len(marked) == len(unmarked) == 2 and all(isinstance(t, int) for t in marked[0] + unmarked[1])
    assert marked != unmarked
    # the unmarked answers are the demo's own (same seed and settings), tokenized again as the detector sees them
    plain = generate_batch(model, tokenizer, instructions, decoding=Decoding(seed=5, **decoding))
    assert unmarked == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in plain]


def test_perplexity_cost_scores_both_sides_of_one_batch_under_the_plain_model():
    model, tokenizer = load_model(BASE_MODEL, dtype=torch.float32)
    instructions = ["Name three colours.", "What is an alpaca?"]
    strong = Watermark(delta=8.0)  # greedy and strong: the marked side must leave the model's likeliest tokens
    cost = perplexity_cost(model, tokenizer, instructions, strong, max_new_tokens=8, temperature=0)
    assert cost["log_change"]["n"] == 2 and cost["tokens"] == 8 and len(cost["texts"]["marked"]) == 2
    assert cost["ratio"] == cost["perplexity"]["marked"] / cost["perplexity"]["plain"] > 1
    assert cost["log_change"]["mean"] > 0 and cost["log_change"]["se"] is not None
    # the plain side is the model's own greedy answer: the watermark touched only the other copy of each prompt
    exactly_8 = Decoding(temperature=0, max_new_tokens=8, min_new_tokens=8, stop_at_markers=False)
    greedy = generate_tokens(model, tokenizer, [format_prompt({"instruction": i}) for i in instructions],
                             decoding=exactly_8)
    texts = tokenizer.batch_decode(greedy, skip_special_tokens=True)
    assert cost["texts"]["plain"] == [extract_response(t) for t in texts]
    assert all(detect_ids(tokenizer(t, add_special_tokens=False)["input_ids"], strong).n_green
               > detect_ids(tokenizer(p, add_special_tokens=False)["input_ids"], strong).n_green
               for t, p in zip(cost["texts"]["marked"], cost["texts"]["plain"]))


def test_cost_report_labels_each_figure_and_notes_a_change_within_noise():
    cost = {"perplexity": {"plain": 18.7718, "marked": 34.6215}, "ratio": 1.8443, "tokens": 96,
            "log_change": {"mean": 0.612, "se": 0.376, "n": 6}}
    text = cost_report(cost)
    assert "plain 18.8, watermarked 34.6 (1.84 times as high)" in text and "6 x 96 answer tokens" in text
    assert "+0.61 ± 0.38" in text and "n = 6 instructions" in text and COST_NOISE_NOTE in text
    clear = cost_report({**cost, "log_change": {"mean": 0.612, "se": 0.1, "n": 6}})
    assert COST_NOISE_NOTE not in clear and "Note" not in clear
