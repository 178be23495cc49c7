"""One client for any OpenAI-compatible teacher: the Completions or Chat Completions API, with retries.

    teacher = Teacher(TeacherConfig(base_url="https://api.openai.com/v1", model="gpt-4o-mini", api="chat"))
    teacher.check()                       # one-line TeacherUnreachable if the endpoint is down
    reply = teacher.complete(prompt)      # Completion(text, finish_reason, prompt_tokens, completion_tokens)

The API key is read from the environment variable named in the config (never stored in the config,
printed, logged or saved). Retries: 429, 5xx, connection errors, timeouts and malformed bodies are retried
with exponential backoff up to `max_retries` times, then `TeacherError` says what failed.
"""

from __future__ import annotations

import math
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# List prices in USD per 1M tokens (input, output), as published by OpenAI; check before trusting.
# text-davinci-003 (what Alpaca used, retired January 2024) cost $0.02 per 1K tokens both ways.
PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "text-davinci-003": (20.00, 20.00),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class TeacherError(RuntimeError):
    """A request failed for good (retries spent, or an error that retrying cannot fix)."""


class TeacherUnreachable(TeacherError):
    """The endpoint does not answer at all (checked once before a run starts)."""


class MalformedResponse(Exception):
    """The endpoint answered 200 with a body that is not a completion (retried like a 5xx)."""


class LogprobsUnavailable(TeacherError):
    """The endpoint answers but returns no token log-probabilities (`transformers serve` 5.x ignores the field)."""


@dataclass
class TeacherConfig:
    """Where the teacher is and how to decode. Defaults are Alpaca's (temperature 1, top_p 1)."""

    base_url: str
    model: str
    api: Literal["completions", "chat"] = "completions"
    api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable holding the key
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0  # Alpaca used 0; `transformers serve` maps it to repetition_penalty 1 + x
    max_tokens: int = 3072
    request_timeout: float = 600.0  # seconds for one request
    max_retries: int = 6
    backoff_initial: float = 1.0  # seconds before the first retry; doubled each time
    backoff_max: float = 60.0
    extra_body: dict[str, Any] | None = None  # server-specific request fields (see LocalServer.sampling_body)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy (holds no key: only the variable's name)."""
        return asdict(self)


@dataclass
class Completion:
    """One completion's text (stop string removed) and its token usage.

    `completion_tokens` counts the text returned, up to the stop string: what an API that honours stop strings
    returns and bills. `generated_tokens` is what the server decoded; it is larger when the server ran past the
    stop string (`transformers serve` with continuous batching ignores stop strings and decodes `max_tokens`).
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generated_tokens: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)  # what the retried attempts failed with
    top_logprobs: dict[str, float] | None = None  # the first reply token's alternatives, when asked for


def _top_logprobs(choice: Any, api: str) -> dict[str, float]:
    """{token: logprob} of the first generated token's top alternatives, from a chat or completions choice.

    No log-probabilities at all is `LogprobsUnavailable`; present but not well-formed is `MalformedResponse`.
    """
    found = getattr(choice, "logprobs", None)
    if api == "chat":
        content = getattr(found, "content", None) if found is not None else None
        if not content:
            raise LogprobsUnavailable("the endpoint returned no log-probabilities")
        pairs = [(getattr(t, "token", None), getattr(t, "logprob", None)) for t in (content[0].top_logprobs or [])]
    else:
        tops = getattr(found, "top_logprobs", None) if found is not None else None
        if not tops:
            raise LogprobsUnavailable("the endpoint returned no log-probabilities")
        if not isinstance(tops[0], dict):
            raise MalformedResponse("top_logprobs is not a list of objects")
        pairs = list(tops[0].items())
    out: dict[str, float] = {}
    for token, logprob in pairs:
        if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, (int, float)) \
                or not math.isfinite(logprob) or logprob > 1e-6:
            raise MalformedResponse(f"bad top log-probability {token!r}: {logprob!r}")
        out[token] = max(out.get(token, -math.inf), float(logprob))
    if not out:
        raise MalformedResponse("empty top log-probabilities")
    return out


def price_per_million(model: str, base_url: str = "") -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens for `model`; (0, 0) for a local server; None if unknown."""
    if any(h in base_url for h in LOCAL_HOSTS):
        return (0.0, 0.0)
    name = model.split("/")[-1].lower()
    # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs: longest prefix wins.
    for known in sorted(PRICES_PER_MILLION, key=len, reverse=True):
        if name == known or name.startswith(known + "-"):
            return PRICES_PER_MILLION[known]
    return None


