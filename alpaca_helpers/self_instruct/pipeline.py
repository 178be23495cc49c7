"""Alpaca's data step: self-instruct generation through any OpenAI-compatible teacher.

Each request shows the teacher a list of tasks that starts with `num_prompt_instructions` seed tasks and
asks it to continue the list with `tasks_per_prompt` new ones. The completion is parsed into
(instruction, input, output) tasks, each is filtered (length, blacklisted words, leading text), and a
task is kept only if its instruction's ROUGE-L F-measure against every seed and kept instruction is at
most 0.7. Kept records are appended to a checkpoint as they are kept, so a crashed run continues where it
stopped when started again with the same output folder.

    python -m alpaca_helpers.self_instruct --num_instructions 20 --output_dir runs/self_instruct
    python -m alpaca_helpers.self_instruct --base_url https://api.openai.com/v1 --model gpt-4o-mini --api chat ...

Without `--base_url` the embedded default model is served locally with `transformers serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cli import ArgumentParser
from ..data import load_seed_tasks, save_alpaca
from ..paths import resolve
from ..precision import PrecisionError
from .parse import ParseResult, filter_reason, parse_completion
from .prompt import NUM_PROMPT_INSTRUCTIONS, TASKS_PER_PROMPT, request_prompt, stop_strings
from .server import ServerError
from .teacher import Teacher, TeacherError
from .teacher_cli import add_teacher_arguments, exit_on_sigterm, open_teacher, report
from .teacher_run import Asked, RunResult, TeacherRun

SIMILARITY_THRESHOLD = 0.7
OUTPUT_FILE = "regen.json"
META_FILE = "regen.meta.json"
CHECKPOINT_FILE = "regen.checkpoint.jsonl"


# ---------------------------------------------------------------------------------------- training set

TRAIN_SET_FILE = "train_set.json"
SEED_SOURCE, GENERATED_SOURCE = "seed", "self-instruct"


def training_set(seeds: Sequence[Mapping[str, Any]], generated: Sequence[Mapping[str, Any]],
                 kept: Sequence[bool]) -> list[dict[str, Any]]:
    """Alpaca's training data: the seed tasks, then the generated records the similarity filter kept.

    Each record is plain Alpaca (instruction, input, output) plus `source`: "seed" or "self-instruct".
    """
    plain = [{f: r.get(f) or "" for f in ("instruction", "input", "output")} for r in seeds]
    chosen = [r for r, keep in zip(generated, kept, strict=True) if keep]
    return ([{**r, "source": SEED_SOURCE} for r in plain]
            + [{**{f: r.get(f) or "" for f in ("instruction", "input", "output")}, "source": GENERATED_SOURCE}
               for r in chosen])


# -------------------------------------------------------------------------------------------- the run

class SelfInstructRun(TeacherRun):
    """One session of a self-instruct run: seed tasks in each prompt, Alpaca's parser and filters."""

    output_file, meta_file, checkpoint_file, top_k = OUTPUT_FILE, META_FILE, CHECKPOINT_FILE, 10

    def __init__(self, teacher: Teacher, seeds: list[dict[str, Any]], output_dir: Path, num_prompt_instructions: int,
                 tasks_per_prompt: int, seed: int, threshold: float) -> None:
        self.seeds = seeds
        self.num_prompt_instructions, self.tasks_per_prompt = num_prompt_instructions, tasks_per_prompt
        super().__init__(teacher, output_dir, [s["instruction"] for s in seeds], seed, threshold)

    def prompt(self, index: int) -> str:
        return request_prompt(self.seeds, self.seed, index, self.num_prompt_instructions, self.tasks_per_prompt)

    def stop(self, index: int) -> list[str]:
        return stop_strings(self.num_prompt_instructions, self.tasks_per_prompt)

    def parse(self, asked: Asked) -> ParseResult:
        return parse_completion(asked.reply.text, self.num_prompt_instructions + 1, asked.reply.finish_reason)

    def filter_reason(self, instruction: str) -> str | None:
        return filter_reason(instruction)

    def record(self, asked: Asked, task: dict[str, str], neighbors: dict[str, float], mean: float) -> dict[str, Any]:
        return {**task, "most_similar_instructions": neighbors, "avg_similarity_score": mean, "request": asked.index}

    def parsed_example(self, parsed: ParseResult) -> dict[str, Any]:
        return {"parsed": parsed.tasks, "parse_failures": dict(parsed.failures)}

    def output_record(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"instruction": entry["instruction"], "input": entry["input"], "output": entry["output"]}

    def save(self, records: list[dict[str, Any]], path: Path) -> Path:
        return save_alpaca(records, path)

    def settings(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"num_prompt_instructions": self.num_prompt_instructions, "tasks_per_prompt": self.tasks_per_prompt}


