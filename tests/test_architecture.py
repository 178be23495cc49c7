"""The package's layout rules (docs/architecture.md): no import circles, and no stage imports a later stage.

Every import counts, also those inside functions: a lazy import still ties the two modules together.
The rules are shown to bite on small synthetic packages, not by editing the real one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import alpaca_helpers

# The recipe's order; the shared basics (the package's top-level modules) come before every stage.
STAGES = ("self_instruct", "train", "demo", "evaluate", "understand", "safety", "feedback")


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imported_modules(path: Path, name: str, package: str, known: set[str]) -> set[str]:
    """The package's own modules that the file at `path` (module `name`) imports, anywhere in it."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            # `from pkg.demo import generate` names a module; `from pkg.data import load` names a thing in one
            targets = [f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in known else mod for alias in node.names]
        else:
            continue
        for target in targets:
            # the longest known module the target names ("pkg.train.config.X" -> "pkg.train.config")
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != package:
                found.add(target)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = {module_name(p, root, package): p for p in root.rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path, name, package, known) for name, path in files.items()}


def stage_of(module: str, package: str, stages: tuple[str, ...]) -> int:
    """0 for the shared basics, 1.. for the stages in recipe order."""
    first = module[len(package) + 1:].split(".")[0]
    return stages.index(first) + 1 if first in stages else 0


def upward_imports(graph: dict[str, set[str]], package: str, stages: tuple[str, ...]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if stage_of(b, package, stages) > stage_of(a, package, stages))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


PACKAGE_ROOT = Path(alpaca_helpers.__file__).parent


def test_the_package_has_no_import_circle() -> None:
    assert circles(import_graph(PACKAGE_ROOT, "alpaca_helpers")) == []


def test_no_module_imports_a_later_stage() -> None:
    assert upward_imports(import_graph(PACKAGE_ROOT, "alpaca_helpers"), "alpaca_helpers", STAGES) == []


def test_every_stage_folder_is_a_known_stage() -> None:
    folders = {p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(STAGES), "add a new stage folder to STAGES here and to docs/architecture.md"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


LAYOUT = {"__init__.py": "", "paths.py": "", "train/__init__.py": "", "demo/__init__.py": "",
          "train/config.py": "from ..paths import x\n", "demo/generate.py": "from ..train.config import y\n"}


def test_the_rules_pass_a_clean_synthetic_package(tmp_path: Path) -> None:
    graph = import_graph(_write(tmp_path, LAYOUT), "pkg")
    assert graph["pkg.demo.generate"] == {"pkg.train.config"}
    assert circles(graph) == [] and upward_imports(graph, "pkg", ("train", "demo")) == []


def test_a_circle_is_caught_also_through_a_lazy_import(tmp_path: Path) -> None:
    root = _write(tmp_path, {**LAYOUT, "train/lora.py": "from .config import z\n",
                             "train/config.py": "def check():\n    from .lora import apply\n"})
    assert circles(import_graph(root, "pkg")) == [["pkg.train.config", "pkg.train.lora"]]


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    root = _write(tmp_path, {**LAYOUT, "train/launch.py": "from pkg.demo import generate\n",
                             "paths.py": "import pkg.train.config\n"})
    assert upward_imports(import_graph(root, "pkg"), "pkg", ("train", "demo")) == [
        "pkg.paths -> pkg.train.config", "pkg.train.launch -> pkg.demo.generate"]


# Imported inside the functions that use them (pyproject's ruff TID253), so that importing the package is quick.
HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft", "openai", "pandas", "nltk")


def test_importing_any_module_loads_no_heavy_library() -> None:
    """A notebook cell or a CLI that refuses a mistake in one line must not wait for torch to load."""
    modules = sorted(m for m in import_graph(PACKAGE_ROOT, "alpaca_helpers") if not m.endswith(".__main__"))
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"    heavy = [h for h in {HEAVY!r} if h in sys.modules]\n"
            "    if heavy:\n"
            "        print(name, 'loads', ', '.join(heavy)); break\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""

