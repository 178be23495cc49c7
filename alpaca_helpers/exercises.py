"""Exercises with graded solutions: what each notebook's exercise cells record, and how they are graded.

An exercise is a code cell tagged `exercise`: the learner changes one thing, writes a prediction, then the
code that computes the answer. The cell after it calls `record_exercise`, which stores the learner's answer
beside the expected one (computed by the tested helpers in that same cell) in `<output_dir>/exercises.json`.
`grade` reads that file; `python -m alpaca_helpers.course --check NOTEBOOK` runs a notebook and prints it, and
`--check NOTEBOOK --saved` grades what the learner's last run in Jupyter saved, in seconds (`grade_saved`).
Solutions live in `solutions/<notebook>.md`, one fenced python block under each `## Exercise N.M` heading.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write_text
from .paths import REPO_ROOT, resolve

EXERCISES_FILE = "exercises.json"
SOLUTIONS_DIR = REPO_ROOT / "solutions"
EXERCISE_TAG = "exercise"
_HEADING = re.compile(r"^## Exercise (\d\d\.\d+)\b.*$", re.M)
_CODE = re.compile(r"```python\n(.*?)```", re.S)
_CELL_ID = re.compile(r"^# Exercise (\d\d\.\d+)\b", re.M)


@dataclass(frozen=True)
class Exercise:
    """One exercise: its title, the settings the learner must have changed (name -> value), and how to tell an
    untouched exercise cell.

    By default the cell is untouched while its `answer` is still None. An exercise whose answer is computed by
    the record cell from something the learner writes (03.1: a record) names that setting's starting value in
    `untouched` instead: then an answer of None is graded like any other, and `todo` says what to change.
    """

    title: str
    requires: Mapping[str, Any] = field(default_factory=dict)
    rel_tol: float = 1e-6
    untouched: Mapping[str, Any] = field(default_factory=dict)
    todo: str = "replace `answer = None` in the exercise cell with your code"
    hint: str = ""  # added to a wrong answer's message


EXERCISES: dict[str, Exercise] = {
    "00.1": Exercise("Classification tasks with an input"),
    "01.1": Exercise("Fewer tasks per request: where does the teacher stop?",
                     requires={"num_prompt_instructions": 2, "tasks_per_prompt": 5}),
    "02.1": Exercise("A stricter filter: how many seed tasks survive ROUGE-L <= 0.5?", requires={"threshold": 0.5}),
    "03.1": Exercise("Find the label-boundary bug of the original masking",
                     untouched={"output": "Apples, pears and plums."},
                     todo="change the output of `my_record` in the exercise cell (it is still the starting one)",
                     hint="the original recipe masks this record right: start its output with a character that BPE "
                          "merges with the prompt's last `:`"),
    "03.2": Exercise("The other prompt format: trained tokens under the chat template"),
    "04.1": Exercise("A smaller micro-batch: how many micro-batches per step?", requires={"per_device": 2}),
    "05.1": Exercise("Temperature 0: does the seed still matter?", requires={"temperature": 0.0}),
    "06.1": Exercise("Cohen's kappa by hand"),
    "07.1": Exercise("Long Is More by hand: the mean length of the 4 longest responses", requires={"n": 4}),
    "08.1": Exercise("The content filter's precision on XSTest, by hand"),
    "09.1": Exercise("What does beta do at DPO's first step?", requires={"beta_try": 0.5}, rel_tol=1e-4,
                     hint="compute it with dpo_batch_loss(start_model, start_tokenizer, batch_pairs, beta_try)"),
}


@dataclass(frozen=True)
class Grade:
    """The verdict on one exercise: `right`, `wrong` or `not attempted`, with a one-line reason."""

    exercise_id: str
    verdict: str
    message: str

    @property
    def right(self) -> bool:
        return self.verdict == "right"

    def line(self) -> str:
        mark = {"right": "✓", "wrong": "✗"}.get(self.verdict, "·")
        title = EXERCISES[self.exercise_id].title if self.exercise_id in EXERCISES else "unknown exercise"
        return f"{mark} {self.exercise_id} {title}: {self.verdict}. {self.message}"


def _same(answer: Any, expected: Any, rel_tol: float) -> bool:
    if isinstance(expected, bool) or isinstance(answer, bool):
        return answer is expected or answer == expected
    if isinstance(expected, (int, float)) and isinstance(answer, (int, float)):
        return math.isclose(answer, expected, rel_tol=rel_tol, abs_tol=rel_tol)
    return answer == expected


def record_exercise(output_dir: str | os.PathLike, exercise_id: str, answer: Any, expected: Any,
                    prediction: Any = None, **settings: Any) -> Grade:
    """Store one exercise's answer, its expected value and the settings it ran with; return its grade.

    `settings` are the values the exercise asks the learner to change (checked against `Exercise.requires`).
    The record is JSON: answers must be plain numbers, strings, booleans or lists of them.
    """
    if exercise_id not in EXERCISES:
        raise KeyError(f"unknown exercise {exercise_id!r}: known are {', '.join(EXERCISES)}")
    path = resolve(output_dir) / EXERCISES_FILE
    recorded = json.loads(path.read_text()) if path.exists() else {}
    recorded[exercise_id] = {"answer": answer, "expected": expected, "prediction": prediction,
                             "settings": settings}
    atomic_write_text(path, json.dumps(recorded, indent=2, sort_keys=True, default=str) + "\n")
    grade = grade_one(exercise_id, recorded[exercise_id])
    print(grade.line())
    return grade


def grade_one(exercise_id: str, record: Mapping[str, Any] | None) -> Grade:
    """Grade one recorded exercise (None: the notebook never reached its record cell)."""
    exercise = EXERCISES[exercise_id]
    if record is None:
        return Grade(exercise_id, "not attempted", "its cells did not run")
    settings = record.get("settings") or {}
    if exercise.untouched:
        if all(settings.get(name) == start for name, start in exercise.untouched.items()):
            return Grade(exercise_id, "not attempted", exercise.todo)
    elif record.get("answer") is None:
        return Grade(exercise_id, "not attempted", exercise.todo)
    for name, wanted in exercise.requires.items():
        if not _same(settings.get(name), wanted, exercise.rel_tol):
            return Grade(exercise_id, "wrong", f"set {name} = {wanted!r} first (it was {settings.get(name)!r})")
    if not _same(record["answer"], record.get("expected"), exercise.rel_tol):
        hint = "" if record.get("prediction") is None else f" (you predicted {record['prediction']!r})"
        more = f"; {exercise.hint}" if exercise.hint else ""
        return Grade(exercise_id, "wrong",
                     f"your answer {record['answer']!r} is not what the helpers compute{hint}{more}")
    said = "" if record.get("prediction") is None else f"; you predicted {record['prediction']!r}"
    return Grade(exercise_id, "right", f"answer {record['answer']!r}{said}")


def notebook_exercises(notebook_stem: str) -> list[str]:
    """The exercise ids of a notebook, by its number (`03_tokenize_and_mask` -> ["03.1", "03.2"])."""
    number = notebook_stem[:2]
    return [i for i in EXERCISES if i.startswith(number + ".")]


def grade(notebook_stem: str, output_dir: str | os.PathLike) -> list[Grade]:
    """Grade every exercise of a notebook from the `exercises.json` its run wrote into `output_dir`."""
    path = resolve(output_dir) / EXERCISES_FILE
    recorded = json.loads(path.read_text()) if path.exists() else {}
    return [grade_one(i, recorded.get(i)) for i in notebook_exercises(notebook_stem)]


def saved_output_dir(notebook: str | os.PathLike) -> Path:
    """Where a notebook run as it stands (in Jupyter) writes its files: its `output_dir` parameter's value."""
    import nbformat

    nb = nbformat.read(resolve(notebook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "output_dir":
                    return resolve(ast.literal_eval(node.value))
    raise ValueError(f"{notebook}: no output_dir in its parameters cell")


def grade_saved(notebook: str | os.PathLike) -> tuple[list[Grade], Path]:
    """Grade a notebook's exercises from the answers its last run saved (seconds: nothing is re-run).

    Returns the grades and the `exercises.json` they come from. An exercise whose record cell never ran is
    `not attempted`; an answer changed but not re-run is graded as it was saved.
    """
    folder = saved_output_dir(notebook)
    return grade(Path(notebook).stem, folder), folder / EXERCISES_FILE


def solutions(notebook_stem: str) -> dict[str, str]:
    """Exercise id -> solution code, from `solutions/<notebook>.md`."""
    path = SOLUTIONS_DIR / f"{notebook_stem}.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    found = {}
    headings = list(_HEADING.finditer(text))
    for k, heading in enumerate(headings):
        section = text[heading.end(): headings[k + 1].start() if k + 1 < len(headings) else len(text)]
        code = _CODE.search(section)
        if code:
            found[heading.group(1)] = code.group(1)
    return found


def exercise_id_of(cell_source: str) -> str | None:
    """The id an exercise cell names in its first line (`# Exercise 03.1 · ...`)."""
    match = _CELL_ID.search(cell_source)
    return match.group(1) if match else None


def with_solutions(notebook: Any, notebook_stem: str) -> int:
    """Put the solution code into every exercise cell of a loaded notebook (nbformat); returns how many.

    The cell's comment lines (the task) stay; its code is replaced by the solution's.
    """
    code = solutions(notebook_stem)
    filled = 0
    for cell in notebook.cells:
        if cell.cell_type != "code" or EXERCISE_TAG not in cell.metadata.get("tags", []):
            continue
        exercise_id = exercise_id_of(cell.source)
        if exercise_id in code:
            comments = [line for line in cell.source.splitlines() if line.startswith("#")]
            cell.source = "\n".join(comments) + "\n" + code[exercise_id].rstrip() + "\n"
            filled += 1
    return filled
