"""The length-controlled win rate recovers a planted length bias on synthetic preferences."""

import math

import numpy as np
import pytest

from alpaca_helpers.evaluate.length_control import (
    MIN_ITEMS,
    length_controlled_win_rate,
    length_difference_text,
    win_rate_report,
)


def _synthetic(theta, phi, n=1000, seed=0, soft=False):
    """A judge whose preference for the model is sigmoid(theta + phi * tanh(d / sd(d))): quality theta, taste
    for length phi; the model writes about 400 characters more than the reference on average."""
    rng = np.random.default_rng(seed)
    reference = rng.integers(200, 2000, n)
    model = np.maximum(1, reference + rng.normal(400, 600, n)).astype(int)
    d = model - reference
    p = 1 / (1 + np.exp(-(theta + phi * np.tanh(d / d.std(ddof=1)))))
    preferences = p if soft else (rng.random(n) < p).astype(float)
    return [float(x) for x in preferences], model.tolist(), reference.tolist()


@pytest.mark.parametrize("theta,phi", [(0.0, 1.5), (0.8, 1.0), (-1.0, 2.0), (0.5, 0.0)])
def test_a_planted_length_effect_is_recovered(theta, phi):
    result = length_controlled_win_rate(*_synthetic(theta, phi))
    truth = 1 / (1 + math.exp(-theta))
    assert abs(result["lc_win_rate"] - truth) < 3 * result["lc_win_rate_se"] + 0.005
    assert abs(result["length_coefficient"] - phi) < 3 * result["length_coefficient_se"] + 0.01
    if phi > 0:  # longer answers won: the raw win rate overstates the model, the LC one does not
        assert result["win_rate"] > truth + 0.05 and abs(result["lc_win_rate"] - truth) < result["win_rate"] - truth


def test_soft_preferences_are_fitted_exactly_and_few_items_are_refused():
    result = length_controlled_win_rate(*_synthetic(0.3, 1.2, soft=True))
    assert result["lc_win_rate"] == pytest.approx(1 / (1 + math.exp(-0.3)), abs=2e-3)
    assert result["length_coefficient"] == pytest.approx(1.2, abs=2e-2)
    preferences, model, reference = _synthetic(0.0, 1.0, n=MIN_ITEMS - 1)
    few = length_controlled_win_rate(preferences + [None], model + [5], reference + [5])
    assert few["lc_win_rate"] is None and few["n"] == MIN_ITEMS - 1 and "too few" in few["note"]
    same = length_controlled_win_rate([1.0, 0.0] * 10, [100] * 20, [50] * 20)
    assert same["lc_win_rate"] == pytest.approx(0.5, abs=1e-3) and "same length difference" in same["note"]


def test_win_rate_report_rounds_labels_and_words_lengths_sensibly():
    assert length_difference_text(-2348.4, 6, "gpt4") == ("the model's answers are 2348 characters shorter than "
                                                          "gpt4's on average (mean over the n = 6 judged items)")
    assert "120 characters longer than" in length_difference_text(120.0, 3, "gpt4")
    assert "as long as" in length_difference_text(0.2, 3, "gpt4")
    lc = length_controlled_win_rate([0.4846877003976047] * 6, [100] * 6, [2448] * 6)
    text = win_rate_report(lc, 0.5, "gpt4")
    assert "raw win rate 0.48: the mean of the judge's preference" in text and "n = 6" in text
    assert "0.4846877" not in text and "shorter than gpt4's" in text and "tally's win rate (0.50)" in text
    assert "tally's" not in win_rate_report(lc, 0.48, "gpt4")
