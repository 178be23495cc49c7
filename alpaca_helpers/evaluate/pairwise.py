"""Alpaca's evaluation: blind pairwise comparison with text-davinci-003 on the 252 user-oriented instructions.

Steps: answer the instructions with a model (`generate_answers`, resumable JSONL), pair each answer with
text-davinci-003's in a seeded random left/right order (`make_blind_pairs`, the key kept apart), collect
votes from people (`VoteStore`, one CSV line per vote) or from a judge model asked in both orders
(`judge_item`, read from its text; `judge_item_weighted`, read from its token log-probabilities, through an
endpoint that returns them or `LocalJudge` in this process), and count (`tally`, `weighted_win_rate`).
`alpaca_eval_rows` writes the answers in alpaca_eval's format.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import append_durable, atomic_write_text, complete_lines, read_complete_jsonl

MODEL, REFERENCE = "model", "reference"
WIN, LOSS, TIE, UNPARSED = "win", "loss", "tie", "unparsed"
CHOICES = ("A", "B", "tie")


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
    from ..data import load_alpaca_eval, load_davinci_predictions, load_eval_set, load_source

    if eval_data == USER_ORIENTED:
        records = load_eval_set()
        return records, [d["output"] for d in load_davinci_predictions()], "text-davinci-003", \
            "user_oriented_instructions"
    rows = load_alpaca_eval() if eval_data == ALPACA_EVAL else load_source(eval_data)
    items = [{**r, "id": str(r.get("id", i)), "motivation_app": r.get("dataset") or eval_data}
             for i, r in enumerate(rows)]
    generators = {r.get("generator") for r in rows} - {None}
    return items, [r["output"] for r in rows], generators.pop() if len(generators) == 1 else "reference", eval_data


# ---------------------------------------------------------------------------------------------------------
# Answers


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
    from tqdm.auto import tqdm

    from ..demo.generate import DECODING_DEFAULTS, extract_response, generate_tokens
    from ..prompts import format_prompt

    path = Path(path)
    limit = decoding.get("max_new_tokens", DECODING_DEFAULTS["max_new_tokens"])
    done = read_answers(path)
    todo = [r for r in records if r["id"] not in done]
    with tqdm(total=len(records), initial=len(records) - len(todo), desc="answers", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rows = generate_tokens(model, tokenizer, [format_prompt(r) for r in chunk], **decoding)
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
    import shutil

    from ..demo.generate import load_model
    from ..models import resolve_model

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


# ---------------------------------------------------------------------------------------------------------
# Blind pairs


def make_blind_pairs(records: Sequence[Mapping[str, Any]], model_answers: Sequence[str],
                     reference_answers: Sequence[str], seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Pair each model answer with the reference answer in a seeded random order.

    Returns what a rater may see (id, category, instruction, input, answer_a, answer_b) and, separately, the
    key: for each id, which side is the model's ("A" or "B"). The same seed gives the same order.
    """
    rng = random.Random(seed)
    visible, key = [], {}
    for record, ours, theirs in zip(records, model_answers, reference_answers, strict=True):
        model_side = rng.choice("AB")
        a, b = (ours, theirs) if model_side == "A" else (theirs, ours)
        visible.append({"id": record["id"], "category": record.get("motivation_app", ""),
                        "instruction": record["instruction"], "input": record.get("input", ""),
                        "answer_a": a, "answer_b": b})
        key[record["id"]] = model_side
    return visible, key


