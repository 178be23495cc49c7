"""Teacher agreement: how likely a model finds the teacher's answers, and what the answers look like.

The loss is the mean cross-entropy per response token of text-davinci-003's answers to the evaluation
instructions under a model, with the Alpaca prompt and exactly the masking of training (`build_dataset`:
prompt tokens ignored, response plus eos trained, the same length policy). Fine-tuning on teacher data
should lower it: the student comes closer to writing what the teacher wrote. Perplexity is exp(loss).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from ..demo.generate import load_model
from ..models import resolve_model
from ..train.batches import AlpacaCollator
from ..train.tokenize import DEFAULT_MAX_LENGTH, IGNORE_INDEX, build_dataset, ensure_pad_token
from .stats import mean_se, paired_change

TOKENS_PER_BATCH = 4096  # padded tokens per forward pass: enough to keep 2 cores busy, little memory


def _batches(lengths: Sequence[int], tokens_per_batch: int) -> list[list[int]]:
    """Row indices grouped longest first, each group's padded size at most `tokens_per_batch` (one row at least)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= tokens_per_batch:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def response_losses(model: Any, tokenizer: Any, records: Sequence[Mapping[str, Any]],
                    max_length: int = DEFAULT_MAX_LENGTH, tokens_per_batch: int = TOKENS_PER_BATCH,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Summed loss and trained-token count of each record's `output` given its Alpaca prompt, masked as in training.

    Returns one row per record, in order: {index, nll, tokens, truncated}; a record training would drop (its
    prompt alone is too long) has nll None and tokens 0.
    """
    import datasets
    import torch

    quiet = not datasets.are_progress_bars_disabled()  # the tokenizing pass over a few records needs no bar
    if quiet:
        datasets.disable_progress_bars()
    try:
        built = build_dataset(records, tokenizer, max_length=max_length)
    finally:
        if quiet:
            datasets.enable_progress_bars()
    rows = built.dataset.to_list()
    collate = AlpacaCollator(pad_token_id=ensure_pad_token(tokenizer))
    out = [{"index": i, "nll": None, "tokens": 0, "truncated": False} for i in range(len(records))]
    device = next(model.parameters()).device
    batches = _batches([len(r["input_ids"]) for r in rows], tokens_per_batch)
    for group in tqdm(batches, desc="teacher agreement", disable=not progress):
        batch = collate([rows[i] for i in group])
        labels = batch["labels"]
        # Logits only where a trained token is predicted (position t predicts label t + 1): the vocabulary
        # projection of prompt positions would be most of the work and is not needed.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           logits_to_keep=keep.to(device)).logits.float()
        targets = labels[:, 1:][keep[:, :-1]].to(device)
        row = torch.arange(len(group)).unsqueeze(1).expand_as(keep)[keep].to(device)
        token_nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="none")
        nll = torch.zeros(len(group), device=device).index_add_(0, row, token_nll)
        counts = keep.sum(dim=1)
        for j, i in enumerate(group):
            example = rows[i]["example_id"]
            out[example].update(nll=float(nll[j]), tokens=int(counts[j]), truncated=bool(rows[i]["truncated"]))
    return out


def agreement(losses: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean loss per response token over the given rows, its perplexity, the number of items and tokens.

    `mean_item_loss` is the mean over items of each item's own loss per token (every answer counts once, however
    long); `loss_se` is its standard error (a guide to the spread across items; None for
    fewer than 2 items). Rows with nll None (dropped by the length policy) are counted in `dropped`.
    """
    rows = list(losses)
    kept = [r for r in rows if r["nll"] is not None and r["tokens"]]
    tokens = sum(r["tokens"] for r in kept)
    loss = sum(r["nll"] for r in kept) / tokens if tokens else None
    per_item = [r["nll"] / r["tokens"] for r in kept]
    se = statistics.stdev(per_item) / math.sqrt(len(per_item)) if len(per_item) > 1 else None
    return {"loss": loss, "perplexity": math.exp(loss) if loss is not None else None, "n": len(kept),
            "tokens": tokens, "mean_item_loss": statistics.fmean(per_item) if per_item else None,
            "loss_se": se, "dropped": len(rows) - len(kept),
            "truncated": sum(bool(r["truncated"]) for r in kept)}


