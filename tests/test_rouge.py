"""alpaca_helpers.self_instruct.rouge gives exactly rouge_score's ROUGE-L and Alpaca's incremental filter decisions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from rouge_score import rouge_scorer

from alpaca_helpers.data import load_davinci_predictions, load_eval_set, load_seed_tasks
from alpaca_helpers.self_instruct.diversity import verb_object, verb_object_counts
from alpaca_helpers.self_instruct.rouge import (
    FilterResult,
    filter_similar,
    filter_similar_detailed,
    max_similarity,
    rouge_l,
    rouge_l_matrix,
    tokenize,
)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

ADVERSARIAL = [
    "", " ", "\n\t \r", "!!!", "...?", "--- ***", "123", "1 2 3", "a1b2c3", "3.14159", "x_y_z",
    "don't", "e-mail", "MiXeD CaSe", "A A A A", "the the the the", "a", "A.", "tab\tseparated\nlines",
    "ÄÖÜ äöü", "naïve café", "日本語のテキスト", "İstanbul", "\u0130", "\u212a kelvin", "Å angstrom",
    "ǅungla", "straße", "ﬁne ligature", "Ⅻ roman", "١٢٣ arabic digits", "😀 smile 😀", "a\u200bb",
    "ＦＵＬＬＷＩＤＴＨ", "x" * 500, "word " * 300, "Write a poem.", "write A POEM!!!", "Write a poem about cats.",
]


def reference(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def real_texts() -> list[str]:
    records = load_seed_tasks() + load_eval_set()
    return [r["instruction"] for r in records] + [r["input"] for r in records if r["input"]]


def edit(text: str, vocab: list[str], rng: random.Random) -> str:
    """Random word edits, case changes, punctuation and odd characters."""
    words = text.split() or [""]
    for _ in range(rng.randint(1, 4)):
        op, i = rng.randrange(7), rng.randrange(len(words))
        if op == 0:
            words[i] = rng.choice(vocab)
        elif op == 1:
            words.insert(i, rng.choice(vocab))
        elif op == 2 and len(words) > 1:
            del words[i]
        elif op == 3 and i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == 4:
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].title()
        elif op == 5:
            words[i] += rng.choice([",", ".", "!", "-", "'s", "...", ")"])
        else:
            words.insert(i, rng.choice(ADVERSARIAL[:34]))
    return " ".join(words)


def test_tokenize_matches_rouge_score_tokenizer():
    texts = ADVERSARIAL + real_texts()[:200]
    for text in texts:
        assert tokenize(text) == SCORER._tokenizer.tokenize(text), text


def test_rouge_l_equals_rouge_score_on_10000_pairs():
    rng = random.Random(0)
    texts = real_texts()
    vocab = [w for t in texts for w in t.split()]
    outputs = [r["output"] for r in load_davinci_predictions()]
    pairs = []
    pairs += [(rng.choice(texts), rng.choice(texts)) for _ in range(3500)]
    pairs += [(t, edit(t, vocab, rng)) for t in rng.choices(texts, k=3500)]
    pairs += [(edit(t, vocab, rng), edit(rng.choice(texts), vocab, rng)) for t in rng.choices(texts, k=1300)]
    pairs += [(a, b) for a in ADVERSARIAL for b in ADVERSARIAL]  # 1,521
    pairs += [(a, rng.choice(texts)) for a in ADVERSARIAL for _ in range(5)]
    pairs += [(rng.choice(outputs), rng.choice(outputs)) for _ in range(60)]  # long answers
    long_text = " ".join(rng.choices(vocab, k=700))  # very long strings, beyond rapidfuzz's 64-bit word
    pairs += [(long_text, edit(long_text, vocab, rng)) for _ in range(3)] + [(long_text, long_text)]
    assert len(pairs) >= 10_000
    mismatches = [(a, b) for a, b in pairs if rouge_l(a, b) != reference(a, b)]
    assert mismatches == []


def test_rouge_l_matrix_equals_rouge_score():
    rng = random.Random(1)
    texts = real_texts()
    targets = rng.sample(texts, 40) + ADVERSARIAL[:20]
    predictions = rng.sample(texts, 40) + ADVERSARIAL[20:]
    expected = np.array([[reference(a, b) for b in predictions] for a in targets])
    got = rouge_l_matrix(targets, predictions)
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def alpaca_reference(candidates: list[str], existing: list[str], threshold: float):
    """Alpaca's generate_instruction.py loop, in one process: kept, max, mean, all scores."""
    tokenize_ = SCORER._tokenizer.tokenize
    pool, pool_texts = [tokenize_(t) for t in existing], list(existing)
    out = []
    for text in candidates:
        tokens = tokenize_(text)
        scores = [rouge_scorer._score_lcs(tokens, p).fmeasure for p in pool]
        keep = max(scores) <= threshold
        out.append((keep, max(scores), float(np.mean(scores)), dict(zip(pool_texts, scores)), scores))
        if keep:
            pool.append(tokens)
            pool_texts.append(text)
    return out