def save_blind_pairs(visible: Sequence[Mapping[str, Any]], key: Mapping[str, str], folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write `pairs.jsonl` (for raters) and `pairs_key.json` (the hidden mapping) into `folder`."""
    folder = Path(folder)
    pairs, key_path = folder / "pairs.jsonl", folder / "pairs_key.json"
    atomic_write_text(pairs, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in visible))
    atomic_write_text(key_path, json.dumps(dict(key), indent=1) + "\n")
    return pairs, key_path


def outcome_of_choice(choice: str, model_side: str) -> str:
    """A rater's choice ("A", "B" or "tie") as the model's outcome: win, loss or tie."""
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}; expected one of {CHOICES}")
    if choice == "tie":
        return TIE
    return WIN if choice == model_side else LOSS


# ---------------------------------------------------------------------------------------------------------
# Votes from people


@dataclass
class VoteStore:
    """One rater's votes, one CSV line per vote, written and synced at once (closing the notebook loses
    nothing; a line torn by a crash is ignored on read and repaired on the next write)."""

    path: Path
    rater: str
    columns: tuple[str, ...] = field(default=("time", "rater", "id", "choice"), init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not re.fullmatch(r"[\w .-]+", self.rater or ""):
            raise ValueError(f"rater name {self.rater!r}: use letters, digits, spaces, '.', '-' or '_'")

    def add(self, item_id: str, choice: str) -> None:
        """Record one vote ("A", "B" or "tie") for an item."""
        if choice not in CHOICES:
            raise ValueError(f"unknown choice {choice!r}; expected one of {CHOICES}")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="")
        if not self.path.exists() or self.path.stat().st_size == 0:
            writer.writerow(self.columns)
            append_durable(self.path, buffer.getvalue())
            buffer.seek(0), buffer.truncate()
        writer.writerow((datetime.now(timezone.utc).isoformat(timespec="seconds"), self.rater, item_id, choice))
        append_durable(self.path, buffer.getvalue())

    def votes(self) -> dict[str, str]:
        """This file's votes by item id (a later vote on the same item replaces an earlier one)."""
        return {row["id"]: row["choice"] for row in read_votes([self.path])}

    def next_item(self, item_ids: Sequence[str]) -> str | None:
        """The first item not yet rated, or None when all are."""
        rated = self.votes()
        return next((i for i in item_ids if i not in rated), None)


def read_votes(paths: Iterable[str | os.PathLike]) -> list[dict[str, str]]:
    """All complete vote rows of several raters' CSV files (torn last lines are ignored)."""
    rows = []
    for path in paths:
        rows.extend(row for row in csv.DictReader(io.StringIO(complete_lines(path))) if row.get("choice") in CHOICES)
    return rows


def last_votes(rows: Iterable[Mapping[str, str]]) -> dict[tuple[str, str], str]:
    """Each rater's last choice per item: {(rater, id): choice} (a later vote replaces an earlier one)."""
    return {(row["rater"], row["id"]): row["choice"] for row in rows}


def vote_outcomes(rows: Iterable[Mapping[str, str]], key: Mapping[str, str]) -> list[dict[str, str]]:
    """Each rater's last vote per item, as the model's outcome: [{rater, id, outcome}]. Votes on items the
    key does not hold (pairs of another subset) are left out."""
    return [{"rater": r, "id": i, "outcome": outcome_of_choice(c, key[i])}
            for (r, i), c in last_votes(rows).items() if i in key]


# ---------------------------------------------------------------------------------------------------------
# The judge model

JUDGE_PROMPT = """You are an impartial reviewer comparing two answers written for the same request.
Decide which answer serves the person better: it follows the request, is correct, and is clear.
Do not prefer an answer because it is longer, and do not let the order of the answers sway you.

Request:
{instruction}{input_block}

Answer 1:
{answer_1}

Answer 2:
{answer_2}

Give your decision on the last line, exactly in one of these forms:
Verdict: 1
Verdict: 2
Verdict: tie"""

_VERDICT = re.compile(r"^\s*\**\s*verdict\s*\**\s*:\s*\**\s*(1|2|tie)\s*\**\s*\.?\s*$", re.I | re.M)


def judge_prompt(instruction: str, input: str, answer_1: str, answer_2: str) -> str:
    """The pairwise preference prompt sent to the judge (our own wording)."""
    input_block = f"\n\nInput:\n{input}" if input else ""
    return JUDGE_PROMPT.format(instruction=instruction, input_block=input_block, answer_1=answer_1,
                               answer_2=answer_2)


def parse_verdict(text: str) -> str | None:
    """"1", "2" or "tie" from a judge's reply, or None unless exactly one verdict form is present.

    Strict on purpose: a reply without a `Verdict:` line, or with conflicting ones, is counted as unparseable
    rather than guessed.
    """
    found = {m.group(1).lower() for m in _VERDICT.finditer(text or "")}
    return found.pop() if len(found) == 1 else None


def combine_orders(first: str | None, second: str | None) -> str:
    """The model's outcome from two verdicts: `first` with the model's answer as 1, `second` with it as 2.

    Each verdict counts +1 for the side it prefers and 0 for a tie; the sign of the sum decides. A judge that
    always picks the first position thus yields a tie, which cancels position bias.
    """
    if first is None or second is None:
        return UNPARSED
    score = {"1": 1, "2": -1, "tie": 0}[first] + {"1": -1, "2": 1, "tie": 0}[second]
    return WIN if score > 0 else LOSS if score < 0 else TIE


