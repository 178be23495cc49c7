"""Reading notebook 08's safety dose: the note printed under its table when no arm refuses anything.

A dose arm adds k safety records to the pool (`understand.arms.mix_count`); at equal steps it sees about
examples_seen × k / records of them. On 2 CPU cores that is a handful of safety examples for a model that is
already instruction-tuned, and XSTest's unsafe prompts are politely worded: refusal can stay at 0 in every arm.
That is a result of the scale, not a broken measurement, and the note says so next to the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def safety_examples_seen(row: Mapping[str, Any], pool_records: int) -> float:
    """About how many safety examples one arm × seed trained on: its examples seen × its share of safety records."""
    extra = max(0, int(row["records"]) - pool_records)
    return row["examples_seen"] * extra / row["records"] if row["records"] else 0.0


def zero_refusal_note(rows: Sequence[Mapping[str, Any]], baseline: str, unsafe_prompts: int) -> str | None:
    """A note for the dose's output when every arm × seed refused none of its `unsafe_prompts` XSTest prompts
    (None when some refusal was measured, or XSTest was not): why, and what a full-scale run shows."""
    refusal = [r["metrics"].get("xstest_refusal") for r in rows]
    if not rows or any(v is None or v > 0 for v in refusal):
        return None
    pool = next(int(r["records"]) for r in rows if r["arm"] == baseline)
    most = max(rows, key=lambda r: safety_examples_seen(r, pool))
    seen = safety_examples_seen(most, pool)
    seeds = len({r["seed"] for r in rows})
    return (f"Note: refusal is 0 in every arm (0 of {unsafe_prompts} unsafe XSTest prompts refused, per arm and "
            f"seed, {seeds} seed{'s' if seeds != 1 else ''}). That is the laptop scale, not a broken measurement: "
            f"the largest dose ({most['arm']}) trained on about {seen:.0f} safety examples in {most['steps']} steps, "
            "too few to change an already instruction-tuned 135M model, and XSTest's unsafe prompts are politely "
            "worded. Bianchi et al. added a few hundred safety examples (about 3%) to 20,000 Alpaca examples for "
            "LLaMA-7B, trained for epochs, and refusal of harmful requests rose markedly; more steps (budget_steps) "
            "or the alpaca_7b_safety preset on GPUs are what move the left panel.")
