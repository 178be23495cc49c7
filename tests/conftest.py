"""Shared fixtures: the real default model, and papermill execution of notebooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_helpers.course import NOTEBOOKS_DIR, run_notebook
from alpaca_helpers.paths import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default model as a plain Hugging Face folder (converted once per cache)."""
    from alpaca_helpers.models import default_model

    return default_model()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture
def execute_notebook(tmp_path):
    """Run `notebooks/<name>.ipynb` with papermill and return (summary dict, executed notebook path).

    The notebook's `output_dir` parameter points into this test's tmp folder.
    """

    def run(name: str, **parameters):
        notebook = NOTEBOOKS_DIR / f"{name}.ipynb"
        out = tmp_path / "course"
        parameters.setdefault("output_dir", str(out / notebook.stem))
        executed = run_notebook(notebook, out, parameters, progress=False)
        summary = json.loads((Path(parameters["output_dir"]) / "summary.json").read_text())
        return summary, executed

    return run
