"""Exact, fast ROUGE-L for Alpaca's near-duplicate filter.

Alpaca (and self-instruct) keep a generated instruction only if its ROUGE-L F-measure against every
seed and every already-kept instruction is at most 0.7, scored with `rouge_score` (pure Python, one
O(n*m) LCS table at a time). This module returns the *same numbers*, bit for bit:

- tokens come from the same rule as `rouge_score`'s default tokenizer (lowercase, every run of
  characters outside [a-z0-9] is a separator, no stemming);
- each distinct token is mapped to one Unicode character, so a token sequence becomes a short
  string and rapidfuzz's C++ bit-parallel LCS (`distance.LCSseq`) computes the LCS length of two
  instructions in a few machine words, across cores with `process.cdist`;
- the F-measure is then computed from the integer LCS length with the same float64 operations
  and the same order as `rouge_score` (precision, recall, 2*p*r/(p+r)), so scores compare with ==.

`filter_similar` adds exact pruning for the keep/reject decision (see `_ExceedTable`). A bag-of-words
bound (LCS <= size of the multiset intersection, used as a prefix filter over an inverted index) is
exact too, but measured 2.4x slower on the benchmark corpus: with the length band it must still
admit pairs sharing any of ~half of a candidate's words, and rapidfuzz scores a pair in ~50 ns, about
what looking it up costs. So it is not used.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import distance, process

THRESHOLD = 0.7  # Alpaca's and self-instruct's cut-off: keep when max ROUGE-L <= 0.7

# rouge_score.tokenize: text.lower(), then re.sub(r"[^a-z0-9]+", " "), split, keep tokens matching
# ^[a-z0-9]+$. That is exactly "the maximal runs of [a-z0-9] in the lowercased text". Lowercasing
# comes first on purpose: some non-ASCII letters lowercase to ASCII ones (e.g. the Kelvin sign
# U+212A -> "k", "İ" -> "i" + combining dot), and rouge_score counts those.
_TOKEN = re.compile(r"[a-z0-9]+")

_BLOCK = 256  # candidates scored per cdist call: bounds memory at _BLOCK x pool float64 values


def tokenize(text: str) -> list[str]:
    """Tokens exactly as `rouge_score`'s default tokenizer (no stemmer) produces them."""
    return _TOKEN.findall(text.lower())


