"""The safety training set: refusals that decline, say why and offer an alternative; the shipped file reproduced."""

import json

import pytest

from alpaca_helpers.data import load_alpaca
from alpaca_helpers.evaluate.refusal import classify_refusal
from alpaca_helpers.paths import data_dir
from alpaca_helpers.safety.categories import CATEGORIES, UnknownCategory, category
from alpaca_helpers.safety.dose import safety_examples_seen, zero_refusal_note
from alpaca_helpers.safety.safety_set import (
    SAFETY_SET_FILE,
    SOURCE,
    TEMPLATES,
    SafetySetError,
    build_safety_set,
    category_items,
    load_safety_set,
    shipped_safety_set,
    template_refusals,
)

OFFERS = ("I can", "I'd be glad", "I'd be happy")


def test_the_shipped_file_is_what_the_builder_makes():
    shipped = json.loads((data_dir() / SAFETY_SET_FILE).read_text(encoding="utf-8"))
    assert shipped == shipped_safety_set() == shipped_safety_set()  # deterministic
    assert load_safety_set() == shipped and load_alpaca(data_dir() / SAFETY_SET_FILE) == shipped


def test_shipped_set_covers_every_category_once_per_instruction():
    records = load_safety_set()
    assert 40 <= len(records) <= 60
    assert {r["source"] for r in records} == {SOURCE}
    assert [r["category"] for r in records] == [c.name for c in CATEGORIES for _ in c.examples]
    assert len({r["instruction"] for r in records}) == len(records)
    assert len({r["output"] for r in records}) == len(records)
    assert all(r["input"] == "" for r in records)


def test_every_refusal_declines_says_why_and_offers_an_alternative():
    for record in load_safety_set():
        parts = TEMPLATES[record["category"]]
        text = record["output"]
        assert any(text.startswith(o) for o in parts.openings), text
        assert sum(reason in text for reason in parts.reasons) == 1, text
        alternative = [a for a in parts.alternatives if text.endswith(a)]
        assert len(alternative) == 1 and any(offer in alternative[0] for offer in OFFERS), text
        assert classify_refusal(text).label == "refuses", (text, classify_refusal(text))


def test_templates_cover_every_category_and_vary():
    assert set(TEMPLATES) == {c.name for c in CATEGORIES}
    for c in CATEGORIES:
        parts = TEMPLATES[c.name]
        assert min(len(parts.openings), len(parts.reasons), len(parts.alternatives)) >= 3
        refusals = template_refusals(c.name)
        assert len(set(refusals)) == len(refusals) >= len(c.examples)
        reseeded = template_refusals(c.name, seed=1)
        assert reseeded != refusals and sorted(reseeded) == sorted(refusals)


def test_red_team_records_become_safety_records_once_each():
    items = [{"instruction": " Write a cruel message about my boss. ", "category": "toxicity", "request": 3},
             {"instruction": "Write a cruel message about my boss.", "category": "toxicity", "request": 5},
             {"instruction": "Name the four moons of the Sun.", "category": "false_premise", "request": 4}]
    records = build_safety_set(items, seed=7)
    assert [(r["instruction"], r["category"]) for r in records] == [
        ("Write a cruel message about my boss.", "toxicity"), ("Name the four moons of the Sun.", "false_premise")]
    assert records[0]["output"] == template_refusals("toxicity", 7)[0]
    assert set(records[0]) == {"instruction", "input", "output", "source", "category"}


def test_bad_items_fail_with_one_line():
    with pytest.raises(UnknownCategory, match="unknown risk category 'weather': choose one of false_premise"):
        build_safety_set([{"instruction": "Tell me it will rain.", "category": "weather"}])
    with pytest.raises(SafetySetError, match="item 1: needs a non-empty 'instruction'"):
        build_safety_set([category_items()[0], {"instruction": " ", "category": "toxicity"}])
    assert category("privacy").title == "Privacy"


def rows(refusal_30pc):
    def row(arm, seed, records, refusal):
        return {"arm": arm, "seed": seed, "records": records, "steps": 6, "examples_seen": 24,
                "metrics": {"xstest_refusal": refusal}}

    return [row(a, s, n, refusal_30pc if a == "safety_30pc" else 0.0)
            for s in (0, 1) for a, n in (("no_safety", 28), ("safety_3pc", 29), ("safety_30pc", 40))]


def test_the_note_appears_only_when_refusal_stays_at_zero():
    note = zero_refusal_note(rows(0.0), "no_safety", 8)
    assert note.startswith("Note: refusal is 0 in every arm (0 of 8 unsafe XSTest prompts refused, per arm and seed, "
                           "2 seeds)")
    assert "safety_30pc" in note and "about 7 safety examples in 6 steps" in note  # 24 seen × 12 / 40
    assert zero_refusal_note(rows(0.125), "no_safety", 8) is None
    assert zero_refusal_note([{**r, "metrics": {}} for r in rows(0.0)], "no_safety", 8) is None  # no XSTest measured
    assert safety_examples_seen(rows(0.0)[0], 28) == 0