def judge_item(ask: Callable[[str], str], instruction: str, input: str, model_answer: str,
               reference_answer: str) -> dict[str, Any]:
    """Ask the judge in both orders; returns the two raw replies, the two verdicts and the outcome."""
    replies = [ask(judge_prompt(instruction, input, model_answer, reference_answer)),
               ask(judge_prompt(instruction, input, reference_answer, model_answer))]
    verdicts = [parse_verdict(r) for r in replies]
    return {"replies": replies, "verdicts": verdicts, "outcome": combine_orders(*verdicts)}


# ---------------------------------------------------------------------------------------------------------
# Counting


def tally(outcomes: Iterable[str]) -> dict[str, Any]:
    """Wins, losses, ties and unparsed counts, and the model's win rate with its standard error.

    Win rate counts a tie as half a win, over the parsed items; its standard error is the sample standard
    deviation of the per-item scores (1, 0.5, 0) over sqrt(n); both are None when there are too few items
    (0, or 1 for the error). `record` is Alpaca's "90 vs 89" style.
    """
    outcomes = list(outcomes)
    counts = {k: outcomes.count(k) for k in (WIN, LOSS, TIE, UNPARSED)}
    unknown = set(outcomes) - set(counts)
    if unknown:
        raise ValueError(f"unknown outcomes: {sorted(unknown)}")
    scores = [{WIN: 1.0, TIE: 0.5, LOSS: 0.0}[o] for o in outcomes if o != UNPARSED]
    n = len(scores)
    rate = sum(scores) / n if n else None
    se = math.sqrt(sum((s - rate) ** 2 for s in scores) / (n - 1) / n) if n > 1 else None
    return {"wins": counts[WIN], "losses": counts[LOSS], "ties": counts[TIE], "unparsed": counts[UNPARSED],
            "n": n, "win_rate": rate, "win_rate_se": se, "record": f"{counts[WIN]} vs {counts[LOSS]}"}


