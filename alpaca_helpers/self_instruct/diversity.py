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


# A heuristic, not a parser: the instruction's first word is taken as its verb, and the head of the
# noun phrase right after it (skipping pronouns, determiners and a particle such as "up with",
# stopping at a preposition, conjunction or the end of the clause) as its direct object. Right for
# the common imperative shape ("Write a short story about ..." -> write, story; "Come up with a
# list of ..." -> come, list); questions and other shapes give no pair.
_NOT_VERBS = frozenset(
    "what which who whom whose when where why how is are was were do does did can could would should "
    "will shall may might i you we they he she it my your our their this that these those there here "
    "if in on at for to of a an the as given using based".split()
)
_SKIP = frozenset(
    "a an the me us him her them you my your our his its their this that these those some any each "
    "every all one two three four five ten few several another other up out down with".split()
)
_STOP = frozenset(
    "of about for to in on at from by into as that which who whose where when why how what if "
    "whether and or but so than using based given without between within while is are be".split()
)
_OBJECT_WORDS = 4  # look at most this many words into the noun phrase


def verb_object(text: str) -> tuple[str | None, str | None]:
    """(leading verb, its direct object) by the heuristic above, lowercased; None where not found."""
    clause = re.split(r"[.,;:?!()\"\n]", text.strip(), maxsplit=1)[0]
    words = [w.lower() for w in _WORD.findall(clause)]
    if words and words[0] == "please":
        words = words[1:]
    if not words or words[0] in _NOT_VERBS:
        return None, None
    rest = words[1:]
    while rest and rest[0] in _SKIP:
        rest = rest[1:]
    phrase: list[str] = []
    for w in rest[:_OBJECT_WORDS]:
        if w in _STOP or w in _SKIP:
            break
        phrase.append(w)
    return words[0], (phrase[-1] if phrase else None)


def verb_object_counts(
    texts: Iterable[str], top_verbs: int = 20, top_objects: int = 4
) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """The most common leading verbs, each with its count and its most common direct objects."""
    pairs = [verb_object(t) for t in texts]
    verbs = Counter(v for v, _ in pairs if v)
    objects: dict[str, Counter] = {}
    for v, o in pairs:
        if v and o:
            objects.setdefault(v, Counter())[o] += 1
    return [(v, n, objects.get(v, Counter()).most_common(top_objects)) for v, n in verbs.most_common(top_verbs)]
