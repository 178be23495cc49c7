"""Every notebook follows the course's conventions and is committed without outputs."""

import ast
import re

import nbformat
import papermill
import pytest

from alpaca_helpers.course import COURSE_LINKS, NOTEBOOKS_DIR, course_notebooks, linked_parameters, notebook_parameters

NOTEBOOKS = course_notebooks()


def test_the_course_has_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_seed_tasks.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks with outputs stripped"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "What you will learn" in nb.cells[0].source
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assigned = set()
    for node in ast.parse(params[0].source).body:
        assigned |= {t.id for t in node.targets}
        assert isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.List, ast.Dict,
                                                                        ast.Tuple, ast.UnaryOp))
    for line in params[0].source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "  # " in line, f"parameter without a comment: {line}"
    assert "output_dir" in params[0].source
    # papermill silently skips a parameter whose comment holds "=": then it cannot be overridden.
    assert set(papermill.inspect_notebook(str(path))) == assigned
    assert "write_summary(" in code[-1].source, "the last code cell writes the JSON summary"
    sections = [c for c in nb.cells if c.cell_type == "markdown" and re.search(r"^## \d+\. ", c.source, re.M)]
    assert len(sections) >= 3, "numbered sections"


def test_course_links_name_real_parameters_and_follow_this_runs_outputs(tmp_path):
    for stem, links in COURSE_LINKS.items():
        assert set(links) <= notebook_parameters(NOTEBOOKS_DIR / f"{stem}.ipynb")
    assert linked_parameters("02_dedup_analysis", tmp_path) == {}  # notebook 01 has not run: the defaults stay
    (tmp_path / "01_self_instruct").mkdir()
    (tmp_path / "01_self_instruct" / "regen.json").write_text("[]")
    assert linked_parameters("02_dedup_analysis", tmp_path) == {
        "data_path": str(tmp_path / "01_self_instruct/regen.json")}
