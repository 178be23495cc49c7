"""Grading training examples, as AlpaGasus did: a judge rates each (instruction, input, response) from 1 to 5.

AlpaGasus (Chen et al. 2023) asked ChatGPT to rate the accuracy of every Alpaca response and trained on the
best-rated 9K of the 52K. Here the judge is read as notebook 06's weighted judge is: where its token
probabilities are known (the embedded model in this process through `evaluate.judge.LocalJudge`, or an
OpenAI-compatible endpoint that returns log-probabilities) the grade is the expected score, the
probability-weighted mean of the digits 1-5 it could reply with, so no reply is ever misparsed and ties are
rare. An endpoint without log-probabilities (such as `transformers serve`) is read from the first digit it
writes; a reply without one has no grade.

Grades are appended to a JSONL file as they come (keyed by a hash of the record and the grader), so an
interrupted run grades only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..demo.generate import load_model
from ..evaluate.judge import LocalJudge
from ..files import append_durable, read_complete_jsonl
from ..self_instruct.teacher import Teacher, TeacherConfig

GRADES = ("1", "2", "3", "4", "5")
GRADE_PROMPT = """You are checking examples that will teach an assistant to follow instructions. Rate how good \
the response is for the instruction: is it correct, complete and helpful?

Instruction:
{instruction}{input_block}

Response:
{output}

Rate the response from 1 (wrong or useless) to 5 (correct, complete and helpful). Reply with one digit."""
TOP_LOGPROBS = 20


@dataclass(frozen=True)
class GraderConfig:
    """Which judge grades the training pool."""

    base_url: str = ""  # "" = the `model` run in this process, read through its token probabilities
    model: str = "default"  # a local model ("default" = the embedded one) or the endpoint's model name
    api: str = "chat"  # the endpoint's API: chat | completions

    def name(self) -> str:
        return f"local:{self.model}" if not self.base_url else f"{self.base_url}:{self.model}"


def grade_prompt(record: Mapping[str, Any]) -> str:
    """The grading request for one Alpaca record."""
    input_block = f"\n\nInput:\n{record['input']}" if record.get("input") else ""
    return GRADE_PROMPT.format(instruction=record["instruction"], input_block=input_block, output=record["output"])


def expected_grade(top_logprobs: Mapping[str, float]) -> float | None:
    """The probability-weighted mean of the digits 1-5 among a reply token's alternatives (spaces ignored);
    None when none of them is a digit 1-5."""
    mass = dict.fromkeys(GRADES, 0.0)
    for token, logprob in top_logprobs.items():
        if token.strip() in mass:
            mass[token.strip()] += math.exp(logprob)
    total = sum(mass.values())
    return sum(int(g) * p for g, p in mass.items()) / total if total > 0 else None


def parse_grade(text: str) -> float | None:
    """The first digit 1-5 standing alone in a judge's reply ("Score: 4" -> 4.0), or None."""
    match = re.search(r"(?<!\d)[1-5](?!\d)", text)
    return float(match.group()) if match else None


def record_key(record: Mapping[str, Any], grader: str) -> str:
    """A stable key for one record under one grader (the grade cache's key)."""
    text = json.dumps([grader, record["instruction"], record.get("input") or "", record["output"]])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def make_grader(config: GraderConfig) -> tuple[Any, str]:
    """(judge, method): a `LocalJudge` on the named local model ("logprobs"), or a `Teacher` on the endpoint
    ("logprobs" when it returns them, else "text")."""
    if not config.base_url:
        return LocalJudge(*load_model(config.model)), "logprobs"
    teacher = Teacher(TeacherConfig(base_url=config.base_url, model=config.model, api=config.api,
                                    temperature=0.0, max_tokens=8))
    teacher.check()
    return teacher, "logprobs" if teacher.gives_logprobs() else "text"


def _grade_chunk(judge: Any, method: str, records: Sequence[Mapping[str, Any]]) -> list[float | None]:
    """Grades of one chunk: one forward pass for a `LocalJudge`, concurrent requests for an endpoint."""
    prompts = [grade_prompt(r) for r in records]
    if isinstance(judge, LocalJudge):
        return [expected_grade(t) for t in judge.top_logprobs_batch(prompts)]

    def ask(prompt: str) -> float | None:
        if method == "logprobs":
            return expected_grade(judge.complete(prompt, top_logprobs=TOP_LOGPROBS).top_logprobs or {})
        return parse_grade(judge.complete(prompt).text)

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        return list(pool.map(ask, prompts))


CHUNK = 8  # records graded together: one forward pass of the local judge, or requests in flight to an endpoint


def grade_records(records: Sequence[Mapping[str, Any]], config: GraderConfig, path: str | os.PathLike,
                  progress: bool = True) -> list[float | None]:
    """The grade of every record (1-5, or None where the judge gave none), in order. Grades already in the
    JSONL file at `path` for this grader are reused; new ones are appended durably, a chunk at a time.

    Records are graded in fixed chunks of `CHUNK` (by position), and a chunk with any grade missing is graded
    again whole: a local judge's numbers depend (in the last bits) on the padding of its batch, so fixed chunks
    make an interrupted and resumed run give exactly the grades of an uninterrupted one.
    """
    grader = config.name()
    keys = [record_key(r, grader) for r in records]
    known = {row["key"]: row["grade"] for row in read_complete_jsonl(path)}
    chunks = [range(i, min(i + CHUNK, len(records))) for i in range(0, len(records), CHUNK)]
    todo = [c for c in chunks if any(keys[i] not in known for i in c)]
    if todo:
        judge, method = make_grader(config)
        with tqdm(total=sum(map(len, todo)), desc=f"grade ({grader}, {method})", disable=not progress) as bar:
            for chunk in todo:
                grades = _grade_chunk(judge, method, [records[i] for i in chunk])
                append_durable(path, "\n".join(json.dumps({"key": keys[i], "grade": g, "grader": grader,
                                                            "method": method}) for i, g in zip(chunk, grades)))
                known.update({keys[i]: g for i, g in zip(chunk, grades)})
                bar.update(len(chunk))
    return [known[k] for k in keys]
