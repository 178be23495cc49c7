"""One resumable teacher run, the base of self-instruct's (`pipeline`) and red teaming's (`safety.redteam`).

`TeacherRun` owns what both share: the checkpoint, the pool of instructions a new one must not resemble
(ROUGE-L F-measure above the threshold), asking the teacher through the request loop, timing across
sessions, and finishing into a `RunResult` with the output file and its metadata. A run extends it with what
differs: the prompt of each request, how a reply is parsed and filtered, and the records it writes.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..files import atomic_write_text
from .checkpoint import Checkpoint
from .parse import ParseResult
from .request_loop import request_seed, run_requests
from .rouge import filter_similar_detailed
from .teacher import Completion, Teacher, estimate_cost, price_per_million


@dataclass
class RunResult:
    """What a run produced (counts cover every session of a resumed run)."""

    records: list[dict[str, str]]
    target: int
    requests: int
    rejections: dict[str, int]
    prompt_tokens: int
    completion_tokens: int  # returned, up to the stop string (what an API bills)
    cost_usd: float | None
    wall_seconds: float
    retries: int
    complete: bool
    output_path: Path
    meta_path: Path
    example: dict[str, Any] | None = None  # the first request of this session: prompt, completion, parse
    generated_tokens: int = 0  # decoded by the server (more than completion_tokens when it ignores stop strings)
    parsed: int = 0  # tasks parsed from the replies, before the filters

    @property
    def kept(self) -> int:
        return len(self.records)

    @property
    def kept_per_minute(self) -> float:
        return 60 * self.kept / self.wall_seconds if self.wall_seconds else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts and rates as a small JSON-safe dict."""
        return {"kept": self.kept, "target": self.target, "complete": self.complete, "requests": self.requests,
                "rejections": dict(self.rejections), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "generated_tokens": self.generated_tokens,
                "parsed": self.parsed, "cost_usd": self.cost_usd,
                "wall_seconds": round(self.wall_seconds, 2), "kept_per_minute": round(self.kept_per_minute, 3),
                "retries": self.retries}


@dataclass(frozen=True)
class Asked:
    """One request of a run as sent, and the teacher's reply."""

    index: int
    prompt: str
    reply: Completion


