"""How a model takes each prompt format: one forward pass over reference answers, prompted either way.

An instruct model was tuned in its own chat format. `format_fit` asks how well each format fits it: how likely
the reference answers are under the model, and how much probability it puts on ending its turn inside them,
with the same tokenization and masking as training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .tokenize import IGNORE_INDEX, tokenize_example


def format_fit(model: Any, tokenizer: Any, records: Sequence[Mapping[str, Any]], prompt_format: str,
               max_length: int = 512) -> dict[str, float]:
    """Under `prompt_format`: the mean loss per trained token of the records' outputs (nats; lower = the model
    expects these answers), and the mean probability of eos at the output's positions before its last
    (higher = the model would rather stop mid-answer). Records too long for `max_length` are skipped."""
    import torch

    losses, stop_mass, counted = 0.0, 0.0, 0
    for record in records:
        example = tokenize_example(record, tokenizer, max_length=max_length, prompt_format=prompt_format)
        if example is None:
            continue
        ids = torch.tensor([example["input_ids"]])
        labels = torch.tensor(example["labels"][1:])
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        trained = labels != IGNORE_INDEX
        losses += float(-logprobs[trained].gather(1, labels[trained, None]).mean())
        inside = trained.nonzero().flatten()[:-1]  # the answer's positions, without the one that predicts eos
        if len(inside):
            stop_mass += float(logprobs[inside, tokenizer.eos_token_id].exp().mean())
        counted += 1
    if not counted:
        raise ValueError(f"no record fits max_length {max_length}")
    return {"loss": losses / counted, "eos_probability": stop_mass / counted, "records": counted}
