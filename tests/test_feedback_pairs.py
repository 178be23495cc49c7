"""`alpaca_helpers.feedback.best_of_n` and `.pairs`: the verifier's pick among samples, and preference pairs whose
chosen response satisfies strictly more constraints, seeded and written as crash-safe JSONL."""

import json

import pytest

from alpaca_helpers.feedback.best_of_n import best_of_n, pick_best
from alpaca_helpers.feedback.pairs import build_pairs, load_pairs, preference_pair, save_pairs
from alpaca_helpers.prompts import format_prompt

PROMPT = {"key": 7, "instruction": "Name two fruits.\nIn your entire response, refrain from the use of any commas. "
          "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
          "input": "", "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
          "kwargs": [{}, {}]}
SAMPLES = ["apple, pear", "apple and pear", "<<fruits>> apple, pear", "<<fruits>> apple and pear",
           "<<two>> apple and pear"]  # scores 0, 0.5, 0.5, 1, 1


def test_best_of_n_keeps_the_best_scored_and_the_first_among_ties():
    best = pick_best(PROMPT, SAMPLES)
    assert best == {"response": SAMPLES[3], "score": 1.0, "index": 3, "scores": [0.0, 0.5, 0.5, 1.0, 1.0]}
    assert pick_best(PROMPT, SAMPLES[:3])["index"] == 1
    rows = best_of_n([PROMPT, {**PROMPT, "key": 8}], [SAMPLES, SAMPLES[:3]])
    assert [(r["key"], r["index"]) for r in rows] == [(7, 3), (8, 1)]
    assert best_of_n([PROMPT], [SAMPLES], n=2)[0]["index"] == 1  # only the first n samples


def test_best_of_n_with_a_sampler():
    calls = []

    def sampler(prompt, n):
        calls.append((prompt["key"], n))
        return SAMPLES[:n]

    assert best_of_n([PROMPT], sampler, n=3)[0]["response"] == SAMPLES[1] and calls == [(7, 3)]
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n([PROMPT], sampler)
    with pytest.raises(ValueError, match="no responses"):
        pick_best(PROMPT, [])


def test_pairs_prefer_strictly_more_constraints_and_are_seeded():
    pair = preference_pair(PROMPT, SAMPLES, seed=0)
    assert pair["chosen_score"] > pair["rejected_score"] and pair["prompt"] == format_prompt(PROMPT)
    assert pair["key"] == 7 and SAMPLES.index(pair["chosen"]) != SAMPLES.index(pair["rejected"])
    assert all(preference_pair(PROMPT, SAMPLES, seed=0) == pair for _ in range(3))
    drawn = {(p["chosen"], p["rejected"]) for p in (preference_pair(PROMPT, SAMPLES, seed=s) for s in range(30))}
    assert len(drawn) > 1  # a seeded choice among the qualifying pairs, not always the same
    for chosen, rejected in drawn:
        assert pick_best(PROMPT, [chosen, rejected])["index"] == 0 and chosen != rejected
    assert preference_pair(PROMPT, [SAMPLES[1], SAMPLES[2]]) is None  # equal scores: no pair
    assert preference_pair(PROMPT, ["a", "b"], scores=[0.0, 1.0])["chosen"] == "b"


def test_build_pairs_skips_prompts_without_a_pair_and_round_trips(tmp_path):
    prompts = [PROMPT, {**PROMPT, "key": 8}]
    pairs = build_pairs(prompts, [SAMPLES, [SAMPLES[1], SAMPLES[2]]], seed=1)
    assert [p["key"] for p in pairs] == [7] and pairs == build_pairs(prompts, [SAMPLES, SAMPLES[1:3]], seed=1)
    path = save_pairs(pairs, tmp_path / "pairs.jsonl")
    assert load_pairs(path) == pairs
    assert [json.loads(line) for line in path.read_text().splitlines()] == pairs
    path.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(ValueError, match="missing field 'rejected'"):
        load_pairs(path)
    with pytest.raises(ValueError, match="2 lists of samples for 1 prompts"):
        build_pairs([PROMPT], [SAMPLES, SAMPLES])
