"""Small glue shared by the notebooks: output folders and the JSON summary each notebook ends with."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .files import atomic_write_text
from .paths import resolve

SUMMARY_FILE = "summary.json"


def output_folder(path: str | os.PathLike) -> Path:
    """Resolve a notebook's `output_dir` parameter (relative to the repository root) and create it."""
    folder = resolve(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_summary(output_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Write `summary` as `<output_dir>/summary.json` (atomically) and return its path."""
    path = output_folder(output_dir) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_summary(output_dir: str | os.PathLike) -> dict[str, Any]:
    """Read back what `write_summary` wrote."""
    return json.loads((resolve(output_dir) / SUMMARY_FILE).read_text())
