"""The green-list soft watermark of Kirchenbauer et al. (2023), "A Watermark for Large Language Models".

At every step the previous token and a secret key pick a pseudorandom "green" fraction `gamma` of the
vocabulary, and `delta` is added to the green tokens' logits before sampling. Anyone holding the key can count
how many tokens of a text are green: without the watermark about `gamma` of them are, with it many more, and
the one-proportion z-test turns that count into a z-score and a p-value.

One deliberate difference from the paper's reference code: instead of seeding a random permutation of the
vocabulary with hash(key, previous token) at every step, each (previous, candidate) token pair is hashed with
the key and the candidate is green when the hash falls in the lowest `gamma` of its range. Each candidate is
then green with probability `gamma` independently, so the detector's statistics are unchanged, and the whole
vocabulary is scored in a few vectorized integer operations (a seeded `randperm` of 49,152 tokens costs
milliseconds per row and step on a CPU).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_MIX = np.uint32(0x45D9F3B)

# Below this many scored tokens a missing detection says nothing: the default model's watermarked answers are not
# yet reliably found. Measured 2026-12-05 with `python benchmarks/bench_watermark_reach.py --threads 1` (float32, the
# key, gamma 0.25 and delta 2 above, the demo's sampling defaults, seed 0; the 44 evaluation instructions without
# input, answers up to 200 new tokens): z > 4 in 5%, 17%, 45%, 70% of marked answers at 8, 16, 32, 48 scored tokens,
# in 14/14 at 64 (and all longer ones); no unmarked answer above 4 at any length (20 reached 64).
MIN_WATERMARK_TOKENS = 64


def _mix32(x: np.ndarray) -> np.ndarray:
    """A well-known 32-bit integer hash (two xorshift-multiply rounds); uint32 arithmetic wraps mod 2**32."""
    x = ((x >> np.uint32(16)) ^ x) * _MIX
    x = ((x >> np.uint32(16)) ^ x) * _MIX
    return (x >> np.uint32(16)) ^ x


@dataclass(frozen=True)
class Watermark:
    """A watermark's secret key and strength: `gamma` is the green fraction, `delta` the logit bonus."""

    key: str = "alpaca-course"
    gamma: float = 0.25
    delta: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")

    @property
    def _key32(self) -> int:
        return int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:4], "little")

    def is_green(self, previous: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Whether each candidate token is green after each previous token (the two broadcast together)."""
        with np.errstate(over="ignore"):
            h = _mix32(np.asarray(previous, dtype=np.uint32) ^ np.uint32(self._key32))
            h = _mix32(h ^ np.asarray(candidates, dtype=np.uint32))
        return h < np.uint32(int(self.gamma * 2**32))


class WatermarkLogitsProcessor:
    """Adds `delta` to the logits of the green list chosen by each row's last token (pass it to `generate` in its
    `logits_processor` list, which takes any such callable).

    `rows` (one bool per batch row) marks only some rows, so that watermarked and plain answers of the same
    prompts come from one batched `generate` call; by default every row is marked."""

    def __init__(self, watermark: Watermark, rows: Sequence[bool] | None = None):
        import torch

        self.watermark = watermark
        self.rows = None if rows is None else torch.tensor([bool(r) for r in rows])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        # numpy on the CPU: torch's small integer kernels are slow there (and fight for threads on busy machines)
        previous = input_ids[:, -1:].cpu().numpy()
        green = torch.from_numpy(self.watermark.is_green(previous, np.arange(scores.shape[-1])[None, :]))
        if self.rows is not None:
            if len(self.rows) != green.shape[0]:
                raise ValueError(f"rows marks {len(self.rows)} rows, the batch has {green.shape[0]}")
            green &= self.rows[:, None]
        return scores + self.watermark.delta * green.to(scores.device, scores.dtype)


@dataclass(frozen=True)
class Detection:
    """The detector's verdict on one text."""

    z: float
    p_value: float
    n_scored: int
    n_green: int
    detected: bool

    def __str__(self) -> str:
        verdict = "watermarked" if self.detected else "no watermark"
        return f"z = {self.z:.2f}, p = {self.p_value:.2g} ({self.n_green}/{self.n_scored} green): {verdict}"


def verdict_text(found: Detection, min_tokens: int = MIN_WATERMARK_TOKENS) -> str:
    """The detector's line for people: `str(found)`, except that a text with fewer than `min_tokens` scored tokens
    that is not flagged is called too short rather than unwatermarked (a flag stands: its z-score is evidence)."""
    if found.detected or found.n_scored >= min_tokens:
        return str(found)
    return (f"z = {found.z:.2f} ({found.n_green}/{found.n_scored} green): too short to carry a watermark "
            f"({found.n_scored} tokens; detection needs about {min_tokens})")


def z_score(n_green: int, n_scored: int, gamma: float) -> float:
    """One-proportion z-test of `n_green` green tokens out of `n_scored` against the expected `gamma`."""
    if n_scored == 0:
        return 0.0
    return (n_green - gamma * n_scored) / math.sqrt(n_scored * gamma * (1 - gamma))


def detect_ids(token_ids: Sequence[int] | np.ndarray | torch.Tensor, watermark: Watermark, z_threshold: float = 4.0,
               ignore_repeated_bigrams: bool = True, min_tokens: int = 25) -> Detection:
    """Score a token sequence: every token after the first is checked against its predecessor's green list.

    With `ignore_repeated_bigrams` each (previous, token) pair counts once, so a phrase a small model repeats
    in a loop cannot push the z-score of unwatermarked text up (the paper's "repeated n-gram" option). Texts
    with fewer than `min_tokens` scored tokens are never flagged: there the normal approximation behind the
    z-test fails (9 green of 12 already gives z = 4).
    """
    ids = np.asarray(token_ids, dtype=np.int64).ravel()
    pairs = np.stack([ids[:-1], ids[1:]], axis=1) if ids.size > 1 else np.zeros((0, 2), dtype=np.int64)
    if ignore_repeated_bigrams and len(pairs):
        pairs = np.unique(pairs, axis=0)
    n_scored = len(pairs)
    n_green = int(watermark.is_green(pairs[:, 0], pairs[:, 1]).sum()) if n_scored else 0
    z = z_score(n_green, n_scored, watermark.gamma)
    p_value = 0.5 * math.erfc(z / math.sqrt(2))  # one-sided: P(Z >= z) under "no watermark"
    return Detection(z=z, p_value=p_value, n_scored=n_scored, n_green=n_green,
                     detected=z > z_threshold and n_scored >= min_tokens)


def detect(text: str, tokenizer, watermark: Watermark, z_threshold: float = 4.0,
           ignore_repeated_bigrams: bool = True, min_tokens: int = 25) -> Detection:
    """Tokenize `text` (without special tokens) and score it with `detect_ids`: the z-score and p-value."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return detect_ids(ids, watermark, z_threshold, ignore_repeated_bigrams, min_tokens)