def generate(teacher: Teacher, num_instructions: int, output_dir: str | os.PathLike, *,
             num_prompt_instructions: int = NUM_PROMPT_INSTRUCTIONS, tasks_per_prompt: int = TASKS_PER_PROMPT,
             concurrency: int = 1, seed: int = 42, threshold: float = SIMILARITY_THRESHOLD,
             max_requests: int | None = None, seed_tasks: list[dict[str, Any]] | None = None,
             progress: bool = True, check: bool = True) -> RunResult:
    """Generate `num_instructions` new instructions into `<output_dir>/regen.json` (Alpaca JSON).

    Continues from `<output_dir>/regen.checkpoint.jsonl` if a run was interrupted. `concurrency` requests
    are kept in flight; `max_requests` bounds this session's requests (the run then ends incomplete).
    Metadata (neighbours, rejections, tokens, cost, wall time) goes to `<output_dir>/regen.meta.json`.
    Raises `TeacherUnreachable` before starting if the endpoint does not answer, `TeacherError` when a
    request's retries are spent (kept records stay in the checkpoint).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seeds = seed_tasks if seed_tasks is not None else load_seed_tasks()
    if check:
        teacher.check()
    run = SelfInstructRun(teacher, seeds, output_dir, num_prompt_instructions, tasks_per_prompt, seed, threshold)
    return run.run(num_instructions, concurrency=concurrency, max_requests=max_requests, progress=progress)


# ------------------------------------------------------------------------------------------------- CLI

COUNTS = ("num_instructions", "tasks_per_prompt", "concurrency")  # settings that cannot be below 1


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m alpaca_helpers.self_instruct", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_instructions", type=int, default=100, help="instructions to keep (default: 100)")
    p.add_argument("--output_dir", default="runs/self_instruct",
                   help="folder for regen.json, regen.meta.json and the checkpoint (relative: to the repository)")
    d = add_teacher_arguments(p, "teacher (default: the embedded model served locally)", max_tokens=3072)
    d.add_argument("--num_prompt_instructions", type=int, default=NUM_PROMPT_INSTRUCTIONS)
    d.add_argument("--tasks_per_prompt", type=int, default=TASKS_PER_PROMPT)
    return p


def main(argv: list[str] | None = None) -> int:
    """The CLI: 0 when the target is reached, 3 when requests ran out first, 2 on a setting, 1 when the teacher or
    the local server failed (`error: ...`)."""
    args = _parser().parse_args(argv)
    below_one = [f"--{name}" for name in COUNTS if getattr(args, name) < 1]
    if below_one:  # before a local teacher starts: 0 instructions would start one, then do nothing
        print(f"error: {', '.join(below_one)} must be at least 1", file=sys.stderr)
        return 2
    out = resolve(args.output_dir)
    # `kill` (SIGTERM) then unwinds like Ctrl-C: the local server is stopped, the checkpoint is intact.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        with contextlib.ExitStack() as stack:
            teacher = open_teacher(args, stack, out)
            if teacher is None:
                print("error: --model is required with --base_url", file=sys.stderr)
                return 2
            result = generate(teacher, args.num_instructions, out,
                              num_prompt_instructions=args.num_prompt_instructions,
                              tasks_per_prompt=args.tasks_per_prompt, concurrency=args.concurrency, seed=args.seed,
                              max_requests=args.max_requests, progress=not args.no_progress)
    except PrecisionError as e:  # a setting (ALPACA_BF16), like a missing --model
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TeacherError, ServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return report(result)
