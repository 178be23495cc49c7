"""The pairwise judge read from its log-probabilities (as alpaca_eval's weighted judges).

No reply to parse: the judge's one reply token gives a preference per order (`judge_item_weighted`), through
an endpoint that returns log-probabilities or `judge.LocalJudge` in this process; `weighted_win_rate` is the
mean of the model's preferences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .judge import JUDGE_PROMPT, TOP_LOGPROBS, JudgeRun, combine_orders, judge_each
from .outcomes import LOSS, TIE, UNPARSED, WIN

WEIGHTED_JUDGE_PROMPT = JUDGE_PROMPT.rsplit("\n\nGive your decision", 1)[0] + """

Which answer is better? Reply with one character: 1 or 2."""
VERDICT_TOKENS = ("1", "2")


def weighted_judge_prompt(instruction: str, input: str, answer_1: str, answer_2: str) -> str:
    """The pairwise prompt for a judge read through its log-probabilities: the reply is one token, 1 or 2."""
    input_block = f"\n\nInput:\n{input}" if input else ""
    return WEIGHTED_JUDGE_PROMPT.format(instruction=instruction, input_block=input_block, answer_1=answer_1,
                                        answer_2=answer_2)


def verdict_preference(top_logprobs: Mapping[str, float]) -> float | None:
    """The judge's probability that answer 1 is better: P("1") / (P("1") + P("2")) over its first reply token.

    Tokens are compared with surrounding spaces removed (" 1" counts as "1"). None when neither verdict token
    is among the alternatives given.
    """
    mass = dict.fromkeys(VERDICT_TOKENS, 0.0)
    for token, logprob in top_logprobs.items():
        if token.strip() in mass:
            mass[token.strip()] += math.exp(logprob)
    total = sum(mass.values())
    return mass["1"] / total if total > 0 else None


def _side(preference: float) -> str:
    return "1" if preference > 0.5 else "2" if preference < 0.5 else "tie"


def judge_item_weighted(top_logprobs: Callable[[str], Mapping[str, float]], instruction: str, input: str,
                        model_answer: str, reference_answer: str) -> dict[str, Any]:
    """Ask a log-probability judge in both orders.

    Returns `preferences` (P(answer 1 better) in each order), `preference` (the model's: the mean of
    P(model better) over both orders, in [0, 1]), the two counted `verdicts` (the likelier side of each order)
    and the `outcome` they give with `combine_orders`.
    """
    prompts = [weighted_judge_prompt(instruction, input, model_answer, reference_answer),
               weighted_judge_prompt(instruction, input, reference_answer, model_answer)]
    preferences = [verdict_preference(top_logprobs(p)) for p in prompts]
    if None in preferences:
        return {"preferences": preferences, "preference": None, "verdicts": [None, None], "outcome": UNPARSED}
    verdicts = [_side(p) for p in preferences]
    return {"preferences": preferences, "preference": (preferences[0] + 1 - preferences[1]) / 2,
            "verdicts": verdicts, "outcome": combine_orders(*verdicts)}


def preference_of(result: Mapping[str, Any]) -> float | None:
    """The model's preference in [0, 1] from one judged item: the probability judge's, else its outcome as
    1 (win), 0.5 (tie) or 0 (loss); None when unparsed."""
    if result.get("preference") is not None:
        return result["preference"]
    return {WIN: 1.0, TIE: 0.5, LOSS: 0.0}.get(result["outcome"])


def weighted_win_rate(preferences: Iterable[float | None]) -> dict[str, Any]:
    """The mean of the model's preferences (alpaca_eval's weighted win rate) with its standard error, over the
    items that have one."""
    values = [p for p in preferences if p is not None]
    n = len(values)
    rate = sum(values) / n if n else None
    se = math.sqrt(sum((v - rate) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    return {"weighted_win_rate": rate, "weighted_win_rate_se": se, "n_weighted": n}


def run_weighted_judge(judge: Any, items: Sequence[Mapping[str, Any]], progress: bool = True) -> JudgeRun:
    """Judge every item in both orders from log-probabilities, with a `LocalJudge` or a `Teacher` whose endpoint
    returns them. Returns per-item results (id, outcome, verdicts, preferences, preference) and the usage."""
    def one(ask: Callable[[str], Mapping[str, float]], item: Mapping[str, Any]) -> dict[str, Any]:
        return judge_item_weighted(ask, item["instruction"], item.get("input", ""), item["model_answer"],
                                   item["reference_answer"])

    return judge_each(judge, items, one, "judge (log-probabilities, both orders)", top_logprobs=TOP_LOGPROBS,
                      progress=progress)
