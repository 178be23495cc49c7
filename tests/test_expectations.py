"""'You should see' statements: parsed from the notebooks' markdown and checked against a summary. Every notebook
test checks its own notebook's statements against the summary of its run (tests/conftest.py)."""

from __future__ import annotations

import json

import nbformat
import pytest

from alpaca_helpers.course import course_notebooks
from alpaca_helpers.expectations import Expectation, expectations, unmet


def _notebook(tmp_path, line: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(line)]
    path = tmp_path / "99_x.ipynb"
    nbformat.write(nb, path)
    return path


def test_statements_are_parsed_with_their_operator(tmp_path):
    path = _notebook(tmp_path, '> **You should see:** 175 (`n == 175`), about 0.3 (`a.b in [0.2, 0.4]`), '
                               'and `flag == true`; `words` in backticks alone are no check.')
    assert expectations(path) == [Expectation("n", "==", 175), Expectation("a.b", "in", [0.2, 0.4]),
                                  Expectation("flag", "==", True)]


def test_unmet_statements_are_named(tmp_path):
    path = _notebook(tmp_path, "> **You should see:** `n == 175` and `a.b in [0.2, 0.4]` and `missing == 1`")
    assert unmet(path, {"n": 175, "a": {"b": 0.3}, "missing": 1}) == []
    problems = unmet(path, {"n": 174, "a": {"b": 0.5}})
    assert problems == ["n == 175: got 174", "a.b in [0.2, 0.4]: got 0.5", "missing == 1: summary.json has no missing"]


@pytest.mark.parametrize("notebook", course_notebooks(), ids=lambda p: p.stem)
def test_every_notebook_opens_with_its_at_a_glance_box(notebook):
    first = json.loads(notebook.read_text())["cells"][0]
    assert "> **At a glance**" in "".join(first["source"]), notebook.name