def estimate_cost(model: str, prompt_tokens: int, completion_tokens: int, base_url: str = "") -> float | None:
    """Estimated USD cost of the given token counts, or None if the model's price is unknown."""
    prices = price_per_million(model, base_url)
    if prices is None:
        return None
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def format_usd(amount: float | None) -> str:
    """Dollars for reading: whole dollars from $100 up, cents below; "unknown" for None."""
    if amount is None:
        return "unknown"
    return f"${amount:,.0f}" if abs(amount) >= 100 else f"${amount:,.2f}"


def strip_stop(text: str, stop: list[str] | None) -> str:
    """Cut `text` at the first stop string (some servers, `transformers serve` included, return it)."""
    for s in stop or []:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text


def returned_tokens(generated: int, text: str, cut: str, count_tokens: Callable[[str], int] | None = None) -> int:
    """Tokens of `cut` (the reply up to the stop string) when the server decoded `generated` tokens of `text`.

    Counted with `count_tokens` (the model's tokenizer) when given, else estimated in proportion to the characters
    kept; never more than `generated`."""
    if cut == text:
        return generated
    if count_tokens is not None:
        return min(generated, count_tokens(cut))
    return min(generated, math.ceil(generated * len(cut) / max(len(text), 1)))


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, MalformedResponse)):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def _status(exc: BaseException) -> int | None:
    import openai

    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