def tally_by(outcomes: Sequence[str], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`tally` per group (for example per `motivation_app`), groups in order of size."""
    by: dict[str, list[str]] = {}
    for outcome, group in zip(outcomes, groups, strict=True):
        by.setdefault(group, []).append(outcome)
    return {g: tally(by[g]) for g in sorted(by, key=lambda g: (-len(by[g]), g))}


def mean_words(texts: Iterable[str]) -> float:
    """Average answer length in words (judges tend to favour the longer side)."""
    lengths = [len(t.split()) for t in texts]
    return sum(lengths) / len(lengths) if lengths else 0.0


def _count_usage(usage: dict[str, Any], reply: Any) -> None:
    """Add one request's tokens to a judge run's usage counts."""
    usage["requests"] += 1
    usage["prompt_tokens"] += reply.prompt_tokens
    usage["completion_tokens"] += reply.completion_tokens


JudgeRun = tuple[list[dict[str, Any]], dict[str, Any]]  # per-item results and the usage of one judge run


def judge_each(judge: Any, items: Sequence[Mapping[str, Any]],
               judge_one: Callable[[Callable[[str], Any], Mapping[str, Any]], dict[str, Any]], desc: str,
               top_logprobs: int | None = None, progress: bool = True) -> JudgeRun:
    """The one judge loop: `judge_one(ask, item)` for every item, with a `Teacher` or a `LocalJudge`.

    `ask(prompt)` returns the judge's reply text, or with `top_logprobs` its first reply token's alternatives.
    Returns the per-item results (each with the item's id) and the usage: requests, tokens and the estimated
    dollar cost from the teacher's price table (0 in this process, None for unknown models).
    """
    from tqdm.auto import tqdm

    from ..self_instruct.teacher import estimate_cost

    usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def ask(prompt: str) -> Any:
        reply = judge.complete(prompt, top_logprobs=top_logprobs)
        _count_usage(usage, reply)
        return reply.top_logprobs if top_logprobs else reply.text

    results = [{"id": item["id"], **judge_one(ask, item)} for item in tqdm(items, desc=desc, disable=not progress)]
    if isinstance(judge, LocalJudge):
        usage["cost_usd"] = 0.0
    else:
        cfg = judge.config
        usage["cost_usd"] = estimate_cost(cfg.model, usage["prompt_tokens"], usage["completion_tokens"], cfg.base_url)
    return results, usage


def run_judge(judge: Any, items: Sequence[Mapping[str, Any]], progress: bool = True) -> JudgeRun:
    """Judge every item ({id, instruction, input, model_answer, reference_answer}) in both orders from the judge's
    text. Returns per-item results (id, outcome, verdicts, raw replies) and the usage (`judge_each`)."""
    def one(ask: Callable[[str], str], item: Mapping[str, Any]) -> dict[str, Any]:
        return judge_item(ask, item["instruction"], item.get("input", ""), item["model_answer"],
                          item["reference_answer"])

    return judge_each(judge, items, one, "judge (both orders)", progress=progress)


def format_tally(result: Mapping[str, Any]) -> str:
    """One line for a `tally` result, e.g. "90 vs 89 (ties 3, unparsed 0), win rate 0.50 ± 0.04"."""
    line = f"{result['record']} (ties {result['ties']}, unparsed {result['unparsed']})"
    if result["win_rate"] is not None:
        line += f", win rate {result['win_rate']:.2f}"
        if result["win_rate_se"] is not None:
            line += f" ± {result['win_rate_se']:.2f}"
    return line


# ---------------------------------------------------------------------------------------------------------
# The judge from log-probabilities (as alpaca_eval's weighted judges): no reply to parse, a preference per order

WEIGHTED_JUDGE_PROMPT = JUDGE_PROMPT.rsplit("\n\nGive your decision", 1)[0] + """

Which answer is better? Reply with one character: 1 or 2."""
VERDICT_TOKENS = ("1", "2")
TOP_LOGPROBS = 20  # alternatives asked for (OpenAI's maximum); both verdict tokens are among them in practice


def weighted_judge_prompt(instruction: str, input: str, answer_1: str, answer_2: str) -> str:
    """The pairwise prompt for a judge read through its log-probabilities: the reply is one token, 1 or 2."""
    input_block = f"\n\nInput:\n{input}" if input else ""
    return WEIGHTED_JUDGE_PROMPT.format(instruction=instruction, input_block=input_block, answer_1=answer_1,
                                        answer_2=answer_2)


def verdict_preference(top_logprobs: Mapping[str, float]) -> float | None:
    """The judge's probability that answer 1 is better: P("1") / (P("1") + P("2")) over its first reply token.

    Tokens are compared with surrounding spaces removed (" 1" counts as "1"). None when neither verdict token
    is among the alternatives given.
    """
    mass = dict.fromkeys(VERDICT_TOKENS, 0.0)
    for token, logprob in top_logprobs.items():
        if token.strip() in mass:
            mass[token.strip()] += math.exp(logprob)
    total = sum(mass.values())
    return mass["1"] / total if total > 0 else None


def _side(preference: float) -> str:
    return "1" if preference > 0.5 else "2" if preference < 0.5 else "tie"


def judge_item_weighted(top_logprobs: Callable[[str], Mapping[str, float]], instruction: str, input: str,
                        model_answer: str, reference_answer: str) -> dict[str, Any]:
    """Ask a log-probability judge in both orders.

    Returns `preferences` (P(answer 1 better) in each order), `preference` (the model's: the mean of
    P(model better) over both orders, in [0, 1]), the two counted `verdicts` (the likelier side of each order)
    and the `outcome` they give with `combine_orders`.
    """
    prompts = [weighted_judge_prompt(instruction, input, model_answer, reference_answer),
               weighted_judge_prompt(instruction, input, reference_answer, model_answer)]
    preferences = [verdict_preference(top_logprobs(p)) for p in prompts]
    if None in preferences:
        return {"preferences": preferences, "preference": None, "verdicts": [None, None], "outcome": UNPARSED}
    verdicts = [_side(p) for p in preferences]
    return {"preferences": preferences, "preference": (preferences[0] + 1 - preferences[1]) / 2,
            "verdicts": verdicts, "outcome": combine_orders(*verdicts)}


def preference_of(result: Mapping[str, Any]) -> float | None:
    """The model's preference in [0, 1] from one judged item: the probability judge's, else its outcome as
    1 (win), 0.5 (tie) or 0 (loss); None when unparsed."""
    if result.get("preference") is not None:
        return result["preference"]
    return {WIN: 1.0, TIE: 0.5, LOSS: 0.0}.get(result["outcome"])


def weighted_win_rate(preferences: Iterable[float | None]) -> dict[str, Any]:
    """The mean of the model's preferences (alpaca_eval's weighted win rate) with its standard error, over the
    items that have one."""
    values = [p for p in preferences if p is not None]
    n = len(values)
    rate = sum(values) / n if n else None
    se = math.sqrt(sum((v - rate) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    return {"weighted_win_rate": rate, "weighted_win_rate_se": se, "n_weighted": n}


class LocalJudge:
    """A judge model run in this process, read through its next-token log-probabilities.

    `transformers serve` (5.x) ignores the `logprobs` request field, so a judge served locally can only be
    read through its text. Here the same model scores the prompt directly: its chat template (if any) with
    the generation prompt, one forward pass, and the top alternatives for the first reply token, the same
    shape an OpenAI endpoint returns. `complete` answers like a `Teacher`, so every judge loop takes either.
    """

    def __init__(self, model: Any, tokenizer: Any, top: int = TOP_LOGPROBS, max_new_tokens: int = 16) -> None:
        self.model, self.tokenizer, self.top, self.max_new_tokens = model, tokenizer, top, max_new_tokens
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def complete(self, prompt: str, top_logprobs: int | None = None) -> Any:
        """A `Teacher`-shaped reply (`Completion`): the first reply token's top alternatives with `top_logprobs`,
        else the greedy reply text of at most `max_new_tokens` tokens."""
        from ..demo.generate import generate_tokens
        from ..self_instruct.teacher import Completion

        prompt_tokens = len(self._ids(prompt))
        if top_logprobs:
            return Completion(text="", finish_reason="length", prompt_tokens=prompt_tokens,
                              top_logprobs=self.top_logprobs(prompt))
        tokens = generate_tokens(self.model, self.tokenizer, [self._ids(prompt)], temperature=0.0,
                                 max_new_tokens=self.max_new_tokens, stop_at_markers=False)[0]
        return Completion(text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), finish_reason=None,
                          prompt_tokens=prompt_tokens, completion_tokens=len(tokens))

    def _ids(self, prompt: str) -> list[int]:
        """The judge prompt's ids as training encodes a prompt: in the chat template when the model has one."""
        from ..train.tokenize import encode_prompt

        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return encode_prompt(self.tokenizer, text, "chat")
        return encode_prompt(self.tokenizer, prompt)

    def top_logprobs(self, prompt: str) -> dict[str, float]:
        """{token text: log-probability} of the `top` likeliest first reply tokens."""
        return self.top_logprobs_batch([prompt])[0]

    def top_logprobs_batch(self, prompts: Sequence[str]) -> list[dict[str, float]]:
        """`top_logprobs` of several prompts in one forward pass (left-padded; one prompt: no padding)."""
        import torch

        ids = [self._ids(p) for p in prompts]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                                logits_to_keep=1).logits[:, -1]
        values, indices = torch.log_softmax(logits.float(), dim=-1).topk(self.top)
        self.usage["requests"] += len(ids)
        self.usage["prompt_tokens"] += sum(map(len, ids))
        rows = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            out: dict[str, float] = {}
            for value, index in zip(row_values, row_indices):
                token = self.tokenizer.decode([index])
                out[token] = max(out.get(token, -math.inf), value)
            rows.append(out)
        return rows


def run_weighted_judge(judge: Any, items: Sequence[Mapping[str, Any]], progress: bool = True) -> JudgeRun:
    """Judge every item in both orders from log-probabilities, with a `LocalJudge` or a `Teacher` whose endpoint
    returns them. Returns per-item results (id, outcome, verdicts, preferences, preference) and the usage."""
    def one(ask: Callable[[str], Mapping[str, float]], item: Mapping[str, Any]) -> dict[str, Any]:
        return judge_item_weighted(ask, item["instruction"], item.get("input", ""), item["model_answer"],
                                   item["reference_answer"])

    return judge_each(judge, items, one, "judge (log-probabilities, both orders)", top_logprobs=TOP_LOGPROBS,
                      progress=progress)


# ---------------------------------------------------------------------------------------------------------
# Files for alpaca_eval


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
