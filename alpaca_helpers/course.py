"""Run the whole course: every numbered notebook, top to bottom, with papermill.

    python -m alpaca_helpers.course                 # all notebooks, default parameters
    python -m alpaca_helpers.course --only 00 03    # a few
    python -m alpaca_helpers.course -p gpus 8       # a parameter for every notebook that has it
    python -m alpaca_helpers.course --check notebooks/03_tokenize_and_mask.ipynb   # grade your exercises
    python -m alpaca_helpers.course --check notebooks/03_tokenize_and_mask.ipynb --saved   # the same, in seconds

Each executed notebook is also written as HTML (`<output_dir>/html/`) to hand out, and its `summary.json` is
checked against what the notebook says you should see. Kernels talk over local IPC sockets, not TCP ports.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from .cli import ArgumentParser
from .exercises import Grade, grade, grade_saved, with_solutions
from .expectations import unmet
from .files import atomic_write_text
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
# 04 trains on that set, 06 evaluates what 04 trained, 07 runs its ablation on the same set, 08 its safety dose,
# 09 learns from feedback, starting from what 04 trained, on prompts built from the same set.
TRAIN_SET = "02_dedup_analysis/train_set.json"
COURSE_LINKS: dict[str, dict[str, str]] = {
    "02_dedup_analysis": {"data_path": "01_self_instruct/regen.json"},
    "03_tokenize_and_mask": {"data_path": TRAIN_SET},
    "04_train": {"data_path": TRAIN_SET},
    "06_evaluate": {"model_path": "04_train/model"},
    "07_understand": {"data_path": TRAIN_SET},
    "08_safety": {"data_path": TRAIN_SET},
    "09_feedback": {"model_name_or_path": "04_train/model", "data_path": TRAIN_SET},
}


def linked_parameters(stem: str, output_dir: Path) -> dict[str, str]:
    """Parameters pointing a notebook at what earlier notebooks of this course run wrote (when it exists)."""
    links = COURSE_LINKS.get(stem, {})
    return {name: str(output_dir / rel) for name, rel in links.items() if (output_dir / rel).exists()}


def ipc_kernel_manager() -> type:
    """A Jupyter kernel manager whose kernels listen on local IPC sockets instead of loopback TCP ports.

    No port is opened, and ipykernel has no reason to warn that its TCP traffic is unencrypted.
    """
    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

    return IPCKernelManager


def course_parameters(notebook: Path, output_dir: Path, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters a course run passes to `notebook`: those it declares, its output folder, its links."""
    declared = notebook_parameters(notebook)
    params = {k: v for k, v in (parameters or {}).items() if k in declared}
    if "output_dir" in declared:
        params.setdefault("output_dir", str(output_dir / notebook.stem))
    for name, value in linked_parameters(notebook.stem, output_dir).items():
        if name in declared:
            params.setdefault(name, value)
    return params


def run_notebook(notebook: Path, output_dir: Path, parameters: dict[str, Any] | None = None,
                 progress: bool = True, solutions: bool = False) -> Path:
    """Execute one notebook with papermill into `output_dir/<name>`; returns the executed copy's path.

    Each notebook writes its files into `output_dir/<stem>` (its `output_dir` parameter), so a course
    run never mixes with the defaults a user gets in JupyterLab; a notebook that reads an earlier one's
    output (`COURSE_LINKS`) reads this run's. Only parameters the notebook declares are passed. With
    `solutions`, the exercise cells run the code of `solutions/<notebook>.md` (for teachers and the tests).
    """
    import nbformat
    import papermill

    params = course_parameters(notebook, output_dir, parameters)
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / notebook.name
    source: Any = str(notebook)
    if solutions:
        source = nbformat.read(notebook, as_version=4)
        with_solutions(source, notebook.stem)
    papermill.execute_notebook(source, str(executed), parameters=params, cwd=str(notebook.parent),
                               progress_bar=progress, kernel_name="python3",
                               kernel_manager_class=ipc_kernel_manager())
    return executed


