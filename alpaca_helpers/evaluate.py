"""Alpaca's evaluation: blind pairwise comparison with text-davinci-003 on the 252 user-oriented instructions.

Steps: answer the instructions with a model (`generate_answers`, resumable JSONL), pair each answer with
text-davinci-003's in a seeded random left/right order (`make_blind_pairs`, the key kept apart), collect
votes from people (`VoteStore`, one CSV line per vote) or from a judge model asked in both orders
(`judge_item`), and count (`tally`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .data import append_durable, atomic_write_text, complete_lines, read_complete_jsonl

MODEL, REFERENCE = "model", "reference"
WIN, LOSS, TIE, UNPARSED = "win", "loss", "tie", "unparsed"
CHOICES = ("A", "B", "tie")


def eval_subset(records: Sequence[Mapping[str, Any]], size: int | None, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of `size` records, in their original order (all when size is None)."""
    if size is None or size >= len(records):
        return list(range(len(records)))
    return sorted(random.Random(seed).sample(range(len(records)), size))


# ---------------------------------------------------------------------------------------------------------
# Answers


def read_answers(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Answers saved by `generate_answers`, keyed by item id."""
    return {row["id"]: row for row in read_complete_jsonl(path)}


def generate_answers(model: Any, tokenizer: Any, records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                     batch_size: int = 8, progress: bool = True, **decoding: Any) -> dict[str, dict[str, Any]]:
    """Answer every record (each needs an `id`) with `generate_batch`, appending to a JSONL file as it goes.

    Resumable: ids already in the file are skipped, so a crash loses at most the batch in flight. Each line
    stores the decoding settings next to the answer.
    """
    from tqdm.auto import tqdm

    from .generate import generate_batch

    path = Path(path)
    done = read_answers(path)
    todo = [r for r in records if r["id"] not in done]
    with tqdm(total=len(records), initial=len(records) - len(todo), desc="answers", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            outputs = generate_batch(model, tokenizer, [r["instruction"] for r in chunk],
                                     [r.get("input", "") for r in chunk], **decoding)
            for record, output in zip(chunk, outputs):
                row = {"id": record["id"], "instruction": record["instruction"], "input": record.get("input", ""),
                       "output": output, "decoding": decoding}
                append_durable(path, json.dumps(row, ensure_ascii=False))
                done[record["id"]] = row
            bar.update(len(chunk))
    return done


# ---------------------------------------------------------------------------------------------------------
# Blind pairs


def make_blind_pairs(records: Sequence[Mapping[str, Any]], model_answers: Sequence[str],
                     reference_answers: Sequence[str], seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Pair each model answer with the reference answer in a seeded random order.

    Returns what a rater may see (id, category, instruction, input, answer_a, answer_b) and, separately, the
    key: for each id, which side is the model's ("A" or "B"). The same seed gives the same order.
    """
    rng = random.Random(seed)
    visible, key = [], {}
    for record, ours, theirs in zip(records, model_answers, reference_answers, strict=True):
        model_side = rng.choice("AB")
        a, b = (ours, theirs) if model_side == "A" else (theirs, ours)
        visible.append({"id": record["id"], "category": record.get("motivation_app", ""),
                        "instruction": record["instruction"], "input": record.get("input", ""),
                        "answer_a": a, "answer_b": b})
        key[record["id"]] = model_side
    return visible, key


def save_blind_pairs(visible: Sequence[Mapping[str, Any]], key: Mapping[str, str], folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write `pairs.jsonl` (for raters) and `pairs_key.json` (the hidden mapping) into `folder`."""
    folder = Path(folder)
    pairs, key_path = folder / "pairs.jsonl", folder / "pairs_key.json"
    atomic_write_text(pairs, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in visible))
    atomic_write_text(key_path, json.dumps(dict(key), indent=1) + "\n")
    return pairs, key_path


def outcome_of_choice(choice: str, model_side: str) -> str:
    """A rater's choice ("A", "B" or "tie") as the model's outcome: win, loss or tie."""
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}; expected one of {CHOICES}")
    if choice == "tie":
        return TIE
    return WIN if choice == model_side else LOSS


# ---------------------------------------------------------------------------------------------------------
# Votes from people


@dataclass
class VoteStore:
    """One rater's votes, one CSV line per vote, written and synced at once (closing the notebook loses
    nothing; a line torn by a crash is ignored on read and repaired on the next write)."""

    path: Path
    rater: str
    columns: tuple[str, ...] = field(default=("time", "rater", "id", "choice"), init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not re.fullmatch(r"[\w .-]+", self.rater or ""):
            raise ValueError(f"rater name {self.rater!r}: use letters, digits, spaces, '.', '-' or '_'")

    def add(self, item_id: str, choice: str) -> None:
        """Record one vote ("A", "B" or "tie") for an item."""
        if choice not in CHOICES:
            raise ValueError(f"unknown choice {choice!r}; expected one of {CHOICES}")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="")
        if not self.path.exists() or self.path.stat().st_size == 0:
            writer.writerow(self.columns)
            append_durable(self.path, buffer.getvalue())
            buffer.seek(0), buffer.truncate()
        writer.writerow((datetime.now(timezone.utc).isoformat(timespec="seconds"), self.rater, item_id, choice))
        append_durable(self.path, buffer.getvalue())

    def votes(self) -> dict[str, str]:
        """This file's votes by item id (a later vote on the same item replaces an earlier one)."""
        return {row["id"]: row["choice"] for row in read_votes([self.path])}

    def next_item(self, item_ids: Sequence[str]) -> str | None:
        """The first item not yet rated, or None when all are."""
        rated = self.votes()
        return next((i for i in item_ids if i not in rated), None)


def read_votes(paths: Iterable[str | os.PathLike]) -> list[dict[str, str]]:
    """All complete vote rows of several raters' CSV files (torn last lines are ignored)."""
    rows = []
    for path in paths:
        rows.extend(row for row in csv.DictReader(io.StringIO(complete_lines(path))) if row.get("choice") in CHOICES)
    return rows


def vote_outcomes(rows: Iterable[Mapping[str, str]], key: Mapping[str, str]) -> list[dict[str, str]]:
    """Each rater's last vote per item, as the model's outcome: [{rater, id, outcome}]."""
    last: dict[tuple[str, str], str] = {}
    for row in rows:
        last[(row["rater"], row["id"])] = row["choice"]
    return [{"rater": r, "id": i, "outcome": outcome_of_choice(c, key[i])} for (r, i), c in last.items()]


# ---------------------------------------------------------------------------------------------------------
# The judge model

JUDGE_PROMPT = """You are an impartial reviewer comparing two answers written for the same request.
Decide which answer serves the person better: it follows the request, is correct, and is clear.
Do not prefer an answer because it is longer, and do not let the order of the answers sway you.

Request:
{instruction}{input_block}

Answer 1:
{answer_1}

Answer 2:
{answer_2}

Give your decision on the last line, exactly in one of these forms:
Verdict: 1
Verdict: 2
Verdict: tie"""

_VERDICT = re.compile(r"^\s*\**\s*verdict\s*\**\s*:\s*\**\s*(1|2|tie)\s*\**\s*\.?\s*$", re.I | re.M)


def judge_prompt(instruction: str, input: str, answer_1: str, answer_2: str) -> str:
    """The pairwise preference prompt sent to the judge (our own wording)."""
    input_block = f"\n\nInput:\n{input}" if input else ""
    return JUDGE_PROMPT.format(instruction=instruction, input_block=input_block, answer_1=answer_1,
                               answer_2=answer_2)


def parse_verdict(text: str) -> str | None:
    """"1", "2" or "tie" from a judge's reply, or None unless exactly one verdict form is present.

    Strict on purpose: a reply without a `Verdict:` line, or with conflicting ones, is counted as unparseable
    rather than guessed.
    """
    found = {m.group(1).lower() for m in _VERDICT.finditer(text or "")}
    return found.pop() if len(found) == 1 else None


def combine_orders(first: str | None, second: str | None) -> str:
    """The model's outcome from two verdicts: `first` with the model's answer as 1, `second` with it as 2.

    Each verdict counts +1 for the side it prefers and 0 for a tie; the sign of the sum decides. A judge that
    always picks the first position thus yields a tie, which cancels position bias.
    """
    if first is None or second is None:
        return UNPARSED
    score = {"1": 1, "2": -1, "tie": 0}[first] + {"1": -1, "2": 1, "tie": 0}[second]
    return WIN if score > 0 else LOSS if score < 0 else TIE


def judge_item(ask: Callable[[str], str], instruction: str, input: str, model_answer: str,
               reference_answer: str) -> dict[str, Any]:
    """Ask the judge in both orders; returns the two raw replies, the two verdicts and the outcome."""
    replies = [ask(judge_prompt(instruction, input, model_answer, reference_answer)),
               ask(judge_prompt(instruction, input, reference_answer, model_answer))]
    verdicts = [parse_verdict(r) for r in replies]
    return {"replies": replies, "verdicts": verdicts, "outcome": combine_orders(*verdicts)}


# ---------------------------------------------------------------------------------------------------------
# Counting


def tally(outcomes: Iterable[str]) -> dict[str, Any]:
    """Wins, losses, ties and unparsed counts, and the model's win rate with its standard error.

    Win rate counts a tie as half a win, over the parsed items; its standard error is the sample standard
    deviation of the per-item scores (1, 0.5, 0) over sqrt(n); both are None when there are too few items
    (0, or 1 for the error). `record` is Alpaca's "90 vs 89" style.
    """
    outcomes = list(outcomes)
    counts = {k: outcomes.count(k) for k in (WIN, LOSS, TIE, UNPARSED)}
    unknown = set(outcomes) - set(counts)
    if unknown:
        raise ValueError(f"unknown outcomes: {sorted(unknown)}")
    scores = [{WIN: 1.0, TIE: 0.5, LOSS: 0.0}[o] for o in outcomes if o != UNPARSED]
    n = len(scores)
    rate = sum(scores) / n if n else None
    se = math.sqrt(sum((s - rate) ** 2 for s in scores) / (n - 1) / n) if n > 1 else None
    return {"wins": counts[WIN], "losses": counts[LOSS], "ties": counts[TIE], "unparsed": counts[UNPARSED],
            "n": n, "win_rate": rate, "win_rate_se": se, "record": f"{counts[WIN]} vs {counts[LOSS]}"}


def tally_by(outcomes: Sequence[str], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`tally` per group (for example per `motivation_app`), groups in order of size."""
    by: dict[str, list[str]] = {}
    for outcome, group in zip(outcomes, groups, strict=True):
        by.setdefault(group, []).append(outcome)
    return {g: tally(by[g]) for g in sorted(by, key=lambda g: (-len(by[g]), g))}


def mean_words(texts: Iterable[str]) -> float:
    """Average answer length in words (judges tend to favour the longer side)."""
    lengths = [len(t.split()) for t in texts]
    return sum(lengths) / len(lengths) if lengths else 0.0


def run_judge(teacher: Any, items: Sequence[Mapping[str, Any]], progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge every item ({id, instruction, input, model_answer, reference_answer}) with a `Teacher`, both orders.

    Returns the per-item results (id, outcome, verdicts, raw replies) and the usage: requests, tokens and the
    estimated dollar cost from the teacher's price table (None for local or unknown models).
    """
    from tqdm.auto import tqdm

    from .teacher import estimate_cost

    usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def ask(prompt: str) -> str:
        reply = teacher.complete(prompt)
        usage["requests"] += 1
        usage["prompt_tokens"] += reply.prompt_tokens
        usage["completion_tokens"] += reply.completion_tokens
        return reply.text

    results = []
    for item in tqdm(items, desc="judge (both orders)", disable=not progress):
        result = judge_item(ask, item["instruction"], item.get("input", ""), item["model_answer"],
                            item["reference_answer"])
        results.append({"id": item["id"], **result})
    cfg = teacher.config
    usage["cost_usd"] = estimate_cost(cfg.model, usage["prompt_tokens"], usage["completion_tokens"], cfg.base_url)
    return results, usage


def format_tally(result: Mapping[str, Any]) -> str:
    """One line for a `tally` result, e.g. "90 vs 89 (ties 3, unparsed 0), win rate 0.50 ± 0.04"."""
    line = f"{result['record']} (ties {result['ties']}, unparsed {result['unparsed']})"
    if result["win_rate"] is not None:
        line += f", win rate {result['win_rate']:.2f}"
        if result["win_rate_se"] is not None:
            line += f" ± {result['win_rate_se']:.2f}"
    return line