def transport_error(exc: BaseException) -> str | None:
    """A short name for a failed request's transport error (timeout, HTTP status, connection), else None.

    Never the server's message: it may echo the key."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, openai.APIConnectionError):
        return "connection error"
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MalformedResponse):
        return f"malformed response ({exc})"
    return transport_error(exc) or type(exc).__name__


def _fatal_message(exc: BaseException, config: TeacherConfig) -> str:
    import openai

    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        # The server's message may echo part of the key: leave it out.
        return (f"teacher request failed ({_describe(exc)}): {config.base_url} rejected the API key read from "
                f"${config.api_key_env}")
    return f"teacher request failed ({_describe(exc)}): {str(exc)[:200]}"


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After header on a 429/503), if any."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Teacher:
    """A thread-safe client for one teacher endpoint (one `openai.OpenAI` client shared by all threads)."""

    def __init__(self, config: TeacherConfig, count_tokens: Callable[[str], int] | None = None) -> None:
        """`count_tokens` (the served model's tokenizer, e.g. `LocalServer.count_tokens()`) counts a reply that was
        cut at a stop string the server ran past; without it that count is estimated from the characters kept."""
        import openai

        self.config = config
        self._count_tokens = count_tokens
        # A local server needs no key; the openai client wants a non-empty one, so a placeholder goes there.
        key = os.environ.get(config.api_key_env) or "not-needed"
        self._client = openai.OpenAI(base_url=config.base_url, api_key=key, max_retries=0,
                                     timeout=config.request_timeout)

    def __repr__(self) -> str:  # never show the key
        return f"Teacher(base_url={self.config.base_url!r}, model={self.config.model!r}, api={self.config.api!r})"

    def check(self, timeout: float = 10.0) -> None:
        """Raise `TeacherUnreachable` (one line) if nothing answers HTTP at the endpoint.

        Any HTTP answer counts as reachable: servers differ in what they serve at `/models`
        (`transformers serve` answers 500 there).
        """
        url = self.config.base_url.rstrip("/") + "/models"
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout).close()
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TeacherUnreachable(f"teacher endpoint {self.config.base_url} is unreachable: {reason}") from None

    def close(self) -> None:
        self._client.close()

    def gives_logprobs(self) -> bool:
        """Whether the endpoint returns token log-probabilities (one short request)."""
        try:
            self.complete("Reply with 1 or 2.", top_logprobs=5)
        except LogprobsUnavailable:
            return False
        return True

    def _request(self, prompt: str, stop: list[str] | None, seed: int | None,
                 top_logprobs: int | None = None) -> Completion:
        cfg = self.config
        kwargs: dict[str, Any] = dict(model=cfg.model, temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_tokens=1 if top_logprobs else cfg.max_tokens)
        if top_logprobs:  # the chat API takes a flag and a count, the completions API the count alone
            kwargs.update(logprobs=True, top_logprobs=top_logprobs) if cfg.api == "chat" else \
                kwargs.update(logprobs=top_logprobs)
        if cfg.frequency_penalty:
            kwargs["frequency_penalty"] = cfg.frequency_penalty
        if stop:
            kwargs["stop"] = stop
        if seed is not None:
            kwargs["seed"] = seed
        if cfg.extra_body:
            kwargs["extra_body"] = cfg.extra_body
        try:
            if cfg.api == "chat":
                r = self._client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kwargs)
                choice = r.choices[0]
                text = choice.message.content
            else:
                r = self._client.completions.create(prompt=prompt, **kwargs)
                choice = r.choices[0]
                text = choice.text
            if not isinstance(text, str):
                raise TypeError("no text in the choice")
            usage = r.usage
            finish_reason = choice.finish_reason
            generated = getattr(usage, "completion_tokens", 0) or 0
            cut = strip_stop(text, stop)
            if cut != text:  # the server ran past the stop string (`transformers serve` with batching does)
                finish_reason = "stop"
            return Completion(text=cut, finish_reason=finish_reason,
                              prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                              completion_tokens=returned_tokens(generated, text, cut, self._count_tokens),
                              generated_tokens=generated,
                              top_logprobs=_top_logprobs(choice, cfg.api) if top_logprobs else None)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            # A 200 whose body is not JSON or not a completion (the client then hands back a str or an
            # object with missing fields): treat it like a server error.
            raise MalformedResponse(f"{type(e).__name__}: {str(e)[:80]}") from None

    def complete(self, prompt: str, stop: list[str] | None = None, seed: int | None = None,
                 top_logprobs: int | None = None) -> Completion:
        """One completion of `prompt`, retried with exponential backoff on transient failures.

        With `top_logprobs=k`, one token is generated and the reply carries its k most likely alternatives
        (`Completion.top_logprobs`); an endpoint that returns none raises `LogprobsUnavailable` at once.
        """
        errors: list[str] = []
        delay = self.config.backoff_initial
        for attempt in range(self.config.max_retries + 1):
            try:
                result = self._request(prompt, stop, seed, top_logprobs)
                result.retries, result.errors = attempt, errors
                return result
            except LogprobsUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - sorted into retryable or not right below
                if top_logprobs and _status(e) in (400, 422):  # a server that rejects the field outright
                    raise LogprobsUnavailable(f"{self.config.base_url} refused the logprobs field "
                                              f"({_describe(e)})") from None
                if not _retryable(e):
                    raise TeacherError(_fatal_message(e, self.config)) from None
                errors.append(_describe(e))
                if attempt == self.config.max_retries:
                    break
                wait = _retry_after(e)
                wait = min(self.config.backoff_max, wait if wait is not None else delay * (1 + random.random()))
                time.sleep(wait)
                delay = min(self.config.backoff_max, delay * 2)
        raise TeacherError(f"teacher request failed after {self.config.max_retries} retries "
                           f"(errors: {', '.join(errors)}); endpoint {self.config.base_url}")