@pytest.fixture(scope="module")
def filter_case():
    """2,000 candidates: edits of real instructions (many near-duplicates) against 40 seeds."""
    rng = random.Random(2)
    texts = [t for t in real_texts() if len(t.split()) <= 14]
    vocab = [w for t in texts for w in t.split()]
    bases = rng.sample(texts, 80)
    candidates = [edit(t, vocab, rng) if rng.random() < 0.8 else t for t in rng.choices(bases, k=2000)]
    existing = [r["instruction"] for r in load_seed_tasks()[:40]]
    return candidates, existing, alpaca_reference(candidates, existing, 0.7)


def test_filter_similar_matches_alpaca_loop(filter_case):
    candidates, existing, ref = filter_case
    kept = filter_similar(candidates, existing)
    expected = [r[0] for r in ref]
    assert 200 < sum(expected) < 1900  # the filter has real work both ways
    assert kept == expected


def test_filter_similar_detailed_matches_alpaca_loop(filter_case):
    candidates, existing, ref = filter_case
    result = filter_similar_detailed(candidates, existing, top_k=10)
    assert isinstance(result, FilterResult)
    assert result.kept == [r[0] for r in ref]
    assert result.max_score == [r[1] for r in ref]
    assert result.mean_score == pytest.approx([r[2] for r in ref], rel=1e-12, abs=1e-15)
    for neighbors, (_, _, _, by_text, scores) in zip(result.neighbors, ref):
        assert len(neighbors) == 10
        assert [s for _, s in neighbors] == sorted(scores, reverse=True)[:10]
        assert all(by_text[text] == score for text, score in neighbors)


def test_filter_similar_other_thresholds_and_workers():
    rng = random.Random(3)
    texts = [t for t in real_texts() if len(t.split()) <= 16]
    vocab = [w for t in texts for w in t.split()]
    candidates = [edit(t, vocab, rng) for t in rng.choices(texts[:60], k=300)]
    existing = texts[100:130]
    for threshold in (0.0, 0.35, 0.5, 1.0):
        expected = [r[0] for r in alpaca_reference(candidates, existing, threshold)]
        assert filter_similar(candidates, existing, threshold, workers=1) == expected
        assert filter_similar_detailed(candidates, existing, threshold, workers=2).kept == expected


def test_filter_semantics_edge_cases():
    # Kept when the score equals the threshold: "a b" vs "a c" is exactly 0.5.
    assert rouge_l("a b", "a c") == 0.5
    assert filter_similar(["a b"], ["a c"], threshold=0.5) == [True]
    assert filter_similar(["a b"], ["a c"], threshold=0.49) == [False]
    # Incremental: a candidate meets the candidates kept before it, not the rejected ones.
    cands = ["write a poem about the sea", "Write a poem about the sea!", "summarize this article",
             "write a poem about the sea today", "summarize this long article for a busy reader"]
    assert filter_similar(cands, []) == [True, False, True, False, True]
    # Nothing to compare with: kept, scores 0.0; empty and punctuation-only instructions score 0.
    result = filter_similar_detailed(["!!!", "", "hello"], [])
    assert result.kept == [True, True, True]
    assert result.max_score == [0.0, 0.0, 0.0] and result.neighbors[0] == []
    assert filter_similar([], ["anything"]) == []
    detailed = filter_similar_detailed(cands, ["write a poem"], top_k=2)
    assert detailed.neighbors[1][0] == ("write a poem about the sea", 1.0)
    assert len(detailed.neighbors[1]) == 2
    with pytest.raises(ValueError):
        filter_similar(["a"], ["b"], threshold=-0.1)
    with pytest.raises(ValueError):
        filter_similar_detailed(["a"], ["b"], threshold=float("nan"))


def test_max_similarity_brute_force():
    rng = random.Random(4)
    texts = rng.sample(real_texts(), 80) + ["Write a poem.", "write a POEM", ""]
    best, where = max_similarity(texts)
    for i, text in enumerate(texts):
        scores = [reference(text, other) if j != i else -1.0 for j, other in enumerate(texts)]
        assert best[i] == max(scores)
        assert where[i] == int(np.argmax(scores))
    assert best[-2] == 1.0 and where[-2] == len(texts) - 3
    assert max_similarity(["only one"])[1].tolist() == [-1]


def test_verb_object_heuristic():
    assert verb_object("Write a short story about a cat.") == ("write", "story")
    assert verb_object("Come up with a list of ideas for a party") == ("come", "list")
    assert verb_object("Please rewrite the sentence.") == ("rewrite", "sentence")
    assert verb_object("What is the capital of France?") == (None, None)
    assert verb_object("") == (None, None)
    rows = verb_object_counts([r["instruction"] for r in load_seed_tasks()], top_verbs=5)
    assert len(rows) == 5 and rows[0][0] == "write"
    assert all(count >= sum(n for _, n in objects) for _, count, objects in rows)
