"""The demo's content filter: check an instruction before generating and the answer before showing it.

    content_filter = ContentFilter("offline", log_path="runs/05_generate/moderation.jsonl")
    verdict = content_filter.check("What is an alpaca?")          # Verdict(flagged=False, categories=[], ...)
    if verdict.flagged:
        print(refusal(verdict, "instruction"))                     # names the categories, never the text
    screened = screen(content_filter, instruction, "", lambda: generate(model, tokenizer, instruction))

Backends:
- "offline": glin-profanity's word lists (profanity, with leetspeak and Unicode tricks undone) and its prompt
  injection patterns; no network, no model download, no pickles. The course's default.
- "openai": the Moderation API (`client.moderations.create`) at any `base_url`, key from the environment
  variable named by `api_key_env` (the key is never stored, printed or logged).
- "guard": a guard model (Llama Guard and its kind, as vLLM serves them) asked through any OpenAI-compatible
  chat endpoint; the reply must be `safe`, or `unsafe` and a line of category codes (S1, S10, ...).
- "none": lets everything through (still logged).

A filter that fails (timeout, HTTP error, a reply it cannot parse) blocks with the category "filter unavailable";
`fail_open=True` lets the text through with a warning instead. Every decision is appended to `log_path` (JSONL:
time, backend, what was checked, flagged, categories, error): never the key, never the checked text.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from glin_profanity import Filter
from glin_profanity.scanners import PromptInjectionScanner

from ..files import append_durable, read_complete_jsonl
from ..self_instruct.teacher import transport_error

BACKENDS = ("offline", "openai", "guard", "none")
UNAVAILABLE = "filter unavailable"
# Llama Guard 3's hazard taxonomy (MLCommons): the codes a guard model answers with, and what they mean.
GUARD_CATEGORIES = {
    "S1": "violent crimes", "S2": "non-violent crimes", "S3": "sex-related crimes", "S4": "child sexual exploitation",
    "S5": "defamation", "S6": "specialized advice", "S7": "privacy", "S8": "intellectual property",
    "S9": "indiscriminate weapons", "S10": "hate", "S11": "suicide & self-harm", "S12": "sexual content",
    "S13": "elections", "S14": "code interpreter abuse",
}
# For a chat model that is not a guard model (its chat template does not build the guard prompt): the task in words.
GUARD_INSTRUCTIONS = (
    "Task: check whether there is unsafe content in the {role} message below according to these categories.\n"
    "{categories}\n\n<message>\n{text}\n</message>\n\n"
    "Answer with one word on the first line: safe or unsafe. If unsafe, list the violated category codes, "
    "comma-separated, on a second line."
)


class FilterUnavailable(RuntimeError):
    """The filter could not give a verdict (timeout, HTTP error, a reply that is not a verdict)."""


@dataclass(frozen=True)
class Verdict:
    """A filter's decision about one text. `error` says why the filter failed, if it did."""

    flagged: bool
    categories: list[str] = field(default_factory=list)
    backend: str = "none"
    error: str | None = None


def parse_guard_reply(reply: str) -> list[str]:
    """The violated categories in a guard model's reply ([] for `safe`); `FilterUnavailable` unless the reply is
    exactly `safe`, or `unsafe` and a line of known comma-separated codes."""
    lines = [line.strip() for line in (reply or "").strip().splitlines() if line.strip()]
    if lines == ["safe"]:
        return []
    if len(lines) == 2 and lines[0] == "unsafe":
        codes = [c.strip() for c in lines[1].split(",")]
        if codes and all(c in GUARD_CATEGORIES for c in codes):
            return [f"{c} {GUARD_CATEGORIES[c]}" for c in dict.fromkeys(codes)]
    # The reply itself stays out of the message (and so out of the log): it may quote the checked text.
    raise FilterUnavailable(f"the guard's reply is not a verdict ({len(lines)} lines, {len(reply or '')} characters)")


def _describe(exc: BaseException) -> str:
    """A short reason for a failed request (no server message: it may echo the key)."""
    if isinstance(exc, FilterUnavailable):
        return str(exc)
    return transport_error(exc) or f"malformed reply ({type(exc).__name__})"


