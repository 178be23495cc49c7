"""Load and save Alpaca-format data, and the shipped seed and evaluation sets.

Alpaca format: a JSON list (or JSONL, one object a line) of records with string fields
`instruction`, `input` (may be missing or empty) and `output`. Extra fields are kept.
Every problem is a one-line `AlpacaFormatError` naming the file, the line or index, and the field:
nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .paths import data_dir

FIELDS = ("instruction", "input", "output")
SEED_FILE = "seed_tasks.jsonl"
EVAL_FILE = "user_oriented_instructions.jsonl"
DAVINCI_FILE = "text-davinci-003_predictions.jsonl"


class AlpacaFormatError(ValueError):
    """A record or file that is not valid Alpaca data; the message names where and what."""


def validate_record(record: Any, where: str) -> dict[str, Any]:
    """Check one record and return a copy with `input` defaulted to "" (`where` names it in errors)."""
    if not isinstance(record, Mapping):
        raise AlpacaFormatError(f"{where}: expected an object, got {type(record).__name__}")
    out = dict(record)
    out.setdefault("input", "")
    if out["input"] is None:
        out["input"] = ""
    for field in FIELDS:
        if field not in out:
            raise AlpacaFormatError(f"{where}: missing field '{field}'")
        if not isinstance(out[field], str):
            raise AlpacaFormatError(
                f"{where}: field '{field}' must be a string, got {type(out[field]).__name__}"
            )
    if not out["instruction"].strip():
        raise AlpacaFormatError(f"{where}: field 'instruction' is empty")
    return out


def _read_json_objects(path: Path) -> list[tuple[str, Any]]:
    """Parse a JSON list or a JSONL file into (location, object) pairs, with one-line errors."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise AlpacaFormatError(f"{path}: line {e.lineno}: malformed JSON ({e.msg})") from None
        return [(f"{path}: index {i}", item) for i, item in enumerate(items)]
    try:
        return [(f"{path}: line {lineno}", obj) for lineno, obj in _json_lines(text, path)]
    except ValueError as e:
        raise AlpacaFormatError(str(e)) from None


def _json_lines(text: str, path: Path) -> list[tuple[int, Any]]:
    """(line number, object) for each non-blank line of JSONL text; a malformed line is a ValueError
    naming the file and line.

    Lines end at "\n" only: JSON written with ensure_ascii=False may hold U+2028 or U+0085 inside a
    string, where str.splitlines would also break.
    """
    objects = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            objects.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {lineno}: malformed JSON ({e.msg})") from None
    return objects


def load_alpaca(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read Alpaca-format records from a JSON list or a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return [validate_record(obj, where) for where, obj in _read_json_objects(path)]


def save_alpaca(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write records as a JSON list (`.json`) or JSONL (`.jsonl`), atomically; returns the path."""
    path = Path(path)
    checked = [validate_record(r, f"record {i}") for i, r in enumerate(records)]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in checked)
    else:
        text = json.dumps(checked, ensure_ascii=False, indent=4) + "\n"
    atomic_write_text(path, text)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside `folder` to write into; when the block ends without an
    error it replaces `folder` in one rename, otherwise it is removed. A crash leaves the old folder (or
    none), never half of a new one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; these folders are meant to be shared like the Hub cache
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def complete_lines(path: str | os.PathLike) -> str:
    """A line-oriented file's text up to its last newline ("" if absent).

    Appends are whole lines, so text after the last newline can only be a line torn by a crash: left out.
    """
    path = Path(path)
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    return text[: text.rfind("\n") + 1]


def read_complete_jsonl(path: str | os.PathLike) -> list[Any]:
    """The objects of a JSONL file written by `append_durable` (a line torn by a crash is left out)."""
    return [obj for _, obj in _json_lines(complete_lines(path), Path(path))]


def append_durable(path: str | os.PathLike, lines: str) -> None:
    """Append one or more lines (no trailing newline needed) in one write, then fsync.

    A torn last line left by an earlier crash is cut off first, so the new lines start clean. A crash
    during this call can leave only a prefix of `lines`, the last of them torn (`complete_lines` skips it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.seek(0, os.SEEK_END)
        f.write(lines.rstrip("\n").encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _first_instance(task: Any, where: str) -> Mapping[str, Any]:
    instances = task.get("instances") if isinstance(task, Mapping) else None
    if not isinstance(instances, list) or not instances or not isinstance(instances[0], Mapping):
        raise AlpacaFormatError(f"{where}: field 'instances' must be a non-empty list of objects")
    return instances[0]


def _tasks_to_alpaca(path: Path, extra: tuple[str, ...]) -> list[dict[str, Any]]:
    """Convert self-instruct task files (instruction + instances[0]) to Alpaca records."""
    records = []
    for where, task in _read_json_objects(path):
        inst = _first_instance(task, where)
        record = {"instruction": task.get("instruction"), "input": inst.get("input", ""),
                  "output": inst.get("output")}
        record.update({k: task[k] for k in extra if k in task})
        records.append(validate_record(record, where))
    return records


def load_seed_tasks(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The 175 self-instruct seed tasks as Alpaca records (plus `id`, `name`, `is_classification`)."""
    return _tasks_to_alpaca(Path(path or data_dir() / SEED_FILE), ("id", "name", "is_classification"))


def load_eval_set(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The 252 user-oriented evaluation instructions as Alpaca records (plus `id`, `motivation_app`).

    `output` is the human-written reference answer. Never train on these.
    """
    return _tasks_to_alpaca(Path(path or data_dir() / EVAL_FILE), ("id", "motivation_app"))


def load_davinci_predictions(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """text-davinci-003's answers to the evaluation set, same order, as Alpaca records.

    `output` is the response with surrounding whitespace stripped (the raw text keeps a leading space).
    """
    path = Path(path or data_dir() / DAVINCI_FILE)
    records = []
    for where, row in _read_json_objects(path):
        if not isinstance(row, Mapping) or not isinstance(row.get("response"), str):
            raise AlpacaFormatError(f"{where}: field 'response' must be a string")
        record = {"instruction": (row.get("instruction") or "").strip(), "input": row.get("input", ""),
                  "output": row["response"].strip()}
        records.append(validate_record(record, where))
    return records


def _task_key(record: Mapping[str, Any]) -> tuple[str, str]:
    return tuple(" ".join((record.get(f) or "").lower().split()) for f in ("instruction", "input"))


def check_not_eval_set(records: Iterable[Mapping[str, Any]], eval_records: Iterable[Mapping[str, Any]] | None = None,
                       source: str = "training data") -> None:
    """Refuse training data that contains a task of the evaluation set: the same instruction and input, case
    and spacing ignored. (Instruction alone is too strict: generic ones such as "Answer the following
    question." appear in both the seed and the evaluation set with different inputs.)

    Training on the 252 evaluation tasks would make notebook 06's comparison meaningless.
    """
    held_out = {_task_key(r) for r in (eval_records if eval_records is not None else load_eval_set())}
    leaked = [i for i, r in enumerate(records) if _task_key(r) in held_out]
    if leaked:
        raise AlpacaFormatError(f"{source}: {len(leaked)} record(s) repeat evaluation-set instructions "
                                f"(first at index {leaked[0]}); never train on the evaluation set")
