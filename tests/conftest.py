"""Shared fixtures: the real default model, and papermill execution of notebooks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from alpaca_helpers.course import NOTEBOOKS_DIR, run_notebook
from alpaca_helpers.exercises import EXERCISES_FILE, grade, grade_one
from alpaca_helpers.expectations import unmet
from alpaca_helpers.models import default_model
from alpaca_helpers.paths import REPO_ROOT
from alpaca_helpers.self_instruct.server import serve
from alpaca_helpers.self_instruct.teacher import Teacher, TeacherConfig

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Warnings a course run may print on stderr: third-party ones we cannot silence at the source, each with its
# reason (a pattern matched against the warning's line). Anything else that says "...Warning:" fails the test.
ALLOWED_WARNINGS: dict[str, str] = {}
_WARNING = re.compile(r"\b\w*Warning\b:?")


def stderr_warnings(executed: Path) -> list[str]:
    """The warning lines an executed notebook's cells printed on stderr, less the allowed ones."""
    found = []
    for cell in json.loads(executed.read_text())["cells"]:
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream" or output.get("name") != "stderr":
                continue
            for line in "".join(output["text"]).splitlines():
                if _WARNING.search(line) and not any(re.search(p, line) for p in ALLOWED_WARNINGS):
                    found.append(line.strip()[:200])
    return found


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default model as a plain Hugging Face folder (converted once per cache)."""
    return default_model()


@pytest.fixture
def fine_tuned_folder(default_model_dir, tmp_path) -> Path:
    """Stands in for notebook 04's output (`runs/04_train/final` under tmp_path): the base model's weights."""
    tuned = tmp_path / "runs" / "04_train" / "final"
    tuned.mkdir(parents=True)
    for f in default_model_dir.iterdir():
        if f.name != "alpaca_conversion.json":  # a fine-tuned save has no model-cache manifest
            os.symlink(f, tuned / f.name)
    return tuned


@pytest.fixture(scope="session")
def teacher_server(tmp_path_factory, default_model_dir):
    """The default model served once per session by the real `transformers serve` (continuous batching, as
    self-instruct and red teaming run it), warmed up: a fresh server's first answer is slow. Shared by the test
    files that talk to a real teacher, so each does not start its own."""
    log = tmp_path_factory.mktemp("teacher_server") / "server.log"
    with serve(default_model_dir, continuous_batching=True, log_path=log) as server:
        Teacher(TeacherConfig(base_url=server.base_url, model=server.model, extra_body=server.sampling_body(),
                              temperature=0.7, max_tokens=1)).complete("Hello")
        yield server


# The tokenizer fixtures import transformers inside: every test file loads this conftest, most need no transformers.
@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from transformers import AutoTokenizer  # noqa: PLC0415 - see above

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def boundary_changing_tokenizer():
    """Fault injection: a tokenizer that marks the start of every word (Metaspace "always"), which no
    separate prompt/response tokenization can keep exact. Real tokenizers of every family pass
    (test_tokenizer_families.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415 - see above
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - see above

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    tok.train_from_iterator(["### Response: Hello - item \"quoted\" spaced new line Below is an instruction"],
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                                show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def check_exercises_and_expectations(notebook: Path, output_dir: Path, summary: dict) -> None:
    """Every exercise of the run (with its solution) is graded right, and graded wrong once its answer is changed;
    every "You should see" statement of the notebook holds for its summary."""
    grades = grade(notebook.stem, output_dir)
    assert all(g.right for g in grades), [g.line() for g in grades]
    recorded = json.loads((output_dir / EXERCISES_FILE).read_text()) if grades else {}
    for exercise_id, record in recorded.items():
        wrong = {**record, "answer": ["not", "the", "answer"]}
        assert grade_one(exercise_id, wrong).verdict == "wrong", exercise_id
    assert unmet(notebook, summary) == []


@pytest.fixture
def execute_notebook(tmp_path):
    """Run `notebooks/<name>.ipynb` with papermill and return (summary dict, executed notebook path).

    The notebook's `output_dir` parameter points into this test's tmp folder. Its exercise cells run their
    solutions (`solutions/<name>.md`), and the run is checked with `check_exercises_and_expectations`.
    """

    def run(name: str, **parameters):
        notebook = NOTEBOOKS_DIR / f"{name}.ipynb"
        out = tmp_path / "course"
        parameters.setdefault("output_dir", str(out / notebook.stem))
        executed = run_notebook(notebook, out, parameters, progress=False, solutions=True)
        summary = json.loads((Path(parameters["output_dir"]) / "summary.json").read_text())
        check_exercises_and_expectations(notebook, Path(parameters["output_dir"]), summary)
        assert stderr_warnings(executed) == [], "warnings in the notebook's output (quiet them at the source)"
        return summary, executed

    return run
