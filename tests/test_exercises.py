"""Exercises: every one has a tagged cell and a solution, the grader tells right from wrong, and the checker's
command line runs a notebook and grades it (notebook 00, the fastest). The notebook tests run every other
solution through the same grader (tests/conftest.py: check_exercises_and_expectations)."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest

from alpaca_helpers.course import course_notebooks, main
from alpaca_helpers.exercises import (
    EXERCISE_TAG,
    EXERCISES,
    exercise_id_of,
    grade_one,
    notebook_exercises,
    solutions,
    with_solutions,
)
from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.train.tokenize import alpaca_original_tokenize, original_recipe_fault


def _exercise_cells(notebook) -> dict[str, str]:
    nb = nbformat.read(notebook, as_version=4)
    return {exercise_id_of(c.source): c.source for c in nb.cells
            if c.cell_type == "code" and EXERCISE_TAG in c.metadata.get("tags", [])}


@pytest.mark.parametrize("notebook", course_notebooks(), ids=lambda p: p.stem)
def test_each_exercise_has_one_tagged_cell_a_solution_and_a_record_cell(notebook):
    cells = _exercise_cells(notebook)
    assert set(cells) == set(notebook_exercises(notebook.stem))
    assert set(solutions(notebook.stem)) == set(cells)
    text = notebook.read_text()
    for exercise_id in cells:
        assert f'\\"{exercise_id}\\", answer=' in text, f"{exercise_id} is never recorded"


def test_the_numbered_notebooks_from_01_each_have_an_exercise():
    numbers = {b.stem[:2] for b in course_notebooks()} - {"00"}
    assert numbers <= {i[:2] for i in EXERCISES}, "a notebook from 01 on has no exercise"


def test_solutions_replace_the_code_and_keep_the_task():
    nb = nbformat.read(REPO_ROOT / "notebooks" / "03_tokenize_and_mask.ipynb", as_version=4)
    assert with_solutions(nb, "03_tokenize_and_mask") == 2
    cell = next(c for c in nb.cells if exercise_id_of(c.source) == "03.2")
    assert cell.source.startswith("# Exercise 03.2") and 'prompt_format="chat"' in cell.source


@pytest.mark.parametrize("record, verdict", [
    (None, "not attempted"),
    ({"answer": None, "expected": 3}, "not attempted"),
    ({"answer": 3, "expected": 3, "settings": {"threshold": 0.5}}, "right"),
    ({"answer": 3.0000000001, "expected": 3, "settings": {"threshold": 0.5}}, "right"),
    ({"answer": 4, "expected": 3, "settings": {"threshold": 0.5}}, "wrong"),
    ({"answer": 3, "expected": 3, "settings": {"threshold": 0.7}}, "wrong"),  # the change was not made
])
def test_the_grader_tells_right_from_wrong(record, verdict):
    assert grade_one("02.1", record).verdict == verdict


def test_an_exercise_whose_answer_the_record_cell_computes_is_wrong_not_unattempted_when_it_misses():
    """03.1: the record cell computes the answer from the learner's record. The starting record is `not attempted`
    (with what to change: the cell has no `answer` to replace); a changed record the original recipe masks
    right is `wrong`, with a hint."""
    expected = "prompt not a prefix (boundary merge)"
    no_fault = "no fault: the original recipe masks this record right"
    start = grade_one("03.1", {"answer": no_fault, "expected": expected,
                               "settings": {"output": "Apples, pears and plums."}})
    assert start.verdict == "not attempted" and "my_record" in start.message and "answer = None" not in start.message
    missed = grade_one("03.1", {"answer": no_fault, "expected": expected, "settings": {"output": "Apples and pears."}})
    assert missed.verdict == "wrong" and "merges with the prompt's last `:`" in missed.message
    hit = grade_one("03.1", {"answer": expected, "expected": expected, "settings": {"output": "- Apples"}})
    assert hit.verdict == "right"
    assert "answer = None" in grade_one("02.1", {"answer": None, "expected": 3}).message  # the usual placeholder


def test_the_03_1_record_cell_grades_the_learners_record(default_tokenizer):
    """The notebook's record cell, run on the starting record, the solution's and one that misses."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / "03_tokenize_and_mask.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    exercise = next(i for i, c in enumerate(cells) if c.startswith("# Exercise 03.1"))
    record_cell = cells[exercise + 1].replace("from alpaca_helpers.exercises import record_exercise\n", "")
    verdicts = {}
    for name, code in (("start", cells[exercise]), ("solution", solutions("03_tokenize_and_mask")["03.1"]),
                       ("miss", cells[exercise].replace("Apples, pears and plums.", "Apples and pears."))):
        scope = {"original_recipe_fault": original_recipe_fault, "alpaca_original_tokenize": alpaca_original_tokenize,
                 "tokenizer": default_tokenizer, "max_length": 512, "output_dir": "unused",
                 "record_exercise": lambda _out, i, **kw: grade_one(
                     i, {**kw, "settings": {"output": kw.pop("output")}})}
        exec(code, scope)
        exec(record_cell, scope)
        verdicts[name] = scope["grade_03_1"].verdict
    assert verdicts == {"start": "not attempted", "solution": "right", "miss": "wrong"}


def test_saved_answers_are_graded_without_running_the_notebook(tmp_path, capsys):
    """`--check NOTEBOOK --saved`: the answers a learner's last run in Jupyter saved (in the folder its output_dir
    parameter names) are graded in seconds; with none saved, every exercise is `not attempted`."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / "02_dedup_analysis.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = "\n".join(f'output_dir = "{tmp_path / "out"}"  # mine' if line.startswith("output_dir =") else line
                               for line in params.source.splitlines())
    mine = tmp_path / "02_dedup_analysis-mine.ipynb"
    nbformat.write(nb, mine)

    def check():  # in this process: nothing is run, so no kernel starts
        code = main(["--check", str(mine), "--saved"])
        return code, capsys.readouterr()

    code, unsaved = check()
    assert code == 1 and "none saved yet" in unsaved.out and "· 02.1" in unsaved.out
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "exercises.json").write_text(json.dumps(
        {"02.1": {"answer": 150, "expected": 150, "prediction": 160, "settings": {"threshold": 0.5}}}))
    code, saved = check()
    assert code == 0 and "✓ 02.1" in saved.out and str(tmp_path / "out" / "exercises.json") in saved.out


def test_the_checker_runs_a_notebook_and_grades_it(tmp_path):
    def check(*extra):
        return subprocess.run([sys.executable, "-m", "alpaca_helpers.course", "--check",
                               "notebooks/00_seed_tasks.ipynb", "--output-dir", str(tmp_path), *extra],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    solved = check("--solutions")
    assert solved.returncode == 0 and "✓ 00.1" in solved.stdout and "right" in solved.stdout, solved.stderr
    recorded = json.loads((tmp_path / "00_seed_tasks" / "exercises.json").read_text())
    assert recorded["00.1"]["answer"] == recorded["00.1"]["expected"] == 26
    unsolved = check()
    assert unsolved.returncode == 1 and "not attempted" in unsolved.stdout
    for wrong in ("notebooks/99_missing.ipynb", "README.md"):
        mistake = subprocess.run([sys.executable, "-m", "alpaca_helpers.course", "--check", wrong],
                                 cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert (mistake.returncode, mistake.stderr) == (2, f"error: {wrong}: no such notebook (a .ipynb file)\n")
    # kernels listen on IPC sockets: ipykernel's warning about unencrypted TCP never appears
    assert "TCP" not in solved.stdout + solved.stderr + unsolved.stdout + unsolved.stderr
