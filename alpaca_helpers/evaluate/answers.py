"""The answers under evaluation: the instructions with their reference answers, a model's answers, and files for
alpaca_eval.

`evaluation_items` gives notebook 06's instructions (AlpacaEval's 805 or the 252 user-oriented instructions
with text-davinci-003's answers), `eval_subset` a seeded subset, `generate_answers` a model's answers
(resumable JSONL; `answers_by_model` for several models), and `alpaca_eval_rows` writes answers in
alpaca_eval's format.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data import load_alpaca_eval, load_davinci_predictions, load_eval_set, load_source
from ..demo.decoding import Decoding
from ..demo.generate import extract_response, generate_tokens, load_model
from ..files import append_durable, atomic_write_text, read_complete_jsonl
from ..models import resolve_model
from ..prompts import format_prompt


def eval_subset(records: Sequence[Mapping[str, Any]], size: int | None, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of `size` records, in their original order (all when size is None)."""
    if size is None or size >= len(records):
        return list(range(len(records)))
    return sorted(random.Random(seed).sample(range(len(records)), size))


USER_ORIENTED = "user_oriented"  # the 252 self-instruct evaluation instructions, with text-davinci-003's answers
ALPACA_EVAL = "alpaca_eval"  # AlpacaEval's 805 instructions (shipped), with gpt4_1106_preview's answers


def evaluation_items(eval_data: str = ALPACA_EVAL) -> tuple[list[dict[str, Any]], list[str], str, str]:
    """(items, reference answers, reference generator, dataset name) for notebook 06.

    `alpaca_eval`: AlpacaEval's 805 instructions from the shipped file, the reference being `gpt4_1106_preview`
    (AlpacaEval 2's baseline); `motivation_app` holds the source set (its 252 `selfinstruct` items are the
    user-oriented instructions). `user_oriented`: those 252 (with `id`, `motivation_app`) and
    text-davinci-003's answers, Alpaca's own comparison. Any other name goes through `data.load_source` (a
    file, a folder or a Hub name); each row's `output` is the reference and its `dataset` names the group.
    """
    if eval_data == USER_ORIENTED:
        records = load_eval_set()
        return records, [d["output"] for d in load_davinci_predictions()], "text-davinci-003", \
            "user_oriented_instructions"
    rows = load_alpaca_eval() if eval_data == ALPACA_EVAL else load_source(eval_data)
    items = [{**r, "id": str(r.get("id", i)), "motivation_app": r.get("dataset") or eval_data}
             for i, r in enumerate(rows)]
    generators = {r.get("generator") for r in rows} - {None}
    return items, [r["output"] for r in rows], generators.pop() if len(generators) == 1 else "reference", eval_data


def read_answers(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Answers saved by `generate_answers`, keyed by item id."""
    return {row["id"]: row for row in read_complete_jsonl(path)}


def generate_answers(model: Any, tokenizer: Any, records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                     batch_size: int = 8, progress: bool = True, **decoding: Any) -> dict[str, dict[str, Any]]:
    """Answer every record (each needs an `id`) with `generate_batch`, appending to a JSONL file as it goes.

    Resumable: ids already in the file are skipped, so a crash loses at most the batch in flight. Each line
    stores the decoding settings next to the answer, the number of new tokens and whether the answer ended
    (eos or a stop marker) before `max_new_tokens`.
    """
    path = Path(path)
    settings = Decoding(**decoding)
    limit = settings.max_new_tokens
    done = read_answers(path)
    todo = [r for r in records if r["id"] not in done]
    with tqdm(total=len(records), initial=len(records) - len(todo), desc="answers", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rows = generate_tokens(model, tokenizer, [format_prompt(r) for r in chunk], decoding=settings)
            for record, tokens in zip(chunk, rows):
                # A row shorter than the limit ended on its own: at eos (stripped from `tokens`) or a stop marker.
                row = {"id": record["id"], "instruction": record["instruction"], "input": record.get("input", ""),
                       "output": extract_response(tokenizer.decode(tokens, skip_special_tokens=True)),
                       "new_tokens": len(tokens), "ended": len(tokens) < limit, "decoding": decoding}
                append_durable(path, json.dumps(row, ensure_ascii=False))
                done[record["id"]] = row
            bar.update(len(chunk))
    return done


def answers_by_model(model_paths: Mapping[str, str], records: Sequence[Mapping[str, Any]], folder: str | os.PathLike,
                     stem: str = "answers", batch_size: int = 8, progress: bool = True,
                     **decoding: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """`generate_answers` of each named model ({"base": "default", "fine_tuned": path}) into
    `<folder>/<stem>_<name>.jsonl`. Names that resolve to the same model are answered once: the later name's
    file starts as a copy of the earlier one's, so it is complete and resumable like any other."""
    folder, first_path, out = Path(folder), {}, {}
    for name, model_path in model_paths.items():
        path, source = folder / f"{stem}_{name}.jsonl", resolve_model(model_path)
        if source in first_path and first_path[source] != path:
            shutil.copyfile(first_path[source], path)
        first_path.setdefault(source, path)
        model, tokenizer = load_model(model_path)
        out[name] = generate_answers(model, tokenizer, records, path, batch_size=batch_size, progress=progress,
                                     **decoding)
    return out


def alpaca_eval_rows(records: Sequence[Mapping[str, Any]], outputs: Sequence[str], generator: str,
                     dataset: str) -> list[dict[str, str]]:
    """Rows in alpaca_eval's input format: instruction (with the input appended, as alpaca_eval has no input
    field), output, generator, dataset."""
    rows = []
    for record, output in zip(records, outputs, strict=True):
        instruction = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        rows.append({"instruction": instruction, "output": output, "generator": generator,
                     "dataset": record.get("dataset") or dataset})
    return rows


def save_alpaca_eval(rows: Sequence[Mapping[str, str]], path: str | os.PathLike) -> Path:
    """Write alpaca_eval rows as a JSON list, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(list(rows), ensure_ascii=False, indent=2) + "\n")
    return path
