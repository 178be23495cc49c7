"""The judge model: the one judge loop, the judge in this process, and the pairwise judge read from its text.

`judge_each` runs any judge over items with a `Teacher` (any OpenAI-compatible endpoint) or a `LocalJudge`
(a model in this process, read through its next-token log-probabilities), and counts its usage. The pairwise
judge is asked in both orders (`judge_item`, `run_judge`); its outcome cancels position bias
(`combine_orders`). The judge read from its log-probabilities is in `weighted_judge`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from ..demo.decoding import Decoding
from ..demo.generate import generate_tokens
from ..self_instruct.teacher import Completion, estimate_cost
from ..train.tokenize import encode_prompt
from .outcomes import LOSS, TIE, UNPARSED, WIN

TOP_LOGPROBS = 20  # alternatives asked for (OpenAI's maximum); both verdict tokens are among them in practice
JudgeRun = tuple[list[dict[str, Any]], dict[str, Any]]  # per-item results and the usage of one judge run


def _count_usage(usage: dict[str, Any], reply: Any) -> None:
    """Add one request's tokens to a judge run's usage counts."""
    usage["requests"] += 1
    usage["prompt_tokens"] += reply.prompt_tokens
    usage["completion_tokens"] += reply.completion_tokens


def judge_each(judge: Any, items: Sequence[Mapping[str, Any]],
               judge_one: Callable[[Callable[[str], Any], Mapping[str, Any]], dict[str, Any]], desc: str,
               top_logprobs: int | None = None, progress: bool = True) -> JudgeRun:
    """The one judge loop: `judge_one(ask, item)` for every item, with a `Teacher` or a `LocalJudge`.

    `ask(prompt)` returns the judge's reply text, or with `top_logprobs` its first reply token's alternatives.
    Returns the per-item results (each with the item's id) and the usage: requests, tokens and the estimated
    dollar cost from the teacher's price table (0 in this process, None for unknown models).
    """
    usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def ask(prompt: str) -> Any:
        reply = judge.complete(prompt, top_logprobs=top_logprobs)
        _count_usage(usage, reply)
        return reply.top_logprobs if top_logprobs else reply.text

    results = [{"id": item["id"], **judge_one(ask, item)} for item in tqdm(items, desc=desc, disable=not progress)]
    if isinstance(judge, LocalJudge):
        usage["cost_usd"] = 0.0
    else:
        cfg = judge.config
        usage["cost_usd"] = estimate_cost(cfg.model, usage["prompt_tokens"], usage["completion_tokens"], cfg.base_url)
    return results, usage


class LocalJudge:
    """A judge model run in this process, read through its next-token log-probabilities.

    `transformers serve` (5.x) ignores the `logprobs` request field, so a judge served locally can only be
    read through its text. Here the same model scores the prompt directly: its chat template (if any) with
    the generation prompt, one forward pass, and the top alternatives for the first reply token, the same
    shape an OpenAI endpoint returns. `complete` answers like a `Teacher`, so every judge loop takes either.
    """

    def __init__(self, model: Any, tokenizer: Any, top: int = TOP_LOGPROBS, max_new_tokens: int = 16) -> None:
        self.model, self.tokenizer, self.top, self.max_new_tokens = model, tokenizer, top, max_new_tokens
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def complete(self, prompt: str, top_logprobs: int | None = None) -> Any:
        """A `Teacher`-shaped reply (`Completion`): the first reply token's top alternatives with `top_logprobs`,
        else the greedy reply text of at most `max_new_tokens` tokens."""
        prompt_tokens = len(self._ids(prompt))
        if top_logprobs:
            return Completion(text="", finish_reason="length", prompt_tokens=prompt_tokens,
                              top_logprobs=self.top_logprobs(prompt))
        greedy = Decoding(temperature=0.0, max_new_tokens=self.max_new_tokens, stop_at_markers=False)
        tokens = generate_tokens(self.model, self.tokenizer, [self._ids(prompt)], decoding=greedy)[0]
        return Completion(text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), finish_reason=None,
                          prompt_tokens=prompt_tokens, completion_tokens=len(tokens))

    def _ids(self, prompt: str) -> list[int]:
        """The judge prompt's ids as training encodes a prompt: in the chat template when the model has one."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return encode_prompt(self.tokenizer, text, "chat")
        return encode_prompt(self.tokenizer, prompt)

    def top_logprobs(self, prompt: str) -> dict[str, float]:
        """{token text: log-probability} of the `top` likeliest first reply tokens."""
        return self.top_logprobs_batch([prompt])[0]

    def top_logprobs_batch(self, prompts: Sequence[str]) -> list[dict[str, float]]:
        """`top_logprobs` of several prompts in one forward pass (left-padded; one prompt: no padding)."""
        import torch

        ids = [self._ids(p) for p in prompts]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device), logits_to_keep=1).logits[:, -1]
        values, indices = torch.log_softmax(logits.float(), dim=-1).topk(self.top)
        self.usage["requests"] += len(ids)
        self.usage["prompt_tokens"] += sum(map(len, ids))
        rows = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            out: dict[str, float] = {}
            for value, index in zip(row_values, row_indices):
                token = self.tokenizer.decode([index])
                out[token] = max(out.get(token, -math.inf), value)
            rows.append(out)
        return rows


# ---------------------------------------------------------------------------------------------------------
# The pairwise judge read from its text

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


def run_judge(judge: Any, items: Sequence[Mapping[str, Any]], progress: bool = True) -> JudgeRun:
    """Judge every item ({id, instruction, input, model_answer, reference_answer}) in both orders from the judge's
    text. Returns per-item results (id, outcome, verdicts, raw replies) and the usage (`judge_each`)."""
    def one(ask: Callable[[str], str], item: Mapping[str, Any]) -> dict[str, Any]:
        return judge_item(ask, item["instruction"], item.get("input", ""), item["model_answer"],
                          item["reference_answer"])

    return judge_each(judge, items, one, "judge (both orders)", progress=progress)