def _fmeasure_scalar(lcs: int, len_target: int, len_prediction: int) -> float:
    """`rouge_score._score_lcs`'s arithmetic, operation for operation."""
    if not len_target or not len_prediction:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _fmeasure(lcs: np.ndarray, len_target: np.ndarray, len_prediction: np.ndarray) -> np.ndarray:
    """Vectorised `_fmeasure_scalar` (float64, same operations in the same order, so same bits)."""
    lcs = lcs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / len_prediction
        recall = lcs / len_target
        f = 2 * precision * recall / (precision + recall)
    return np.where(lcs > 0, f, 0.0)


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of `a` (target) and `b` (prediction), equal to
    `RougeScorer(["rougeL"], use_stemmer=False).score(a, b)["rougeL"].fmeasure`."""
    ta, tb = tokenize(a), tokenize(b)
    if not ta or not tb:
        return 0.0
    book = _Codebook([ta, tb])  # characters, not rapidfuzz's hashes of the tokens: no collisions
    return _fmeasure_scalar(distance.LCSseq.similarity(book.encode(ta), book.encode(tb)), len(ta), len(tb))


class _Codebook:
    """Maps each distinct token to one character, so token sequences become strings for rapidfuzz.

    LCS only asks whether two tokens are equal, so any injective token -> character map preserves
    it exactly. Frequent tokens get the smallest code points (rapidfuzz handles characters < 256
    with a plain lookup table, larger ones with a hash map); surrogates are skipped.
    """

    _MAX = 0x110000 - 0x800  # usable code points once the 2048 surrogates are skipped

    def __init__(self, token_lists: Sequence[Sequence[str]]):
        counts = Counter(t for tokens in token_lists for t in tokens)
        if len(counts) > self._MAX:
            raise ValueError(f"{len(counts)} distinct tokens: more than one character each can encode")
        self._code = {tok: self._char(i) for i, (tok, _) in enumerate(counts.most_common())}

    @staticmethod
    def _char(i: int) -> str:
        return chr(i if i < 0xD800 else i + 0x800)

    def encode(self, tokens: Sequence[str]) -> str:
        return "".join(self._code[t] for t in tokens)


def _encode_all(*groups: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
    """Tokenize and encode several groups of texts with one shared codebook: (codes, lengths) each."""
    token_groups = [[tokenize(t) for t in texts] for texts in groups]
    book = _Codebook([tokens for group in token_groups for tokens in group])
    return [
        ([book.encode(tokens) for tokens in group], np.array([len(t) for t in group], dtype=np.int64))
        for group in token_groups
    ]


def _lcs(queries: Sequence[str], choices: Sequence[str], workers: int) -> np.ndarray:
    """LCS lengths of every (query, choice) pair of encoded strings, as an int32 matrix."""
    if not len(queries) or not len(choices):
        return np.zeros((len(queries), len(choices)), dtype=np.int32)
    return process.cdist(
        queries, choices, scorer=distance.LCSseq.similarity, dtype=np.int32, workers=workers
    )


def rouge_l_matrix(
    targets: Sequence[str], predictions: Sequence[str], workers: int = -1
) -> np.ndarray:
    """ROUGE-L F-measures of every (target, prediction) pair: a float64 matrix, rows = targets."""
    (tc, tl), (pc, pl) = _encode_all(targets, predictions)
    out = np.zeros((len(tc), len(pc)), dtype=np.float64)
    for start in range(0, len(tc), _BLOCK):
        rows = slice(start, start + _BLOCK)
        out[rows] = _fmeasure(_lcs(tc[rows], pc, workers), tl[rows, None], pl[None, :])
    return out


@dataclass
class FilterResult:
    """Per-candidate outcome of `filter_similar_detailed` (all lists in candidate order).

    kept: whether the candidate passed (max ROUGE-L <= threshold).
    max_score: its highest ROUGE-L against everything it was compared with (0.0 if nothing).
    mean_score: its mean ROUGE-L over everything it was compared with (Alpaca's
        `avg_similarity_score`; 0.0 if nothing).
    neighbors: up to top_k (text, score) pairs, best first (ties: earlier instruction first).
    """

    kept: list[bool] = field(default_factory=list)
    max_score: list[float] = field(default_factory=list)
    mean_score: list[float] = field(default_factory=list)
    neighbors: list[list[tuple[str, float]]] = field(default_factory=list)


def filter_similar_detailed(
    candidates: Sequence[str],
    existing: Sequence[str],
    threshold: float = THRESHOLD,
    top_k: int = 10,
    workers: int = -1,
) -> FilterResult:
    """Alpaca's incremental ROUGE-L filter, with each candidate's scores and nearest neighbours.

    Candidates are taken in order; each is compared (as the ROUGE target, as in Alpaca) with
    `existing` plus the candidates kept before it, and kept when its maximum score is <= threshold.
    Every pair is scored exactly (the mean needs all of them); `filter_similar` is faster when only
    the decision is needed.
    """
    _check_threshold(threshold)
    candidates, existing = list(candidates), list(existing)
    (cc, cl), (ec, el) = _encode_all(candidates, existing)
    pool_codes, pool_lens, pool_texts = list(ec), list(el), list(existing)
    result = FilterResult()
    for start in range(0, len(cc), _BLOCK):
        stop = min(start + _BLOCK, len(cc))
        lens = cl[start:stop]
        # Scores against the pool as it stands when the block starts ...
        f_pool = _fmeasure(_lcs(cc[start:stop], pool_codes, workers), lens[:, None],
                           np.asarray(pool_lens, dtype=np.int64)[None, :])
        # ... and against the block itself, for candidates kept earlier in the same block.
        f_block = _fmeasure(_lcs(cc[start:stop], cc[start:stop], workers), lens[:, None], lens[None, :])
        pool_max = f_pool.max(axis=1, initial=0.0)
        pool_sum = f_pool.sum(axis=1)
        kept_in_block: list[int] = []
        for j in range(stop - start):
            own = f_block[j, kept_in_block]
            count = f_pool.shape[1] + own.size
            best = max(float(pool_max[j]), float(own.max(initial=0.0)))
            keep = best <= threshold
            result.kept.append(keep)
            result.max_score.append(best)
            result.mean_score.append(float(pool_sum[j] + own.sum()) / count if count else 0.0)
            if top_k > 0:
                result.neighbors.append([
                    (pool_texts[i] if i < len(pool_texts)
                     else candidates[start + kept_in_block[i - len(pool_texts)]], s)
                    for i, s in _top_k(np.concatenate([f_pool[j], own]), top_k)
                ])
            else:
                result.neighbors.append([])
            if keep:
                kept_in_block.append(j)
        for j in kept_in_block:
            pool_codes.append(cc[start + j])
            pool_lens.append(int(cl[start + j]))
            pool_texts.append(candidates[start + j])
    return result


def _check_threshold(threshold: float) -> None:
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")


def _top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best (index, score) pairs, best first, earlier index first among ties."""
    if k <= 0 or not scores.size:
        return []
    if scores.size > k:  # avoid a full sort: everything above the k-th best, then the earliest ties
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        above = np.flatnonzero(scores > kth)
        ties = np.flatnonzero(scores == kth)[: k - above.size]
        idx = np.concatenate([above, ties])
    else:
        idx = np.arange(scores.size)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    return [(int(i), float(scores[i])) for i in order]


