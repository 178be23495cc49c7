"""Where the course keeps its data, runs and caches (each overridable by an environment variable)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder holding the shipped data (`ALPACA_DATA_DIR` overrides `<repo>/data`)."""
    return Path(os.environ.get("ALPACA_DATA_DIR", REPO_ROOT / "data"))


def runs_dir() -> Path:
    """The folder notebooks and scripts write their outputs to (`ALPACA_RUNS_DIR` overrides `<repo>/runs`)."""
    return Path(os.environ.get("ALPACA_RUNS_DIR", REPO_ROOT / "runs"))


def cache_dir() -> Path:
    """The folder for converted models (`ALPACA_CACHE` overrides `~/.cache/alpaca_helpers`)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alpaca_helpers"
    return Path(os.environ.get("ALPACA_CACHE", default))


def resolve(path: str | os.PathLike) -> Path:
    """Resolve a user path: absolute paths stay, relative ones are taken from the repository root.

    Notebooks run with their own folder as working directory under Jupyter but with the caller's under
    papermill; anchoring relative paths at the repository root makes both behave the same.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p
