"""Load and save Alpaca-format data, and the shipped seed and evaluation sets.

Alpaca format: a JSON list (or JSONL, one object a line) of records with string fields
`instruction`, `input` (may be missing or empty) and `output`. Extra fields are kept.
Every problem is a one-line `AlpacaFormatError` naming the file, the line or index, and the field:
nothing is skipped silently.

`load_source` reads Alpaca records from whatever a user names: `seed`, a local file or folder, or a Hub
dataset (`tatsu-lab/alpaca`, `yahma/alpaca-cleaned:train`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .files import atomic_write_text, json_lines
from .paths import REPO_ROOT, data_dir

FIELDS = ("instruction", "input", "output")
SEED_FILE = "seed_tasks.jsonl"
EVAL_FILE = "user_oriented_instructions.jsonl"
DAVINCI_FILE = "text-davinci-003_predictions.jsonl"
ALPACA_EVAL_FILE = "alpaca_eval_gpt4_baseline.json"


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
        return [(f"{path}: line {lineno}", obj) for lineno, obj in json_lines(text, path)]
    except ValueError as e:
        raise AlpacaFormatError(str(e)) from None


def load_alpaca(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read Alpaca-format records from a JSON list or a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return [validate_record(obj, where) for where, obj in _read_json_objects(path)]


class DataSourceError(ValueError):
    """A `data_path` that names nothing loadable (no such file, unreachable Hub name, unknown format)."""


TABULAR_SUFFIXES = {".parquet": "parquet", ".csv": "csv"}
JSON_SUFFIXES = {".json", ".jsonl"}


def parse_columns(columns: str | Mapping[str, str] | None) -> dict[str, str]:
    """`instruction=prompt,output=completion` (or a mapping) as {Alpaca field: dataset column}."""
    if not columns:
        return {}
    if isinstance(columns, str):
        pairs = [part.split("=", 1) for part in columns.split(",") if part.strip()]
        if any(len(p) != 2 for p in pairs):
            raise DataSourceError(f"data_columns {columns!r}: expected field=column pairs, e.g. "
                                  "instruction=prompt,output=completion")
        columns = {k.strip(): v.strip() for k, v in pairs}
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise DataSourceError(f"data_columns: {unknown} are not Alpaca fields (use {', '.join(FIELDS)})")
    return dict(columns)


def _rows_to_records(rows: Iterable[Mapping[str, Any]], where: str,
                     columns: Mapping[str, str]) -> list[dict[str, Any]]:
    records = []
    for i, row in enumerate(rows):
        if columns and isinstance(row, Mapping):
            missing = [c for c in columns.values() if c not in row]
            if missing:
                raise DataSourceError(f"{where}: row {i}: no column {missing[0]!r} (columns: {', '.join(row)})")
            row = {**{k: v for k, v in row.items() if k not in columns.values()},
                   **{field: row[column] for field, column in columns.items()}}
        records.append(validate_record(row, f"{where}: row {i}"))
    return records


def _local_path(data_path: str) -> Path | None:
    """An existing local file or folder: as given (from the working directory), else from the repository root."""
    for candidate in (Path(data_path).expanduser(), REPO_ROOT / data_path):
        if candidate.exists():
            return candidate
    return None


def _looked_in() -> list[str]:
    return list(dict.fromkeys([str(Path.cwd()), str(REPO_ROOT)]))


def _dataset_split(loaded: Any, split: str | None, where: str) -> Any:
    """One split of what `datasets` returned (a Dataset, or a DatasetDict: `train` unless named)."""
    if not hasattr(loaded, "keys"):
        return loaded
    name = split or ("train" if "train" in loaded else next(iter(loaded), None))
    if name not in loaded:
        raise DataSourceError(f"{where}: no split {name!r} (splits: {', '.join(loaded) or 'none'})")
    return loaded[name]


def _load_folder(folder: Path, split: str | None) -> Any:
    import datasets

    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _dataset_split(datasets.load_from_disk(str(folder)), split, str(folder))
    return datasets.load_dataset(str(folder), split=split or "train")  # a folder laid out like a Hub repo


def _load_hub(name: str, split: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, typo, private, no such split: one line, whatever datasets raised
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = "; HF_HUB_OFFLINE is set, so the Hub was not asked" if os.environ.get("HF_HUB_OFFLINE", "").lower() \
            in {"1", "true", "yes", "on"} else ""
        raise DataSourceError(
            f"{name}: not a local file or folder (looked in {' and '.join(_looked_in())}) and not loadable as a "
            f"Hub dataset ({reason}){offline}") from None


def load_source(data_path: str, columns: str | Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Alpaca records from `seed`, a local `.json`/`.jsonl`/`.parquet`/`.csv` file, a local folder (a
    `save_to_disk` folder or a Hub-repo layout) or a Hub dataset name with an optional `:split`.

    Every record is validated (`validate_record`, errors name the row); extra fields are kept. `columns`
    maps Alpaca fields to differently named columns. No evaluation-set check here: callers that train add it.
    """
    mapping = parse_columns(columns)
    if data_path == "seed":
        return load_seed_tasks()
    local = _local_path(data_path)
    if local is not None and local.is_file():
        if local.suffix in JSON_SUFFIXES:
            return _rows_to_records((obj for _, obj in _read_json_objects(local)), str(local), mapping)
        if local.suffix not in TABULAR_SUFFIXES:
            raise DataSourceError(f"{local}: unknown data format (use .json, .jsonl, .parquet, .csv, a folder "
                                  "or a Hub dataset name)")
        import datasets

        rows = datasets.load_dataset(TABULAR_SUFFIXES[local.suffix], data_files=str(local), split="train")
        return _rows_to_records(rows, str(local), mapping)
    if local is not None:
        return _rows_to_records(_load_folder(local, None), str(local), mapping)
    name, _, split = data_path.partition(":")
    return _rows_to_records(_load_hub(name, split or None), data_path, mapping)


def source_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many records came from each `source` (e.g. seed, self-instruct); {} when none carries one."""
    counts: dict[str, int] = {}
    for r in records:
        if "source" in r:
            counts[str(r["source"])] = counts.get(str(r["source"]), 0) + 1
    return counts


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


def load_alpaca_eval(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """AlpacaEval's 805 instructions as Alpaca records (empty input), `output` the reference answer of
    `gpt4_1106_preview` (AlpacaEval 2's baseline), plus `dataset` (selfinstruct, oasst, koala, helpful_base,
    vicuna) and `generator`. The 252 `selfinstruct` items are the user-oriented evaluation set."""
    return load_alpaca(path or data_dir() / ALPACA_EVAL_FILE)


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
