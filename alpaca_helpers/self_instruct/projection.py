"""What a self-instruct run costs at Alpaca's scale: its measured rates projected to 52,002 instructions, and why a
laptop run's projection is far above Alpaca's reported < $500."""

from __future__ import annotations

import math

from .teacher import TeacherConfig, estimate_cost, format_usd
from .teacher_run import RunResult

ALPACA_SIZE = 52_002  # records in Stanford Alpaca's alpaca_data.json
ALPACA_TASKS_PER_REQUEST = 20
ALPACA_REPORTED_USD = 500  # "less than $500" of OpenAI API calls (Alpaca's blog post)
ALPACA_TEACHER = "text-davinci-003"


def projection(result: RunResult, teacher: TeacherConfig, size: int = ALPACA_SIZE,
               concurrency: int = 1) -> dict[str, float | None]:
    """Scale the measured rates of `result` to `size` kept instructions (Alpaca: 52,002)."""
    if not result.kept or not result.requests:
        return {"instructions": size, "requests": None, "prompt_tokens": None, "completion_tokens": None,
                "cost_usd": None, "hours": None}
    per_kept = size / result.kept
    prompt_tokens = result.prompt_tokens * per_kept
    completion_tokens = result.completion_tokens * per_kept
    return {"instructions": size, "requests": round(result.requests * per_kept),
            "prompt_tokens": round(prompt_tokens), "completion_tokens": round(completion_tokens),
            "cost_usd": estimate_cost(teacher.model, int(prompt_tokens), int(completion_tokens), teacher.base_url),
            "hours": result.wall_seconds * per_kept / 3600, "concurrency": concurrency}


def projection_at(result: RunResult, tasks_per_request: int, tasks_asked: int, size: int = ALPACA_SIZE,
                  kept_share: float = 1.0) -> dict[str, float] | None:
    """Requests and tokens for `size` instructions asking `tasks_per_request` tasks per request (Alpaca: 20).

    Scaled from `result` (which asked `tasks_asked` per request): its mean prompt tokens per request (the prompt
    barely changes with the number asked for) and its returned completion tokens per task asked; a share
    `kept_share` of the tasks asked is assumed kept (1.0: every one, the cheapest case). None without requests.
    """
    if not result.requests or tasks_asked < 1 or not 0 < kept_share <= 1:
        return None
    requests = math.ceil(size / (tasks_per_request * kept_share))
    prompt_per_request = result.prompt_tokens / result.requests
    completion_per_task = result.completion_tokens / (result.requests * tasks_asked)
    return {"instructions": size, "tasks_per_request": tasks_per_request, "kept_share": kept_share,
            "requests": requests, "prompt_tokens": round(requests * prompt_per_request),
            "completion_tokens": round(requests * tasks_per_request * completion_per_task),
            "prompt_tokens_per_request": prompt_per_request, "completion_tokens_per_task": completion_per_task}


def cost_note(result: RunResult, tasks_asked: int, size: int = ALPACA_SIZE) -> str:
    """Why a laptop run's projected cost is far above Alpaca's reported < $500, in two sentences with this run's
    numbers and the same projection at Alpaca's 20 tasks per request (see `projection_at`)."""
    at_20 = projection_at(result, ALPACA_TASKS_PER_REQUEST, tasks_asked, size)
    if not result.kept or at_20 is None:
        return "No instruction was kept, so nothing can be projected: raise max_requests and run again."
    per_request = result.kept / result.requests
    usd = estimate_cost(ALPACA_TEACHER, at_20["prompt_tokens"], at_20["completion_tokens"]) or 0.0
    first = (f"Why this is not Alpaca's < ${ALPACA_REPORTED_USD}: this run asked for {tasks_asked} task(s) per "
             f"request and kept {result.kept} from {result.requests} requests ({per_request:.2f} per request), so "
             f"every kept instruction paid for {1 / per_request:.1f} prompts of "
             f"{at_20['prompt_tokens_per_request']:,.0f} tokens.")
    second = (f"Alpaca asked for {ALPACA_TASKS_PER_REQUEST} per request: with this prompt and "
              f"{at_20['completion_tokens_per_task']:.0f} reply tokens per task, {size:,} instructions take "
              f"{at_20['requests']:,} requests and cost {format_usd(usd)} on {ALPACA_TEACHER} if every task is kept")
    if usd < ALPACA_REPORTED_USD:
        second += (f"; Alpaca's < ${ALPACA_REPORTED_USD} leaves room for keeping as few as "
                   f"{usd / ALPACA_REPORTED_USD:.0%} of them.")
    else:
        second += f", already above ${ALPACA_REPORTED_USD}: Alpaca's prompts or tasks were shorter than these."
    return f"{first} {second}"
