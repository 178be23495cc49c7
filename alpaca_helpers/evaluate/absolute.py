"""The absolute judge: a 0-100 score of each answer against the reference answer to the same request.

In the style of the evaluation in Raschka's "Build a Large Language Model (From Scratch)", chapter 7: the
judge sees the request, the reference answer and the answer to grade, and replies with a number only. Unlike
a pairwise verdict, a score needs no second answer in the prompt, so it has no position bias; it still
leans on the judge's taste and, like every judge, is only as good as the judge (`raters` checks a judge
against people). It runs with any judge `judge.judge_each` takes: the local model or an endpoint.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .judge import JudgeRun, judge_each
from .stats import mean_se

SCORE_MIN, SCORE_MAX = 0, 100
SCORE_PROMPT = """You are grading an answer by comparing it with a reference answer to the same request.

Request:
{instruction}{input_block}

Reference answer:
{reference}

Answer to grade:
{answer}

Score the answer to grade from 0 to 100: 100 if it serves the request as well as the reference answer or
better (correct, complete, following every instruction), 0 if it is useless. Reply with the number only."""

_SCORE = re.compile(r"^(?:score|rating)?\s*[:=]?\s*(\d+(?:\.\d+)?)\s*(?:/\s*100)?\s*\.?$", re.I)


def score_prompt(instruction: str, input: str, answer: str, reference: str) -> str:
    """The grading prompt sent to the judge (our own wording)."""
    input_block = f"\n\nInput:\n{input}" if input else ""
    return SCORE_PROMPT.format(instruction=instruction, input_block=input_block, reference=reference, answer=answer)


def parse_score(text: str) -> float | None:
    """The score on the reply's first line ("85", "Score: 85/100", "**85**"), if it is in 0-100; else None.

    Strict on purpose, like the pairwise verdict parser: "1. The answer..." is a list, not a score of 1.
    """
    lines = (text or "").replace("*", "").strip().splitlines()
    found = _SCORE.match(lines[0].strip()) if lines else None
    if found is None:
        return None
    value = float(found.group(1))
    return value if SCORE_MIN <= value <= SCORE_MAX else None


def score_item(ask: Callable[[str], str], item: Mapping[str, Any]) -> dict[str, Any]:
    """Ask the judge for one score of `item["answer"]` against `item["reference_answer"]`."""
    reply = ask(score_prompt(item["instruction"], item.get("input", ""), item["answer"], item["reference_answer"]))
    return {"reply": reply, "score": parse_score(reply)}


def run_absolute_judge(judge: Any, items: Sequence[Mapping[str, Any]], progress: bool = True) -> JudgeRun:
    """Score every item ({id, instruction, input, answer, reference_answer}); per-item results and the usage."""
    return judge_each(judge, items, score_item, "judge (scores against the reference)", progress=progress)


def score_summary(scores: Iterable[float | None]) -> dict[str, Any]:
    """Mean score with its standard error, the median, and how many were given (`n`) and unparsed."""
    scores = list(scores)
    values = [s for s in scores if s is not None]
    return {**mean_se(values), "median": statistics.median(values) if values else None,
            "unparsed": len(scores) - len(values)}


def score_by_model(judge: Any, items_by_model: Mapping[str, Sequence[Mapping[str, Any]]],
                   progress: bool = True) -> dict[str, JudgeRun]:
    """`run_absolute_judge` on each model's items ({"base": [...], "fine_tuned": [...]}); a list identical to an
    earlier model's (the same model twice) is scored once."""
    out: dict[str, JudgeRun] = {}
    for name, items in items_by_model.items():
        same = next((k for k in out if items_by_model[k] == items), None)
        out[name] = out[same] if same is not None else run_absolute_judge(judge, items, progress=progress)
    return out


SCORES_NOTE = "this judge cannot grade"


def scores_caveat(summaries: Mapping[str, Mapping[str, Any]],
                  scores: Mapping[str, Sequence[float | None]]) -> str | None:
    """A note for degenerate 0-100 scores (None otherwise): most replies unparsed, or every parsed score the same."""
    given = [v for s in scores.values() for v in s if v is not None]
    total = sum(len(s) for s in scores.values())
    unparsed = total - len(given)
    if total and unparsed * 2 < total and len(set(given)) > 1:
        return None
    values = ", ".join(f"{v:g}" for v in sorted(set(given))) or "none"
    return (f"Note: {SCORES_NOTE}: {unparsed} of {total} replies held no score in 0-100, and the scores given "
            f"take {len(set(given))} distinct value(s) ({values}). A 135M judge echoes a number from the prompt "
            "or writes prose; read the change above as no evidence either way. A strong judge at `judge_base_url` "
            "spreads its scores across the scale.")
