"""The request loop of a resumable teacher run: requests in a thread pool, replies processed in order of arrival."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from tqdm.auto import tqdm


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of request `index` of a run seeded with `seed` (the same on every resume)."""
    return random.Random(f"{seed}:{index}").randrange(2**31)


Reply = TypeVar("Reply")


def run_requests(ask: Callable[[int], Reply], process: Callable[[Reply, int], int], target: int, *, kept: int,
                 next_index: int, concurrency: int = 1, max_requests: int | None = None, progress: bool = True,
                 status: Callable[[], dict[str, Any]] | None = None) -> float:
    """The request loop of a resumable teacher run, until `target` items are kept or requests run out.

    `ask(index)` runs in a thread pool (`concurrency` in flight, `max_requests` at most this session) and
    returns a reply; `process(reply, room)` runs in this thread, checkpoints what it keeps (at most `room`)
    and returns how many. `kept` and `next_index` say where an earlier session stopped; `status()` gives the
    progress bar's postfix. Returns the `time.perf_counter()` at the end; on an error or Ctrl-C requests
    still in flight are abandoned (their replies were never checkpointed, so a resume asks again).
    """
    submitted = 0
    bar = tqdm(total=target, initial=min(kept, target), desc="kept", unit="instr", disable=not progress,
               dynamic_ncols=True)
    finished_at = None
    executor = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="teacher")
    pending: set[Future] = set()
    try:
        while kept < target:
            while len(pending) < concurrency and (max_requests is None or submitted < max_requests):
                pending.add(executor.submit(ask, next_index))
                next_index += 1
                submitted += 1
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if kept >= target:
                    break  # target reached by an earlier reply of this batch
                new = process(future.result(), target - kept)
                kept += new
                bar.update(new)
                if status is not None:
                    bar.set_postfix(status(), refresh=False)
        finished_at = time.perf_counter()
    finally:
        for future in pending:
            future.cancel()
        # On success wait for requests still in flight (so none outlives the run); on an error or Ctrl-C don't.
        executor.shutdown(wait=finished_at is not None, cancel_futures=True)
        bar.close()
    return finished_at