def notebook_output_dir(notebook: Path, output_dir: Path, parameters: dict[str, Any] | None = None) -> Path:
    """Where a course run of `notebook` writes its files (its `output_dir` parameter, resolved)."""
    return resolve(course_parameters(notebook, output_dir, parameters).get("output_dir", output_dir / notebook.stem))


def export_html(executed: Path, html_dir: Path) -> Path:
    """An HTML copy of an executed notebook, with its outputs, to hand out."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    path = html_dir / f"{executed.stem}.html"
    atomic_write_text(path, body)
    return path


def check_notebook(notebook: Path, output_dir: Path, parameters: dict[str, Any] | None = None,
                   solutions: bool = False) -> list[Grade]:
    """Run a (learner's) notebook and grade its exercises from the numbers it recorded."""
    run_notebook(notebook, output_dir, parameters, progress=False, solutions=solutions)
    return grade(notebook.stem, notebook_output_dir(notebook, output_dir, parameters))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _check_main(paths: list[str], out: Path, params: dict[str, Any], solutions: bool, saved: bool = False) -> int:
    """`--check`: run each named notebook (a learner's copy may live anywhere) and print its grades; with
    `saved`, grade the answers its last run saved instead (nothing runs)."""
    all_right = True
    for name in paths:
        notebook = resolve(name)
        if not notebook.is_file() or notebook.suffix != ".ipynb":
            print(f"error: {name}: no such notebook (a .ipynb file)", file=sys.stderr)
            return 2
        if saved:
            grades, source = grade_saved(notebook)
            when = (f"saved {time.strftime('%H:%M', time.localtime(source.stat().st_mtime))}" if source.exists()
                    else "none saved yet: run the exercise cells first")
            print(f"checking {notebook.name} from the answers its last run saved ({source}, {when})", flush=True)
        else:
            print(f"checking {notebook.name} (running it top to bottom: from seconds (00) to about 5 minutes "
                  "(07, 08) on 2 cores; --saved grades your last run's answers at once)", flush=True)
            grades = check_notebook(notebook, out, params, solutions)
        for g in grades:
            print("  " + g.line())
        if not grades:
            print("  (this notebook has no exercises)")
        all_right &= all(g.right for g in grades)
    return 0 if all_right else 1


def _run_course(books: list[Path], out: Path, params: dict[str, Any]) -> int:
    timings = {}
    for i, book in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {book.name}", flush=True)
        start = time.perf_counter()
        executed = run_notebook(book, out, params)
        timings[book.name] = round(time.perf_counter() - start, 1)
        html = export_html(executed, out / "html")
        print(f"    done in {timings[book.name]} s -> {executed} (HTML: {html})", flush=True)
        summary = notebook_output_dir(book, out, params) / "summary.json"
        if summary.exists():
            for problem in unmet(book, json.loads(summary.read_text())):
                print(f"    outside what the notebook says you should see: {problem}", flush=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"course finished: {len(books)} notebooks in {sum(timings.values()):.0f} s; outputs in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="notebook number prefixes to run (default: all)")
    parser.add_argument("--output_dir", default="runs/course", help="where executed notebooks and outputs go")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter for every notebook that declares it (value parsed as JSON if it can be)")
    parser.add_argument("--check", nargs="+", metavar="NOTEBOOK",
                        help="run these notebooks (yours) and grade their exercises; exit 1 unless all are right")
    parser.add_argument("--solutions", action="store_true",
                        help="with --check: run the exercise cells with the code of solutions/<notebook>.md")
    parser.add_argument("--saved", action="store_true",
                        help="with --check: grade the answers the notebook's last run saved (seconds) instead of "
                             "running it")
    args = parser.parse_args(argv)
    out = resolve(args.output_dir)
    params = {k: _parse_value(v) for k, v in args.parameter}
    if args.check:
        return _check_main(args.check, resolve("runs/check") if args.output_dir == "runs/course" else out, params,
                           args.solutions, args.saved)
    books = course_notebooks(args.only)
    if not books:
        print("no notebook matched", file=sys.stderr)
        return 2
    return _run_course(books, out, params)


if __name__ == "__main__":
    raise SystemExit(main())
