"""Descriptive statistics of instruction data: word lengths and leading words."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def leading_word(text: str) -> str | None:
    """The first alphabetic word of `text`, lowercased (a heuristic for the leading verb), or None."""
    match = _WORD.search(text)
    return match.group(0).lower() if match else None


def leading_word_counts(texts: Iterable[str], top: int | None = None) -> list[tuple[str, int]]:
    """Most common leading words with their counts, most common first."""
    counts = Counter(w for w in map(leading_word, texts) if w)
    return counts.most_common(top)