def filter_similar(
    candidates: Sequence[str],
    existing: Sequence[str],
    threshold: float = THRESHOLD,
    workers: int = -1,
) -> list[bool]:
    """Alpaca's incremental ROUGE-L filter: for each candidate, whether it is kept.

    Same decisions as `filter_similar_detailed` (which also gives scores and neighbours), but only
    the pairs that *could* exceed the threshold are scored (exact pruning, see `_ExceedTable`).
    """
    _check_threshold(threshold)
    candidates = list(candidates)
    (cc, cl), (ec, el) = _encode_all(candidates, existing)
    table = _ExceedTable(threshold)
    pool: dict[int, list[str]] = {}  # the kept pool bucketed by token length
    for code, n in zip(ec, el.tolist()):
        pool.setdefault(n, []).append(code)
    kept: list[bool] = []
    for start in range(0, len(cc), _MASK_BLOCK):
        codes, lens = cc[start:start + _MASK_BLOCK], cl[start:start + _MASK_BLOCK].tolist()
        hit = _hits_against_pool(codes, lens, pool, table, workers)
        # Within the block, order matters: a candidate also meets the block's earlier kept ones.
        exceed = _lcs(codes, codes, workers) >= table.cutoff_matrix(lens, lens)
        kept_mask = np.zeros(len(codes), dtype=bool)
        for j in range(len(codes)):
            keep = not (hit[j] or (exceed[j] & kept_mask).any())
            kept.append(keep)
            if keep:
                kept_mask[j] = True
                pool.setdefault(lens[j], []).append(codes[j])
    return kept


_MASK_BLOCK = 1024  # candidates per block in `filter_similar` (the pool is fixed within a block)