class ContentFilter:
    """Check texts with one backend; log every decision; block (or, with `fail_open`, allow) when it fails."""

    def __init__(self, backend: str = "offline", *, base_url: str | None = None, model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 10.0, max_retries: int = 1,
                 fail_open: bool = False, log_path: str | os.PathLike | None = None,
                 guard_instructions: bool = False, languages: tuple[str, ...] = ("english",)):
        """`base_url`/`model`: the endpoint and model of the openai and guard backends (the openai backend's model
        defaults to the API's own). `guard_instructions`: spell the guard task out in the message, for a chat
        model whose template does not (a real guard model needs it off)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown content filter backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend in ("openai", "guard") and not base_url:
            raise ValueError(f"the {backend} backend needs a base_url")
        if backend == "guard" and not model:
            raise ValueError("the guard backend needs the guard model's name (model=...)")
        self.backend, self.base_url, self.model = backend, base_url, model
        self.api_key_env, self.timeout, self.max_retries = api_key_env, timeout, max_retries
        self.fail_open, self.log_path, self.guard_instructions = fail_open, log_path, guard_instructions
        self._client: Any = None
        self._offline: Any = None
        if backend == "offline":
            words = Filter({"languages": list(languages), "detect_leetspeak": True})
            self._offline = (words, PromptInjectionScanner())

    def __repr__(self) -> str:  # no key in here: only the variable's name
        return f"ContentFilter(backend={self.backend!r}, base_url={self.base_url!r}, model={self.model!r})"

    def check(self, text: str, *, prompt: str | None = None) -> Verdict:
        """Check `text`: an instruction, or (with `prompt`, the instruction it answers) a model's answer."""
        try:
            categories = self._categories(text, prompt)
            verdict = Verdict(bool(categories), categories, self.backend)
        except Exception as exc:  # every failure of the filter itself: never crash the demo over it
            reason = f"{UNAVAILABLE}: {_describe(exc)}"
            if self.fail_open:
                warnings.warn(f"content filter ({self.backend}) failed, letting the text through: {reason}",
                              stacklevel=2)
                verdict = Verdict(False, [], self.backend, reason)
            else:
                verdict = Verdict(True, [UNAVAILABLE], self.backend, reason)
        self._log(verdict, "answer" if prompt is not None else "instruction")
        return verdict

    def _categories(self, text: str, prompt: str | None) -> list[str]:
        if self.backend == "none":
            return []
        if self.backend == "offline":
            words, injection = self._offline
            found = ["profanity"] if words.is_profane(text) else []
            if injection.scan(text).decision.value == "BLOCK":
                found.append("prompt injection")
            return found
        if self.backend == "openai":
            return self._openai(text)
        return self._guard(text, prompt)

    def _openai_client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env) or "not-needed"  # a local endpoint needs none
            self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout,
                                         max_retries=self.max_retries)
        return self._client

    def _openai(self, text: str) -> list[str]:
        kwargs = {"model": self.model} if self.model else {}
        response = self._openai_client().moderations.create(input=text, **kwargs)
        results = getattr(response, "results", None)
        if not isinstance(results, list) or not results or not isinstance(results[0].flagged, bool):
            raise FilterUnavailable("the moderation reply has no result")
        result = results[0]
        categories = result.categories.model_dump(by_alias=True, exclude_none=True)
        named = [name for name, hit in categories.items() if hit is True]
        if result.flagged and not named:
            named = ["flagged"]
        return named if result.flagged else []

    def _guard(self, text: str, prompt: str | None) -> list[str]:
        if self.guard_instructions:
            listing = "\n".join(f"{code}: {name}" for code, name in GUARD_CATEGORIES.items())
            role = "assistant" if prompt is not None else "user"
            messages = [{"role": "user", "content": GUARD_INSTRUCTIONS.format(role=role, categories=listing,
                                                                              text=text)}]
        else:  # a guard model's chat template turns the conversation into its own prompt
            messages = ([{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
                        if prompt is not None else [{"role": "user", "content": text}])
        response = self._openai_client().chat.completions.create(model=self.model, messages=messages,
                                                                 temperature=0, max_tokens=20)
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or not isinstance(choices[0].message.content, str):
            raise FilterUnavailable("the guard reply has no message")
        return parse_guard_reply(choices[0].message.content)

    def _log(self, verdict: Verdict, checked: str) -> None:
        if self.log_path is None:
            return
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "checked": checked,
                  **asdict(verdict)}
        append_durable(self.log_path, json.dumps(record))


def refusal(verdict: Verdict, what: str = "instruction") -> str:
    """A short message for a blocked text: what was blocked and why, never the text itself."""
    if verdict.error and UNAVAILABLE in verdict.categories:
        return f"The content filter is unavailable ({verdict.error.split(': ', 1)[-1]}), so this {what} was blocked."
    return f"This {what} was blocked by the content filter ({verdict.backend}): {', '.join(verdict.categories)}."


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The decisions logged so far (a line torn by a crash is left out)."""
    return read_complete_jsonl(path)


@dataclass(frozen=True)
class Screened:
    """What a user gets to see: the answer, or a refusal (`blocked` then names what was blocked)."""

    shown: str
    verdict: Verdict
    blocked: str | None = None  # "instruction" or "answer"


def screen(content_filter: ContentFilter, instruction: str, input: str, produce: Callable[[], str]) -> Screened:
    """The demo's policy: check the instruction (with its input) before `produce()` generates the answer, then
    check the answer before it is shown. A blocked text is replaced by a refusal naming the categories."""
    request = f"{instruction}\n\n{input}" if input else instruction
    verdict = content_filter.check(request)
    if verdict.flagged:
        return Screened(refusal(verdict, "instruction"), verdict, "instruction")
    answer = produce()
    verdict = content_filter.check(answer, prompt=request)
    if verdict.flagged:
        return Screened(refusal(verdict, "answer"), verdict, "answer")
    return Screened(answer, verdict)
