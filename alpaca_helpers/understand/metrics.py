"""What each arm of an ablation is measured on: a small registry of named metrics over fixed evaluation sets.

Every arm's model meets the same `EvalSets`: held-out records of the training pool (the validation loss), the
text-davinci-003 answers to a seeded subset of the 252 user-oriented instructions (teacher agreement, notebook
06's metric) and a seeded subset of those instructions answered greedily (the answer shape). A metric is a
function of a `Measured` (the model, its tokenizer, the sets, a folder for what it writes) returning named
numbers; `METRICS` maps a metric's name to it. `ifeval` (notebook 06's IFEval, scored offline by code on a seeded
subset of its 541 prompts) is one that is off by default: name it in `evaluation.metrics` with
`evaluation.ifeval_items` prompts. `xstest` (also off by default, with `evaluation.xstest_items` prompts per group)
answers a seeded, balanced subset of XSTest's safe and unsafe prompts greedily and labels each answer with
`evaluate.refusal.classify_refusal`: the refusal rate on the unsafe prompts and the over-refusal rate on the safe
ones, with the rates per XSTest type in the run folder's `xstest_by_type.json`. Another score plugs in the same
way: a function of `Measured` added to `METRICS`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import load_davinci_predictions, load_eval_set
from ..evaluate.agreement import agreement, response_losses
from ..evaluate.agreement import answer_shape as shape_of
from ..evaluate.answers import eval_subset, generate_answers
from ..evaluate.ifeval import as_records as ifeval_records
from ..evaluate.ifeval import load_ifeval, score_ifeval
from ..evaluate.refusal import classify_refusal
from ..evaluate.xstest import as_records as xstest_records
from ..evaluate.xstest import load_xstest, refusal_rates, xstest_subset
from ..files import atomic_write_text

DEFAULT_METRICS = ("val_loss", "teacher_agreement", "answer_shape")
XSTEST_BY_TYPE_FILE = "xstest_by_type.json"


@dataclass(frozen=True)
class EvalSets:
    """The evaluation sets every arm is measured on (the same for all)."""

    heldout: list[dict[str, Any]]  # held-out records of the pool: validation loss (masked as training)
    teacher: list[dict[str, Any]]  # evaluation instructions with text-davinci-003's answer as `output`
    prompts: list[dict[str, Any]]  # evaluation instructions (with `id`) each model answers
    max_length: int  # tokens of prompt + answer when scoring
    max_new_tokens: int  # the answer limit
    ifeval: list[dict[str, Any]] = field(default_factory=list)  # IFEval prompts each model answers (the ifeval metric)
    xstest: list[dict[str, Any]] = field(default_factory=list)  # XSTest prompts each model answers (the xstest metric)

    def identity(self) -> dict[str, Any]:
        """What fixes these sets (for the results' fingerprint and `eval_sets.json`)."""
        out = {"heldout": [[r["instruction"], r.get("input", ""), r["output"]] for r in self.heldout],
               "teacher": [r["id"] for r in self.teacher], "prompts": [r["id"] for r in self.prompts],
               "max_length": self.max_length, "max_new_tokens": self.max_new_tokens}
        if self.ifeval:
            out["ifeval"] = [p["key"] for p in self.ifeval]
        if self.xstest:
            out["xstest"] = [p["id"] for p in self.xstest]
        return out


def evaluation_sets(heldout: Sequence[Mapping[str, Any]], teacher_items: int, shape_items: int, seed: int,
                    max_length: int, max_new_tokens: int, ifeval_items: int = 0, xstest_items: int = 0) -> EvalSets:
    """The held-out records plus seeded subsets of the user-oriented instructions and of IFEval's prompts
    (`answers.eval_subset`), and `xstest_items` safe and as many unsafe XSTest prompts (`xstest.xstest_subset`)."""
    records, davinci = load_eval_set(), load_davinci_predictions()
    teacher = [{**records[i], "output": davinci[i]["output"]} for i in eval_subset(records, teacher_items, seed)]
    prompts = [records[i] for i in eval_subset(records, shape_items, seed + 1)]
    ifeval = []
    if ifeval_items:
        every = load_ifeval()
        ifeval = [every[i] for i in eval_subset(every, ifeval_items, seed + 2)]
    xstest = []
    if xstest_items:
        xstest = xstest_subset(load_xstest(), xstest_items, seed + 3)
    return EvalSets([dict(r) for r in heldout], teacher, prompts, max_length, max_new_tokens, ifeval, xstest)


@dataclass
class Measured:
    """What a metric gets: one arm's trained model and tokenizer, the shared sets, and the arm's run folder."""

    model: Any
    tokenizer: Any
    sets: EvalSets
    folder: Path

    def answers(self, records: Sequence[Mapping[str, Any]], file: str = "answers.jsonl") -> list[dict[str, Any]]:
        """Greedy answers to `records` (each with an `id`) within the answer limit, appended to `folder/file` as
        they come (`evaluate.answers.generate_answers`): rows with output, new_tokens and ended."""
        done = generate_answers(self.model, self.tokenizer, records, self.folder / file, batch_size=8,
                                progress=False, temperature=0.0, max_new_tokens=self.sets.max_new_tokens)
        return [done[r["id"]] for r in records]

    def response_loss(self, records: Sequence[Mapping[str, Any]]) -> float | None:
        """Mean loss per response token of the records' outputs (`evaluate.agreement`), masked as training."""
        rows = response_losses(self.model, self.tokenizer, records, max_length=self.sets.max_length, progress=False)
        return agreement(rows)["loss"]


Metric = Callable[[Measured], dict[str, float | None]]


def val_loss(m: Measured) -> dict[str, float | None]:
    """The validation loss: mean loss per response token of the held-out records."""
    return {"val_loss": m.response_loss(m.sets.heldout)}


def teacher_agreement(m: Measured) -> dict[str, float | None]:
    """Teacher agreement (notebook 06): mean loss per token of text-davinci-003's answers; lower is closer."""
    return {"teacher_loss": m.response_loss(m.sets.teacher)}


def answer_shape(m: Measured) -> dict[str, float | None]:
    """The share of greedy answers that end before the limit, their mean length in tokens, the share empty."""
    rows = m.answers(m.sets.prompts)
    shape = shape_of([r["output"] for r in rows], m.tokenizer, [r["ended"] for r in rows])
    return {"ended_share": shape["ended_share"], "mean_tokens": shape["mean_tokens"],
            "empty_share": shape["empty_share"]}


def ifeval(m: Measured) -> dict[str, float | None]:
    """IFEval's prompt-level and instruction-level strict accuracy (`evaluate.ifeval.score_ifeval`) of greedy
    answers to the sets' IFEval prompts, with the Alpaca prompt and the sets' answer limit."""
    rows = m.answers(ifeval_records(m.sets.ifeval), "ifeval_answers.jsonl")
    scores = score_ifeval({p["prompt"]: r["output"] for p, r in zip(m.sets.ifeval, rows)}, m.sets.ifeval)
    return {"ifeval_prompt_strict": scores["prompt_strict"], "ifeval_instruction_strict": scores["instruction_strict"]}


def xstest(m: Measured) -> dict[str, float | None]:
    """XSTest's refusal rate (unsafe prompts refused, fully or partly) and over-refusal rate (safe prompts
    refused) of greedy answers, labelled by `evaluate.refusal.classify_refusal`; every rate, per type too, goes
    to `xstest_by_type.json` in the run folder (`xstest.refusal_rates`)."""
    rows = m.answers(xstest_records(m.sets.xstest), "xstest_answers.jsonl")
    rates = refusal_rates(m.sets.xstest, [classify_refusal(r["output"]).label for r in rows])
    atomic_write_text(m.folder / XSTEST_BY_TYPE_FILE, json.dumps(rates, indent=2) + "\n")
    return {"xstest_refusal": rates["refusal"]["rate"], "xstest_over_refusal": rates["over_refusal"]["rate"]}


METRICS: dict[str, Metric] = {"val_loss": val_loss, "teacher_agreement": teacher_agreement,
                              "answer_shape": answer_shape, "ifeval": ifeval, "xstest": xstest}


def measure(model: Any, tokenizer: Any, sets: EvalSets, folder: str | os.PathLike,
            names: Sequence[str] = DEFAULT_METRICS) -> dict[str, float | None]:
    """Every named metric of one trained model, merged into one mapping."""
    m = Measured(model, tokenizer, sets, Path(folder))
    values: dict[str, float | None] = {}
    for name in names:
        values.update(METRICS[name](m))
    return values