class _ExceedTable:
    """For token lengths (la, lb): the smallest LCS length whose ROUGE-L exceeds the threshold.

    Exactness: F = 2*P*R/(P+R) with P = L/lb, R = L/la is 2L/(la+lb), strictly increasing in L by
    steps of 2/(la+lb), far above float rounding, so "F > t" is exactly "L >= min_lcs(la, lb)". We
    find that integer by evaluating the same float64 formula as rouge_score (no algebra shortcuts),
    so the integer test reproduces the float comparison bit for bit.

    Length bound: L <= min(la, lb), so when min_lcs(la, lb) > min(la, lb) no pair of these lengths
    can exceed the threshold and need not be scored at all (for t = 0.7: lb/la outside about
    0.54..1.86).
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._cache: dict[tuple[int, int], int] = {}

    def min_lcs(self, la: int, lb: int) -> int:
        key = (la, lb)
        if key not in self._cache:
            top = min(la, lb)
            guess = int(self.threshold * (la + lb) / 2)
            lcs = max(guess - 2, 0)
            while lcs <= top and _fmeasure_scalar(lcs, la, lb) <= self.threshold:
                lcs += 1
            self._cache[key] = lcs  # top + 1 means "impossible"
        return self._cache[key]

    def cutoff_matrix(self, la: list[int], lb: list[int]) -> np.ndarray:
        """`min_lcs` for every (la[i], lb[j]) pair, as an int matrix."""
        ua, ia = np.unique(np.asarray(la, dtype=np.int64), return_inverse=True)
        ub, ib = np.unique(np.asarray(lb, dtype=np.int64), return_inverse=True)
        small = np.array([[self.min_lcs(int(a), int(b)) for b in ub] for a in ua], dtype=np.int64)
        return small.reshape(len(ua), len(ub))[ia.reshape(-1)[:, None], ib.reshape(-1)[None, :]]

    def possible(self, la: int, lb: int) -> bool:
        return self.min_lcs(la, lb) <= min(la, lb)


def _hits_against_pool(
    codes: list[str], lens: list[int], pool: dict[int, list[str]], table: _ExceedTable, workers: int
) -> list[bool]:
    """For each encoded candidate, whether some pool entry's ROUGE-L with it exceeds the threshold.

    Candidates are grouped by length; each group is scored only against the pool lengths the
    length bound leaves possible, and each column compared with its own exact LCS cut-off.
    """
    hit = [False] * len(codes)
    groups: dict[int, list[int]] = {}
    for j, n in enumerate(lens):
        groups.setdefault(n, []).append(j)
    for la, members in groups.items():
        lengths = [lb for lb in pool if table.possible(la, lb)]
        if not lengths:
            continue
        choices = [c for lb in lengths for c in pool[lb]]
        cutoffs = np.concatenate([np.full(len(pool[lb]), table.min_lcs(la, lb)) for lb in lengths])
        lcs = process.cdist(
            [codes[j] for j in members], choices, scorer=distance.LCSseq.similarity,
            dtype=np.int32, workers=workers, score_cutoff=int(cutoffs.min()),
        )  # below score_cutoff rapidfuzz reports 0 (and may stop early), still < every cut-off
        for j, row_hit in zip(members, (lcs >= cutoffs[None, :]).any(axis=1).tolist()):
            hit[j] = row_hit
    return hit


def max_similarity(texts: Sequence[str], workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Each text's highest ROUGE-L to any *other* text of the list, and that text's index.

    This is the self-instruct paper's diversity measure (its histogram of max ROUGE-L). A text
    repeated in the list scores 1.0 against its copy. With fewer than two texts: 0.0 and -1.
    Ties go to the earliest index.
    """
    (codes, lens), = _encode_all(texts)
    best = np.zeros(len(codes), dtype=np.float64)
    where = np.full(len(codes), -1, dtype=np.int64)
    if len(codes) < 2:
        return best, where
    for start in range(0, len(codes), _BLOCK):
        stop = min(start + _BLOCK, len(codes))
        f = _fmeasure(_lcs(codes[start:stop], codes, workers), lens[start:stop, None], lens[None, :])
        f[np.arange(stop - start), np.arange(start, stop)] = -1.0  # not against itself
        where[start:stop] = f.argmax(axis=1)
        best[start:stop] = f[np.arange(stop - start), where[start:stop]]
    return best, where


def closest_pairs(
    best: np.ndarray, where: np.ndarray, top: int = 10
) -> list[tuple[int, int, float]]:
    """The `top` most similar distinct pairs (i, j, score), i < j, from `max_similarity`'s output."""
    pairs: dict[tuple[int, int], float] = {}
    for i in np.argsort(-best, kind="stable"):
        j = int(where[i])
        if j >= 0:
            pairs.setdefault((min(int(i), j), max(int(i), j)), float(best[i]))
        if len(pairs) >= top:
            break
    return [(i, j, s) for (i, j), s in pairs.items()]