class TeacherRun(ABC):
    """One session of a resumable teacher run writing `output_file`, `meta_file` and `checkpoint_file` into
    `output_dir`; `examples` start the pool that every kept instruction is compared with."""

    output_file: ClassVar[str]
    meta_file: ClassVar[str]
    checkpoint_file: ClassVar[str]
    top_k: ClassVar[int]  # most similar pool instructions recorded with each kept one

    def __init__(self, teacher: Teacher, output_dir: Path, examples: Sequence[str], seed: int,
                 threshold: float) -> None:
        self.teacher, self.output_dir, self.seed, self.threshold = teacher, output_dir, seed, threshold
        self.checkpoint = Checkpoint(output_dir / self.checkpoint_file)
        self.pool = list(examples) + [r["instruction"] for r in self.checkpoint.records]
        self.session = uuid.uuid4().hex[:12]
        self.start = time.perf_counter()
        self.example: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ what each run defines

    @abstractmethod
    def prompt(self, index: int) -> str:
        """The prompt of request `index` (the same on every resume)."""

    @abstractmethod
    def stop(self, index: int) -> list[str]:
        """The stop strings of request `index`."""

    @abstractmethod
    def parse(self, asked: Asked) -> ParseResult:
        """The tasks of a reply, each with an "instruction"."""

    @abstractmethod
    def filter_reason(self, instruction: str) -> str | None:
        """Why a parsed instruction is not kept (before the similarity filter), or None."""

    @abstractmethod
    def record(self, asked: Asked, task: dict[str, str], neighbors: dict[str, float], mean: float) -> dict[str, Any]:
        """The checkpoint record of a kept task."""

    @abstractmethod
    def parsed_example(self, parsed: ParseResult) -> dict[str, Any]:
        """What the example request of the metadata shows of its parse."""

    @abstractmethod
    def output_record(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The output file's record of a checkpoint record."""

    @abstractmethod
    def save(self, records: list[dict[str, Any]], path: Path) -> Path:
        """Write the output file; returns its path."""

    @abstractmethod
    def settings(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's own entries of the metadata (its settings, counts of its own)."""

    def request_fields(self, index: int) -> dict[str, Any]:
        """The run's own fields of request `index`'s checkpoint line and example (after its index)."""
        return {}

    def totals(self, requests: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """`RunResult`'s counts of decoded tokens and parsed tasks over the finished requests."""
        return {"generated_tokens": sum(r.get("generated_tokens", r["completion_tokens"]) for r in requests),
                "parsed": sum(r.get("parsed", 0) for r in requests)}

    # ------------------------------------------------------------------------------------- the shared run

    def ask(self, index: int) -> Asked:
        """Send request `index` (runs in the request loop's threads)."""
        prompt = self.prompt(index)
        reply = self.teacher.complete(prompt, stop=self.stop(index), seed=request_seed(self.seed, index))
        return Asked(index, prompt, reply)

    def process(self, asked: Asked, room: int) -> int:
        """Parse, filter and deduplicate one reply; checkpoint what is kept (at most `room`). Returns kept."""
        reply = asked.reply
        parsed = self.parse(asked)
        rejections = Counter(parsed.failures)
        rejected: list[tuple[str, str]] = []
        candidates = []
        for task in parsed.tasks:
            reason = self.filter_reason(task["instruction"])
            if reason is None:
                candidates.append(task)
            else:
                rejections[reason] += 1
                rejected.append((reason, task["instruction"][:200]))
        detail = filter_similar_detailed([t["instruction"] for t in candidates], self.pool, self.threshold,
                                         top_k=self.top_k)
        kept = []
        for task, ok, mean, neighbors in zip(candidates, detail.kept, detail.mean_score, detail.neighbors):
            if not ok:
                rejections["too_similar"] += 1
                rejected.append(("too_similar", task["instruction"][:200]))
            elif len(kept) < room:
                kept.append(self.record(asked, task, dict(neighbors), float(mean)))
        own = self.request_fields(asked.index)
        request = {"index": asked.index, **own, "session": self.session, "elapsed": time.perf_counter() - self.start,
                   "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                   "generated_tokens": reply.generated_tokens or reply.completion_tokens,
                   "finish_reason": reply.finish_reason, "parsed": len(parsed.tasks), "kept": len(kept),
                   "rejections": dict(rejections), "rejected": rejected, "retries": reply.retries}
        self.checkpoint.append(kept, request)
        self.pool.extend(r["instruction"] for r in kept)
        if self.example is None:
            self.example = {"index": asked.index, **own, "prompt": asked.prompt, "completion": reply.text,
                            "finish_reason": reply.finish_reason, **self.parsed_example(parsed)}
        return len(kept)

    def status(self) -> dict[str, Any]:
        """The progress bar's postfix: requests finished and tasks rejected so far."""
        requests = self.checkpoint.requests
        return {"requests": len(requests), "rejected": sum(sum(r["rejections"].values()) for r in requests)}

    def wall_seconds(self, finished_at: float) -> float:
        """This session's time plus the earlier sessions' (each up to its last finished request)."""
        return self.checkpoint.wall_seconds(self.session, finished_at - self.start)

    def run(self, target: int, *, concurrency: int = 1, max_requests: int | None = None,
            progress: bool = True) -> RunResult:
        """Ask until `target` instructions are kept (counting earlier sessions') or `max_requests` were sent this
        session, then write the output file and its metadata."""
        finished_at = run_requests(self.ask, self.process, target, kept=len(self.checkpoint.records),
                                   next_index=self.checkpoint.next_index(), concurrency=concurrency,
                                   max_requests=max_requests, progress=progress, status=self.status)
        return self.finish(target, finished_at)

    def finish(self, target: int, finished_at: float) -> RunResult:
        """Write the output file and the metadata from the checkpoint."""
        entries = self.checkpoint.records[:target]
        records = [self.output_record(e) for e in entries]
        output_path = self.save(records, self.output_dir / self.output_file)
        requests = self.checkpoint.requests
        rejections, rejected_examples = self.checkpoint.rejections()
        prompt_tokens = sum(r["prompt_tokens"] for r in requests)
        completion_tokens = sum(r["completion_tokens"] for r in requests)
        cfg = self.teacher.config
        result = RunResult(
            records=records, target=target, requests=len(requests), rejections=dict(rejections),
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            cost_usd=estimate_cost(cfg.model, prompt_tokens, completion_tokens, cfg.base_url),
            wall_seconds=self.wall_seconds(finished_at), retries=sum(r.get("retries", 0) for r in requests),
            complete=len(records) >= target, output_path=output_path, meta_path=self.output_dir / self.meta_file,
            example=self.example, **self.totals(requests))
        meta = {**result.summary(), "teacher": cfg.to_dict(),
                "price_per_million_usd": price_per_million(cfg.model, cfg.base_url), **self.settings(records),
                "seed": self.seed, "similarity_threshold": self.threshold, "rejected_examples": rejected_examples,
                "example_request": self.example,
                "instructions": [{"instruction": e["instruction"], "most_similar_instructions":
                                  e["most_similar_instructions"], "avg_similarity_score": e["avg_similarity_score"]}
                                 for e in entries]}
        atomic_write_text(result.meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return result
