"""The green-list watermark: its statistics, and detection on the real default model.

Measured on the default model (seed 0, gamma 0.25, delta 2; 20 evaluation-set instructions without input,
exactly 200 new tokens each, multinomial sampling at temperature 1 as in the paper, one left-padded batch):
watermarked answers score z = 6.8 to 13.1 (median 10.3), all 20 detected; the same prompts without the watermark
z = -1.2 to 1.8; the 252 human reference answers z = -2.6 to 3.2. Perplexity of the answers under the
unwatermarked model rises from 27.3 to 31.6 (x1.16) with the watermark. `pytest tests/test_watermark.py -s`
prints these numbers.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from alpaca_helpers.data import load_eval_set
from alpaca_helpers.demo.decoding import Decoding
from alpaca_helpers.demo.generate import BASE_MODEL, generate_tokens, load_model, response_perplexity
from alpaca_helpers.demo.watermark import Watermark, WatermarkLogitsProcessor, detect, detect_ids, z_score
from alpaca_helpers.prompts import format_prompt

WM = Watermark()  # the default key, gamma 0.25, delta 2 (the paper's running example), as the notebook uses
N_PROMPTS, N_TOKENS = 20, 200


# 2 x 20 generations of 200 tokens on 2 CPU cores: minutes on an idle machine, far more on a shared one.
pytestmark = pytest.mark.timeout(2400)


def test_green_lists_cover_gamma_of_the_vocabulary_and_depend_on_key_and_previous_token():
    vocab = np.arange(49152)
    lists = [WM.is_green(prev, vocab) for prev in (0, 1, 2, 777, 49151)]
    for green in lists:
        assert abs(green.mean() - 0.25) < 0.01
    assert all((a != b).mean() > 0.3 for a, b in zip(lists, lists[1:]))  # each previous token: its own list
    other_key = Watermark(key="another key").is_green(0, vocab)
    assert abs((other_key & lists[0]).mean() - 0.25 * 0.25) < 0.01  # independent of the first key's list
    assert Watermark(gamma=0.5).is_green(0, vocab).mean() == pytest.approx(0.5, abs=0.01)


def test_processor_adds_delta_to_exactly_the_green_logits():
    scores = torch.randn(3, 1000)
    input_ids = torch.tensor([[5, 9], [5, 11], [7, 42]])
    out = WatermarkLogitsProcessor(WM)(input_ids, scores.clone())
    green = torch.from_numpy(WM.is_green(np.array([[9], [11], [42]]), np.arange(1000)[None, :]))
    assert torch.allclose(out[green], scores[green] + 2.0) and torch.equal(out[~green], scores[~green])


def test_processor_marks_only_the_rows_it_is_given():
    scores = torch.randn(3, 1000)
    input_ids = torch.tensor([[5, 9], [5, 11], [7, 42]])
    out = WatermarkLogitsProcessor(WM, rows=[True, False, True])(input_ids, scores.clone())
    every = WatermarkLogitsProcessor(WM)(input_ids, scores.clone())
    assert torch.equal(out[[0, 2]], every[[0, 2]]) and torch.equal(out[1], scores[1])
    with pytest.raises(ValueError, match="rows marks 2 rows"):
        WatermarkLogitsProcessor(WM, rows=[True, False])(input_ids, scores.clone())


def test_z_score_and_p_value_follow_the_one_proportion_test():
    assert z_score(50, 100, 0.25) == pytest.approx((50 - 25) / math.sqrt(100 * 0.25 * 0.75))
    assert z_score(0, 0, 0.25) == 0.0
    all_green = [0]
    for _ in range(60):  # a sequence where every token is green after its predecessor
        all_green.append(next(t for t in range(1, 49152) if WM.is_green(all_green[-1], t) and t not in all_green))
    found = detect_ids(all_green, WM)
    assert found.n_scored == found.n_green == 60 and found.detected
    assert found.z == pytest.approx(math.sqrt(60 * 0.75 / 0.25)) and found.p_value < 1e-20
    short = detect_ids([1], WM)
    assert short.n_scored == 0 and short.z == 0.0 and short.p_value == 0.5 and not short.detected
    assert not detect_ids(all_green[:21], WM).detected  # z = 7.7 from 20 tokens: too short to judge


def test_repeated_bigrams_count_once():
    loop = [101, 202] * 50
    assert detect_ids(loop, WM).n_scored == 2
    assert detect_ids(loop, WM, ignore_repeated_bigrams=False).n_scored == 99


@pytest.fixture(scope="module")
def lm():
    # fp32, as these statistical bounds were measured; bf16 sampling draws other (equally valid) texts
    return load_model(BASE_MODEL, dtype=torch.float32)


@pytest.fixture(scope="module")
def eval_set():
    return load_eval_set()


@pytest.fixture(scope="module")
def generations(lm, eval_set):
    """Exactly 200 new tokens for each of 20 evaluation instructions, with and without the watermark (one
    left-padded batch each), sampled from the full distribution as in the paper."""
    model, tokenizer = lm
    instructions = [r["instruction"] for r in eval_set if not r["input"]][:N_PROMPTS]
    prompts = [format_prompt({"instruction": i}) for i in instructions]
    plain_decoding = Decoding(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=N_TOKENS,
                              min_new_tokens=N_TOKENS, stop_at_markers=False, seed=0)
    marked = generate_tokens(model, tokenizer, prompts, decoding=replace(plain_decoding, watermark=WM))
    plain = generate_tokens(model, tokenizer, prompts, decoding=plain_decoding)
    assert all(len(row) == N_TOKENS for row in marked + plain)
    return instructions, tokenizer.batch_decode(marked), tokenizer.batch_decode(plain)


def test_watermarked_answers_are_detected_and_plain_ones_are_not(lm, generations):
    _, tokenizer = lm
    _, marked, plain = generations
    z_marked = [detect(t, tokenizer, WM).z for t in marked]
    z_plain = [detect(t, tokenizer, WM).z for t in plain]
    print(f"\nwatermarked z: min {min(z_marked):.1f}, median {np.median(z_marked):.1f}, max {max(z_marked):.1f}; "
          f"plain z: min {min(z_plain):.1f}, max {max(z_plain):.1f}")
    assert sum(z > 4 for z in z_marked) >= 0.95 * N_PROMPTS
    assert max(z_plain) < 4
    # The key is the secret: with another key the same watermarked text looks unmarked.
    assert max(detect(t, tokenizer, Watermark(key="wrong key")).z for t in marked) < 4


def test_human_reference_answers_are_not_flagged(lm, eval_set):
    _, tokenizer = lm
    found = [detect(r["output"], tokenizer, WM) for r in eval_set]
    z_human = [d.z for d in found]
    print(f"\nhuman z over {len(z_human)} references: min {min(z_human):.1f}, max {max(z_human):.1f}")
    assert len(found) == 252 and not any(d.detected for d in found)
    assert max(d.z for d in found if d.n_scored >= 25) < 4
    # Below 25 tokens the z-test is unreliable: with another key a 12-token reference reaches z = 4.0.
    short = [detect(r["output"], tokenizer, Watermark(key="test-key")) for r in eval_set]
    assert not any(d.detected for d in short) and max(d.z for d in short) >= 4 > max(
        d.z for d in short if d.n_scored >= 25)


def test_watermark_costs_a_small_rise_in_perplexity(lm, generations):
    model, tokenizer = lm
    instructions, marked, plain = generations
    ppl_plain = response_perplexity(model, tokenizer, instructions, plain)
    ppl_marked = response_perplexity(model, tokenizer, instructions, marked)
    print(f"\nperplexity under the unwatermarked model: plain {ppl_plain:.2f}, watermarked {ppl_marked:.2f} "
          f"(x{ppl_marked / ppl_plain:.2f})")
    assert ppl_plain < ppl_marked < 1.6 * ppl_plain
