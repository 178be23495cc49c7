"""The durable log of a teacher run: kept records and finished requests, so a crashed run resumes where it stopped."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import append_durable, read_complete_jsonl


class Checkpoint:
    """An append-only JSONL log of kept records and finished requests, safe against `kill -9`.

    Each finished request is one `write()` of its kept records followed by a `request` line, then fsync;
    a torn last line (power loss) is dropped on load.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._load()

    def _load(self) -> None:
        for entry in read_complete_jsonl(self.path):
            (self.records if entry.get("type") == "record" else self.requests).append(entry)

    def append(self, records: Sequence[Mapping[str, Any]], request: Mapping[str, Any]) -> None:
        lines = [json.dumps({"type": "record", **r}, ensure_ascii=False) for r in records]
        lines.append(json.dumps({"type": "request", **request}, ensure_ascii=False))
        append_durable(self.path, "\n".join(lines))
        self.records.extend({"type": "record", **r} for r in records)
        self.requests.append({"type": "request", **request})

    def next_index(self) -> int:
        """The index of the first request after every finished one."""
        return max((r["index"] for r in self.requests), default=-1) + 1

    def wall_seconds(self, session: str, session_seconds: float) -> float:
        """`session_seconds` of this session plus the earlier sessions' (each up to its last finished request).

        Each request line carries its `session` and the seconds from that session's start (`elapsed`)."""
        earlier: dict[str, float] = {}
        for r in self.requests:
            if r.get("session") != session:
                earlier[r["session"]] = max(earlier.get(r["session"], 0.0), r.get("elapsed", 0.0))
        return sum(earlier.values()) + session_seconds

    def rejections(self, examples_per_reason: int = 3) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Rejections by reason over every finished request, and the first few rejected texts of each reason."""
        counts: Counter = Counter()
        examples: dict[str, list[str]] = {}
        for r in self.requests:
            counts.update(r["rejections"])
            for reason, text in r.get("rejected", []):
                found = examples.setdefault(reason, [])
                if len(found) < examples_per_reason:
                    found.append(text)
        return dict(counts), examples
