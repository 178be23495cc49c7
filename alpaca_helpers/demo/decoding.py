"""How an answer is decoded, as one object: sampling, length, beams, seed, stop markers and the watermark.

    greedy = Decoding(temperature=0, max_new_tokens=64)
    sampled = dataclasses.replace(greedy, temperature=0.7, seed=0)
    generate(model, tokenizer, "What is an alpaca?", decoding=sampled)

`Decoding()` holds the demo's defaults (notebook 05's sliders start there). `generate_kwargs` turns it into what
transformers' `generate` takes: a `GenerationConfig` (`to_generation_config`), the stop-marker criterion and the
watermark's logits processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .watermark import Watermark, WatermarkLogitsProcessor

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

# A model that runs on past its answer starts the next Alpaca example: the answer ends there.
STOP_MARKERS = ("### Instruction:", "### Input:", "### Response:")


@dataclass(frozen=True)
class Decoding:
    """The settings of one generation. `temperature` 0 means greedy (or plain beam search with `num_beams` > 1);
    `top_p`, `top_k` apply only when sampling (`top_k` 0: no cut); `seed` (None: not seeded) makes a sample
    repeatable; `min_new_tokens` keeps end-of-sequence away that long; `stop_at_markers` ends a row just after a
    stop marker; `watermark` adds the green-list watermark to every row."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    max_new_tokens: int = 256
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0
    stop_at_markers: bool = True
    watermark: Watermark | None = None

    def __post_init__(self) -> None:
        checks = [(self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
                  (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
                  (self.top_k >= 0, f"top_k must be >= 0 (0 = no cut), got {self.top_k}"),
                  (self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}"),
                  (self.num_beams >= 1, f"num_beams must be at least 1, got {self.num_beams}"),
                  (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
                  (self.min_new_tokens >= 0, f"min_new_tokens must be >= 0, got {self.min_new_tokens}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn at random (temperature above 0) rather than chosen greedily."""
        return self.temperature > 0

    def to_generation_config(self, tokenizer: Any) -> GenerationConfig:
        """These settings as transformers' `GenerationConfig` (padding with `padding_id(tokenizer)`)."""
        from transformers import GenerationConfig

        settings: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                                    "repetition_penalty": self.repetition_penalty,
                                    "pad_token_id": padding_id(tokenizer)}
        if self.min_new_tokens:
            settings["min_new_tokens"] = self.min_new_tokens
        if self.sampling:
            settings.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return GenerationConfig(**settings)

    def generate_kwargs(self, tokenizer: Any, prompt_length: int,
                        watermark_rows: Sequence[bool] | None = None) -> dict[str, Any]:
        """What `model.generate` takes for these settings, for prompts left-padded to `prompt_length` tokens:
        `generation_config`, and the stop-marker criterion and the watermark's processor when they apply.
        `watermark_rows` (one bool per prompt) watermarks only those rows."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        kwargs: dict[str, Any] = {"generation_config": self.to_generation_config(tokenizer)}
        if self.stop_at_markers:
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopAtMarkers(tokenizer, prompt_length)])
        if self.watermark is not None:
            mark = WatermarkLogitsProcessor(self.watermark, watermark_rows)
            kwargs["logits_processor"] = LogitsProcessorList([mark])
        return kwargs


def padding_id(tokenizer: Any) -> int:
    """The id padded positions hold: the pad token's, or eos's for a tokenizer without one (a base LLaMA-1/2,
    as huggyllama/llama-7b); the attention mask hides them either way."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class StopAtMarkers:
    """Stopping criterion for `generate`: a row is done once its generated text contains a stop marker.

    (transformers' own `stop_strings` does the same but rebuilds a vocabulary-wide table on every call, about
    1.5 s with this tokenizer; decoding the last few generated tokens of each row costs microseconds.)
    """

    window = 24  # tokens; every marker is shorter than this in characters

    def __init__(self, tokenizer: Any, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        import torch

        tails = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:][:, -self.window:],
                                            skip_special_tokens=True)
        return torch.tensor([any(m in t for m in STOP_MARKERS) for t in tails], device=input_ids.device)
