"""The verifier: how many of a prompt's constraints a response satisfies, checked by if-verifiable's own checkers.

A response's score is the fraction of its prompt's constraints that pass, strict (the response as written: no
first or last line dropped, no markdown removed, as IFEval's strict accuracy). An empty response passes none.
The checks are `evaluate.ifeval.check_response`, the same ones that score IFEval, run offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..evaluate.ifeval import check_response, prepare_checks
from .constraints import prompt_as_text


def verify(prompt: Mapping[str, Any], response: str) -> dict[str, Any]:
    """{score, passed, instruction_id_list}: the fraction passed, and one strict verdict per constraint."""
    prepare_checks()
    checked = check_response({"key": prompt.get("key", 0), "prompt": prompt_as_text(prompt),
                              "instruction_id_list": prompt["instruction_id_list"], "kwargs": prompt["kwargs"]},
                             response)
    passed = [bool(v) for v in checked["strict"]]
    return {"score": sum(passed) / len(passed) if passed else 0.0, "passed": passed,
            "instruction_id_list": list(checked["instruction_id_list"])}


def verifier_score(prompt: Mapping[str, Any], response: str) -> float:
    """The fraction of the prompt's constraints that `response` satisfies (0.0 to 1.0)."""
    return verify(prompt, response)["score"]


def verifier_scores(prompt: Mapping[str, Any], responses: Sequence[str]) -> list[float]:
    """`verifier_score` of each response to one prompt."""
    return [verifier_score(prompt, r) for r in responses]
