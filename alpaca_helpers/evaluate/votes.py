"""Blind pairs and votes from people.

Each model answer is paired with the reference answer in a seeded random left/right order
(`make_blind_pairs`, the key kept apart); each rater's votes go to a CSV file, one line per vote
(`VoteStore`); `vote_outcomes` reads them back as the model's outcomes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import append_durable, atomic_write_text, complete_lines
from .outcomes import LOSS, TIE, WIN

CHOICES = ("A", "B", "tie")


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


def save_blind_pairs(visible: Sequence[Mapping[str, Any]], key: Mapping[str, str],
                     folder: str | os.PathLike) -> tuple[Path, Path]:
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


def last_votes(rows: Iterable[Mapping[str, str]]) -> dict[tuple[str, str], str]:
    """Each rater's last choice per item: {(rater, id): choice} (a later vote replaces an earlier one)."""
    return {(row["rater"], row["id"]): row["choice"] for row in rows}


def vote_outcomes(rows: Iterable[Mapping[str, str]], key: Mapping[str, str]) -> list[dict[str, str]]:
    """Each rater's last vote per item, as the model's outcome: [{rater, id, outcome}]. Votes on items the
    key does not hold (pairs of another subset) are left out."""
    return [{"rater": r, "id": i, "outcome": outcome_of_choice(c, key[i])}
            for (r, i), c in last_votes(rows).items() if i in key]