def agreement_by(losses: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`agreement` per group (for example per `motivation_app`), largest groups first."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for row, group in zip(losses, groups, strict=True):
        by.setdefault(group, []).append(row)
    return {g: agreement(by[g]) for g in sorted(by, key=lambda g: (-len(by[g]), g))}


def answer_shape(outputs: Sequence[str], tokenizer: Any, finished: Sequence[bool] | None = None) -> dict[str, Any]:
    """Lengths of answers in tokens and words, the share of empty answers and, when known, the share that
    ended (eos or a stop marker) before the token limit."""
    tokens = [len(ids) for ids in tokenizer(list(outputs), add_special_tokens=False)["input_ids"]] if outputs else []
    words = [len(o.split()) for o in outputs]
    n = len(outputs)
    return {"n": n, "empty_share": sum(not o.strip() for o in outputs) / n if n else None,
            "ended_share": sum(map(bool, finished)) / len(finished) if finished else None,
            "mean_tokens": statistics.fmean(tokens) if tokens else None, "mean_tokens_se": mean_se(tokens)["se"],
            "median_tokens": statistics.median(tokens) if tokens else None,
            "mean_words": statistics.fmean(words) if words else None, "token_lengths": tokens}


def paired_difference(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean change of the per-item loss (after - before) on the same items, with its standard error: the two
    models are scored on the same answers, so the change is far more precise than either loss."""
    def per_token(rows: Sequence[Mapping[str, Any]]) -> list[float | None]:
        return [r["nll"] / r["tokens"] if r["tokens"] and r["nll"] is not None else None for r in rows]

    return paired_change(per_token(before), per_token(after))


def score_models(model_paths: Mapping[str, str], records: Sequence[Mapping[str, Any]],
                 progress: bool = True, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    """`response_losses` of the records under each named model ({"base": "default", "fine_tuned": path});
    names that resolve to the same model are scored once."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    out = {}
    for name, path in model_paths.items():
        source = resolve_model(path)
        if source not in by_source:
            model, tokenizer = load_model(path)
            by_source[source] = response_losses(model, tokenizer, records, progress=progress, **kwargs)
        out[name] = by_source[source]
    return out


SAME_MODEL_NOTE = "the fine-tuned model is the base model here"


def agreement_report(results: Mapping[str, Mapping[str, Any]], change: Mapping[str, Any], teacher: str) -> str:
    """Teacher agreement as lines to read: per model the loss per token (pooled over all answer tokens) with its
    perplexity, and the mean per answer with its standard error; the paired change per answer; and what makes
    the two kinds of figure differ (or a note when both sides are one model)."""
    lines = []
    for name, r in results.items():
        if r["loss"] is None:
            lines.append(f"{name:>10}: no answer scored")
            continue
        se = f" ± {r['loss_se']:.3f}" if r["loss_se"] is not None else ""
        lines.append(f"{name:>10}: loss per token {r['loss']:.3f} (pooled over {r['tokens']} tokens, perplexity "
                     f"{r['perplexity']:.2f}); per answer {r['mean_item_loss']:.3f}{se} (mean ± one standard error "
                     f"over n = {r['n']} {teacher} answers)")
    if change["mean"] is None:
        return "\n".join(lines)
    se = f" ± {change['se']:.3f}" if change["se"] is not None else ""
    lines.append(f"change per answer (fine-tuned - base): {change['mean']:+.3f}{se} (mean ± one paired standard "
                 f"error over the same n = {change['n']} answers)")
    base, tuned = (results.get(k) for k in ("base", "fine_tuned"))
    if change["mean"] == 0 and (change["se"] or 0) == 0:
        lines.append(f"Note: {SAME_MODEL_NOTE} (model_path = base_model_path), so there is nothing to compare. "
                     "After notebook 04, set model_path to its model: a full run lowers the loss of the teacher's "
                     "answers.")
    elif base and tuned and base["loss"] is not None and tuned["loss"] is not None:
        pooled = tuned["loss"] - base["loss"]
        lines.append(f"The change is per answer: each answer's own loss per token, averaged with every answer "
                     f"counting once, so it is the difference of the per-answer means "
                     f"({tuned['mean_item_loss']:.3f} - {base['mean_item_loss']:.3f}). The pooled losses weigh each "
                     f"answer by its length; their difference is {pooled:+.3f}.")
        if abs(pooled - change["mean"]) > 0.05 and abs(change["mean"]) > abs(pooled):
            lines.append("They differ because in these answers the short ones moved more than the long ones: a short "
                         "answer's loss is mostly its first tokens and its end-of-sequence token, where the Alpaca "
                         "format is decided, and that format is what a short fine-tune teaches first.")
        elif abs(pooled - change["mean"]) > 0.05:
            lines.append("They differ because in these answers the long ones moved more than the short ones, and the "
                         "pooled loss weighs long answers more.")
    return "\n".join(lines)
