"""Length-controlled win rate (Dubois et al. 2024, the LC win rate of AlpacaEval 2): the win rate the judge
would give if the model's answers were as long as the reference's.

Judges, people too, like longer answers, so a model can win by writing more. The judge's preference for the
model on item i, p_i in [0, 1] (a probability judge's preference; 1, 0.5, 0 for a win, tie, loss), is
modelled as logistic in the length difference:

    p_i = sigmoid(theta + phi * tanh(d_i / sd(d))),   d_i = len(model answer) - len(reference answer) (characters)

theta is the model's edge at equal length, phi the judge's taste for length (tanh bounds what any length can
buy). The fit maximises the likelihood with the p_i as soft labels, with a weak L2 penalty (1/C, C = 100) so
that a separable handful of items still has an answer. The LC win rate is the prediction at d = 0,
sigmoid(theta); its standard error comes from the robust (sandwich) covariance of theta.

alpaca_eval's `length_controlled_v1` also has a per-instruction difficulty term, fitted on the annotations of
many models and downloaded from the Hub, and shrinks towards deliberately length-gamed baselines; neither is
available offline, so this is its `length_controlled_minimal` form (the length term and a model term; our own
implementation, not alpaca_eval's code). Limits: with few items phi is barely identified (a handful of items
cannot tell length from quality, so the adjustment can swing either way and its standard error is large);
below `MIN_ITEMS` nothing is reported. It corrects for length only, not for any other style the judge likes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_ITEMS = 10  # fewer items: no LC win rate (the length coefficient cannot be told from noise)
L2_PENALTY = 1e-2  # 1/C with alpaca_eval's C = 100


def _sigmoid(x: Any) -> Any:
    return np.exp(-np.logaddexp(0.0, -x))


def fit_length_model(preferences: Sequence[float], length_deltas: Sequence[float],
                     penalty: float = L2_PENALTY, max_steps: int = 100) -> dict[str, Any]:
    """Newton's method on the penalised soft-label log-likelihood of p_i ~ sigmoid(theta + phi * x_i),
    x_i = tanh(d_i / sd(d)). Returns theta, phi, their robust covariance and the number of items."""
    p = np.asarray(preferences, dtype=float)
    d = np.asarray(length_deltas, dtype=float)
    scale = d.std(ddof=1) if len(d) > 1 else 0.0
    x = np.column_stack([np.ones_like(d), np.tanh(d / scale) if scale > 0 else np.zeros_like(d)])
    w = np.zeros(2)
    for _ in range(max_steps):
        mu = _sigmoid(x @ w)
        hessian = (x * (mu * (1 - mu))[:, None]).T @ x + penalty * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (mu - p) + penalty * w)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    mu = _sigmoid(x @ w)
    bread = np.linalg.inv((x * (mu * (1 - mu))[:, None]).T @ x + penalty * np.eye(2))
    meat = (x * ((mu - p) ** 2)[:, None]).T @ x
    n = len(p)
    covariance = bread @ meat @ bread * (n / (n - 2) if n > 2 else 1.0)  # small-sample (HC1) correction
    return {"theta": float(w[0]), "phi": float(w[1]), "covariance": covariance.tolist(), "n": n,
            "length_scale": float(scale)}


def length_controlled_win_rate(preferences: Sequence[float | None], model_lengths: Sequence[int],
                               reference_lengths: Sequence[int], min_items: int = MIN_ITEMS) -> dict[str, Any]:
    """The raw win rate (mean preference) and the length-controlled one, with standard errors.

    Items without a preference (None) are left out. Returns win_rate, lc_win_rate, lc_win_rate_se,
    length_coefficient (phi) and its standard error, mean_length_delta, n, and a `note` when nothing could be
    fitted (fewer than `min_items` items).
    """
    rows = [(p, m - r) for p, m, r in zip(preferences, model_lengths, reference_lengths, strict=True) if p is not None]
    n = len(rows)
    out: dict[str, Any] = {"n": n, "win_rate": sum(p for p, _ in rows) / n if n else None,
                           "mean_length_delta": sum(d for _, d in rows) / n if n else None,
                           "lc_win_rate": None, "lc_win_rate_se": None, "length_coefficient": None,
                           "length_coefficient_se": None, "note": None}
    if n < min_items:
        out["note"] = f"{n} items: too few to tell the judge's taste for length from quality (at least {min_items})"
        return out
    fit = fit_length_model([p for p, _ in rows], [d for _, d in rows])
    lc = float(_sigmoid(fit["theta"]))
    out.update(lc_win_rate=lc, lc_win_rate_se=lc * (1 - lc) * math.sqrt(fit["covariance"][0][0]),
               length_coefficient=fit["phi"], length_coefficient_se=math.sqrt(fit["covariance"][1][1]))
    if fit["length_scale"] == 0:
        out["note"] = "every answer pair has the same length difference: length cannot be adjusted for"
    return out


def length_difference_text(mean_delta: float | None, n: int, reference: str) -> str:
    """The mean length difference in words people read: "2348 characters shorter than X's" (not "-2348 longer")."""
    if mean_delta is None:
        return "no judged items: no length difference"
    size = round(abs(mean_delta))
    how = "as long as" if size == 0 else ("longer than" if mean_delta > 0 else "shorter than")
    amount = "" if size == 0 else f"{size} characters "
    return f"the model's answers are {amount}{how} {reference}'s on average (mean over the n = {n} judged items)"


def win_rate_report(lc: Mapping[str, Any], tally_win_rate: float | None, reference: str) -> str:
    """The raw and length-controlled win rates and the length difference as lines to read, saying what each is
    over and why the raw one can differ from the tally's."""
    if lc["win_rate"] is None:
        return "no judged items"
    lc_text = lc["note"] or f"{lc['lc_win_rate']:.2f} ± {lc['lc_win_rate_se']:.2f} (n = {lc['n']})"
    lines = [f"raw win rate {lc['win_rate']:.2f}: the mean of the judge's preference for the model over "
             f"n = {lc['n']} items (both orders averaged; the weighted win rate)",
             f"length-controlled win rate: {lc_text}",
             length_difference_text(lc["mean_length_delta"], lc["n"], reference)]
    if tally_win_rate is not None and round(tally_win_rate, 2) != round(lc["win_rate"], 2):
        lines.append(f"The tally's win rate ({tally_win_rate:.2f}) counts each item as a win, tie or loss (a tie is "
                     "half); the raw one keeps how strongly the judge leaned, so ties where it leaned slightly "
                     f"towards {'the reference' if lc['win_rate'] < tally_win_rate else 'the model'} pull it "
                     f"{'below' if lc['win_rate'] < tally_win_rate else 'above'} the tally's.")
    return "\n".join(lines)
