"""What you should see: the expected ranges a notebook states next to its key cells, checked against its summary.

A markdown line that starts with `> **You should see:**` may hold checks in backticks, each naming a key of
the notebook's `summary.json` (dots go into nested objects):

    > **You should see:** 175 tasks (`n_tasks == 175`), a fifth or so classification (`n_classification in [25, 45]`).

`==` compares with a JSON value; `in [lo, hi]` is an inclusive range. The course runner reports any value
outside its range, and the tests check every notebook's statements against its summary, so the text cannot
drift from what the code produces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^> \*\*You should see:\*\*(.*)$", re.M)
_CHECK = re.compile(r"`([A-Za-z_][\w.]*) (==|in) ([^`]+)`")


@dataclass(frozen=True)
class Expectation:
    """One stated expectation: `key == value` or `key in [lo, hi]`."""

    key: str
    op: str
    value: Any

    def text(self) -> str:
        return f"{self.key} {self.op} {json.dumps(self.value)}"


def expectations(notebook: Path) -> list[Expectation]:
    """Every expectation stated in a notebook's markdown cells, in order."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    found = []
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        for line in _LINE.finditer("".join(cell["source"])):
            for key, op, raw in _CHECK.findall(line.group(1)):
                value = json.loads(raw)
                if op == "in" and not (isinstance(value, list) and len(value) == 2):
                    raise ValueError(f"{notebook.name}: `{key} in {raw}` needs [low, high]")
                found.append(Expectation(key, op, value))
    return found


def lookup(summary: Mapping[str, Any], key: str) -> Any:
    """`summary["a"]["b"]` for key "a.b"; KeyError naming the key if it is missing."""
    value: Any = summary
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def unmet(notebook: Path, summary: Mapping[str, Any]) -> list[str]:
    """One line per expectation of `notebook` that its `summary` does not meet (empty: all met)."""
    problems = []
    for exp in expectations(notebook):
        try:
            value = lookup(summary, exp.key)
        except KeyError:
            problems.append(f"{exp.text()}: summary.json has no {exp.key}")
            continue
        ok = value == exp.value if exp.op == "==" else (
            isinstance(value, (int, float)) and exp.value[0] <= value <= exp.value[1])
        if not ok:
            problems.append(f"{exp.text()}: got {value!r}")
    return problems
