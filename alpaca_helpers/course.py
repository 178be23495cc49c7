"""Run the whole course: every numbered notebook, top to bottom, with papermill.

    python -m alpaca_helpers.course                 # all notebooks, default parameters
    python -m alpaca_helpers.course --only 00 03    # a few
    python -m alpaca_helpers.course -p gpus 8       # a parameter for every notebook that has it
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT, resolve

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def course_notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally only those whose name starts with one of `only`."""
    books = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
    return books


def notebook_parameters(notebook: Path) -> set[str]:
    """Names of the parameters a notebook declares in its `parameters` cell."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)).keys())


# What a notebook reads from an earlier notebook of the same course run (its output folder, relative path).
# The chain: 01 generates, 02 filters and writes the training set (seed tasks + what passed), 03 tokenizes and
# 04 trains on that set, 06 evaluates what 04 trained, 07 runs its ablation on the same set.
TRAIN_SET = "02_dedup_analysis/train_set.json"
COURSE_LINKS: dict[str, dict[str, str]] = {
    "02_dedup_analysis": {"data_path": "01_self_instruct/regen.json"},
    "03_tokenize_and_mask": {"data_path": TRAIN_SET},
    "04_train": {"data_path": TRAIN_SET},
    "06_evaluate": {"model_path": "04_train/model"},
    "07_understand": {"data_path": TRAIN_SET},
}


def linked_parameters(stem: str, output_dir: Path) -> dict[str, str]:
    """Parameters pointing a notebook at what earlier notebooks of this course run wrote (when it exists)."""
    links = COURSE_LINKS.get(stem, {})
    return {name: str(output_dir / rel) for name, rel in links.items() if (output_dir / rel).exists()}


def run_notebook(notebook: Path, output_dir: Path, parameters: dict[str, Any] | None = None,
                 progress: bool = True) -> Path:
    """Execute one notebook with papermill into `output_dir/<name>`; returns the executed copy's path.

    Each notebook writes its files into `output_dir/<stem>` (its `output_dir` parameter), so a course
    run never mixes with the defaults a user gets in JupyterLab; a notebook that reads an earlier one's
    output (`COURSE_LINKS`) reads this run's. Only parameters the notebook declares are passed.
    """
    import papermill

    declared = notebook_parameters(notebook)
    params = {k: v for k, v in (parameters or {}).items() if k in declared}
    if "output_dir" in declared:
        params.setdefault("output_dir", str(output_dir / notebook.stem))
    for name, value in linked_parameters(notebook.stem, output_dir).items():
        if name in declared:
            params.setdefault(name, value)
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / notebook.name
    papermill.execute_notebook(str(notebook), str(executed), parameters=params, cwd=str(notebook.parent),
                               progress_bar=progress, kernel_name="python3")
    return executed


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="notebook number prefixes to run (default: all)")
    parser.add_argument("--output-dir", default="runs/course", help="where executed notebooks and outputs go")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter for every notebook that declares it (value parsed as JSON if it can be)")
    args = parser.parse_args(argv)
    out = resolve(args.output_dir)
    params = {k: _parse_value(v) for k, v in args.parameter}
    books = course_notebooks(args.only)
    if not books:
        print("no notebook matched", file=sys.stderr)
        return 2
    timings = {}
    for i, book in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {book.name}", flush=True)
        start = time.perf_counter()
        run_notebook(book, out, params)
        timings[book.name] = round(time.perf_counter() - start, 1)
        print(f"    done in {timings[book.name]} s -> {out / book.name}", flush=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"course finished: {len(books)} notebooks in {sum(timings.values()):.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
