"""`alpaca_helpers.feedback.constraints` and `.verifier`: seeded prompts with constraints written by if-verifiable's
own classes, each type checkable by the real checkers, IFEval look-alikes removed, instructions split apart."""

import random

import pytest

from alpaca_helpers.data import load_seed_tasks
from alpaca_helpers.evaluate.ifeval import load_ifeval
from alpaca_helpers.feedback.constraints import (
    CONSTRAINT_TYPES,
    build_constraint,
    conflicts,
    constrained_prompts,
    remove_ifeval_duplicates,
    split_prompts,
)
from alpaca_helpers.feedback.verifier import verifier_score, verify

INSTRUCTION = "Suggest a healthy breakfast that includes protein and vegetables."
ENGLISH = "this is a simple answer written in plain english with only small letters and nothing else at all"


def _words(n: int) -> str:
    return " ".join(["word"] * n)


def _sentences(n: int) -> str:
    return " ".join(f"This is sentence number {i} of the answer." for i in range(1, n + 1))


def crafted(constraint: dict, satisfy: bool) -> str:
    """A response that satisfies the constraint (or clearly violates it)."""
    kind, kw = constraint["id"], constraint["kwargs"]
    if kind == "change_case:english_lowercase":
        return ENGLISH if satisfy else ENGLISH.upper()
    if kind == "punctuation:no_comma":
        return "eggs and spinach" if satisfy else "eggs, spinach"
    if kind == "detectable_format:number_bullet_lists":
        return "\n".join(f"* point {i}" for i in range(kw["num_bullets"] + (0 if satisfy else 1)))
    if kind == "startend:end_checker":
        return f"Eat eggs. {kw['end_phrase']}" if satisfy else f"{kw['end_phrase']} Eat eggs."
    if kind == "keywords:existence":
        return "Here: " + " and ".join(kw["keywords"]) if satisfy else "Nothing relevant."
    if kind == "detectable_format:json_format":
        return '```json\n{"breakfast": "eggs"}\n```' if satisfy else "breakfast: eggs"
    less = kw.get("relation") == "less than"
    if kind == "length_constraints:number_words":
        n = kw["num_words"]
        return _words(n - 1 if less == satisfy else n)
    if kind == "length_constraints:number_sentences":
        n = kw["num_sentences"]
        return _sentences(n - 1 if less == satisfy else n)
    if kind == "detectable_content:postscript":
        return f"Eat eggs.\n\n{kw['postscript_marker']} Drink water." if satisfy else "Eat eggs."
    if kind == "detectable_format:title":
        return "<<a good breakfast>>\nEat eggs." if satisfy else "Eat eggs."
    raise AssertionError(f"no crafted response for {kind}")


def one_constraint_prompt(constraint: dict) -> dict:
    return {"key": 0, "instruction": INSTRUCTION + "\n" + constraint["description"], "input": "",
            "instruction_id_list": [constraint["id"]], "kwargs": [constraint["kwargs"]]}


@pytest.mark.parametrize("kind", CONSTRAINT_TYPES)
def test_each_constraint_type_is_checked_by_the_real_checkers(kind):
    drawn = [build_constraint(kind, random.Random(seed), INSTRUCTION) for seed in range(4)]  # several counts
    if kind.startswith("length_constraints:"):  # and both relations
        drawn += [build_constraint(kind, random.Random(9), INSTRUCTION, relation=r) for r in ("less than", "at least")]
    for constraint in drawn:
        prompt = one_constraint_prompt(constraint)
        assert verifier_score(prompt, crafted(constraint, True)) == 1.0, (constraint, crafted(constraint, True))
        assert verifier_score(prompt, crafted(constraint, False)) == 0.0, (constraint, crafted(constraint, False))
        assert verifier_score(prompt, "") == 0.0


def test_description_is_the_checkers_own_and_keywords_come_from_the_instruction():
    constraint = build_constraint("keywords:existence", random.Random(0), INSTRUCTION)
    assert constraint["description"].startswith("Include keywords")
    assert all(k in INSTRUCTION.lower() for k in constraint["kwargs"]["keywords"])
    given = build_constraint("length_constraints:number_words", random.Random(0), num_words=42, relation="at least")
    assert given["kwargs"] == {"num_words": 42, "relation": "at least"}
    assert given["description"] == "Answer with at least 42 words."
    with pytest.raises(ValueError, match="unknown constraint type"):
        build_constraint("no:such_type", random.Random(0))


def test_verifier_scores_the_fraction_of_constraints_passed():
    prompt = {"key": 1, "instruction": "x", "input": "",
              "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"], "kwargs": [{}, {}]}
    assert verify(prompt, "<<title>> no commas")["passed"] == [True, True]
    result = verify(prompt, "a, b")
    assert result == {"score": 0.0, "passed": [False, False], "instruction_id_list": prompt["instruction_id_list"]}
    assert verifier_score(prompt, "<<title>> a, b") == 0.5


def test_prompts_are_seeded_and_constraints_never_conflict():
    records = load_seed_tasks()[:40]
    first = constrained_prompts(records, seed=3)
    assert first == constrained_prompts(records, seed=3)
    assert first != constrained_prompts(records, seed=4)
    assert [p["key"] for p in first] == list(range(40))
    for p in first:
        ids = p["instruction_id_list"]
        assert 1 <= len(ids) <= 2 and len(ids) == len(p["kwargs"])
        assert not (len(ids) == 2 and conflicts(*ids))
        assert p["instruction"].startswith(p["base_instruction"] + "\n")
    all_prompts = constrained_prompts(seed=0)
    assert len(all_prompts) == 175 and len({t for p in all_prompts for t in p["instruction_id_list"]}) >= 8


def test_ifeval_look_alikes_are_removed_and_the_rest_kept():
    ifeval = load_ifeval()
    assert len(ifeval) == 541
    target = max(ifeval, key=lambda row: len(row["prompt"]) if len(row["prompt"]) < 600 else 0)
    records = load_seed_tasks()[:20]
    injected = {"instruction": target["prompt"].replace(".", "!", 1), "input": "", "output": "x"}
    prompts = constrained_prompts(records[:10] + [injected] + records[10:], seed=1)
    result = remove_ifeval_duplicates(prompts, ifeval)
    assert [p["key"] for p in result.removed] == [10]
    assert result.removed[0]["ifeval_key"] == target["key"] and result.removed[0]["rouge_l"] > 0.7
    assert [p["key"] for p in result.kept] == [p["key"] for p in prompts if p["key"] != 10]


def test_split_keeps_each_instruction_on_one_side():
    prompts = constrained_prompts(load_seed_tasks()[:40], seed=0, per_instruction=2)
    train, held_out = split_prompts(prompts, held_out_fraction=0.25, seed=0)
    assert len(train) + len(held_out) == 80 and len(held_out) == 20
    assert not {p["base_instruction"] for p in train} & {p["base_instruction"] for p in held_out}
    assert (train, held_out) == split_prompts(prompts, held_out_fraction=0.25, seed=0)
    assert split_prompts(prompts, 0.25, seed=1) != (train, held_out)
