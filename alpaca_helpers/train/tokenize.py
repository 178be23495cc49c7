"""Tokenize Alpaca examples for training, with the loss on the response only.

Each example becomes `prompt_ids + response_ids + [eos]`, with `labels` equal to `input_ids` except
`IGNORE_INDEX` (-100) on every prompt token. The prompt and the response are tokenized *separately* and
concatenated, rather than tokenizing the full text and masking `len(prompt_ids)` labels as the Alpaca
recipe does: BPE merges across the `### Response:` boundary (e.g. `:-` or `:"`), so the prompt's tokens are
not always a prefix of the full text's tokens and the original masks one token too many or too few.
Tokenizing separately makes the boundary exact by construction and matches inference, where the prompt is
tokenized alone (`encode_prompt`, which generation uses too) and the model continues from its last token.

SentencePiece tokenizers (LLaMA-1/2, Mistral, Phi-3) put a word-start marker, a "dummy prefix" `▁`, before
every text they are given: "Hello" alone becomes `▁Hello`, which reads " Hello" after the prompt. The prompt
keeps its prefix (generation feeds it the same way), but the response must continue the text, so
`encode_continuation` tokenizes it behind an anchor ("\n") and drops the anchor's ids. Byte-level BPE
tokenizers (GPT-2, Llama-3, Qwen2, SmolLM2) add nothing and are tokenized plainly. `check_tokenizer` proves
the result decodes back to prompt + response exactly and refuses, with the reason, a tokenizer that cannot.

Length policy (`max_length`, default 512): the prompt is never cut. When prompt + response + eos is too
long, `overflow="truncate"` (default) cuts the response and still appends a trained eos; `overflow="drop"`
drops the example. An example whose prompt leaves no room for one response token plus eos is always dropped
and counted: it would otherwise train on nothing, silently. eos is appended by id, never as text, so it is
always present and trained.

`build_dataset` gives a `datasets.Dataset` of input_ids, labels, example_id and truncated (no attention_mask:
`batches.AlpacaCollator` builds it when it pads). Padding, packing and the order of batches are in `batches`.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from ..data import validate_record
from ..prompts import format_prompt, prompt_text

IGNORE_INDEX = -100
DEFAULT_MAX_LENGTH = 512
Overflow = Literal["truncate", "drop"]
_OVERFLOW = ("truncate", "drop")
_PROBE_PROMPT = "### Response:"
_PROBE_RESPONSES = ("Hello", "- item", '"quoted"', " spaced", "\nnew line", "Ünïcödé 東京")


# ---------------------------------------------------------------- tokenizer checks and the pad token


def special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before a text when adding special tokens (e.g. `[bos]` for LLaMA, `[]` here)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    raise ValueError(f"cannot locate the text among the special tokens of {type(tokenizer).__name__}")


_ANCHOR = "\n"  # what a continuation is tokenized behind: a newline never merges with a dummy prefix


def adds_dummy_prefix(tokenizer) -> bool:
    """Whether the tokenizer puts a word-start marker before every text (SentencePiece's dummy prefix), so that
    two texts tokenized alone decode with a space between them."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids + ids, clean_up_tokenization_spaces=False) != "aa"


def encode_continuation(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of texts that continue other text (a response after its prompt), without special tokens.

    A tokenizer with a dummy prefix tokenizes each text behind `_ANCHOR` and the anchor's ids are dropped, so
    the text gains no leading space; others tokenize it plainly. Raises ValueError when the anchor merges
    into the text (the boundary is then not where the text starts).
    """
    if not adds_dummy_prefix(tokenizer):
        return _encode_many(tokenizer, list(texts))
    anchor = tokenizer(_ANCHOR, add_special_tokens=False)["input_ids"]
    anchored = _encode_many(tokenizer, [_ANCHOR + t for t in texts])
    out = []
    for text, ids in zip(texts, anchored):
        if ids[:len(anchor)] != anchor:
            raise ValueError(f"{type(tokenizer).__name__}: the text {text[:40]!r} merges with the newline it is "
                             "tokenized behind; its ids cannot be told apart from the prompt's")
        out.append(ids[len(anchor):])
    return out


def encode_prompt(tokenizer, prompt: str, prompt_format: str = "alpaca") -> list[int]:
    """The ids a model is fed for `prompt` (already in `prompt_format`), in training and in generation alike:
    the tokenizer's special prefix (bos), unless a chat template already wrote it, then the prompt's tokens."""
    return prompt_prefix(tokenizer, prompt_format, prompt) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def check_tokenizer(tokenizer) -> None:
    """Raise ValueError unless this tokenizer suits separate prompt/response tokenization.

    It needs an eos token; the prompt's ids must be what the tokenizer itself gives the prompt (what a server
    or llama.cpp feeds the model); and prompt ids + response ids (`encode_continuation`) must decode to prompt
    + response exactly, for responses that start with a letter, a space, a newline, punctuation or non-ASCII.
    """
    name = type(tokenizer).__name__
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name} has no eos token: the model could never learn to stop")
    prompt_ids = encode_prompt(tokenizer, _PROBE_PROMPT)
    if tokenizer(_PROBE_PROMPT)["input_ids"] != prompt_ids:
        raise ValueError(f"{name} gives {_PROBE_PROMPT!r} ids that its special tokens do not account for: "
                         "training and generation would feed the model different prompts")
    try:
        responses = encode_continuation(tokenizer, _PROBE_RESPONSES)
    except ValueError as e:
        raise ValueError(f"{e}; this tokenizer cannot tokenize a response apart from its prompt") from None
    for response, ids in zip(_PROBE_RESPONSES, responses):
        text = tokenizer.decode(prompt_ids + ids + [tokenizer.eos_token_id], skip_special_tokens=True,
                                clean_up_tokenization_spaces=False)
        if text != _PROBE_PROMPT + response:
            raise ValueError(
                f"{name}: prompt and response tokenized separately decode to {text!r}, not "
                f"{_PROBE_PROMPT + response!r}; this tokenizer changes text at the boundary")


def ensure_pad_token(tokenizer, model=None, pad_token: str = "<pad>") -> int:
    """Return the pad id, adding `pad_token` when the tokenizer has none (as Alpaca did).

    When a token is added and `model` is given, its embeddings are resized and the new rows (input and
    output) set to the mean of the old ones. A pad equal to eos is kept: the collator masks by position.
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    tokenizer.add_special_tokens({"pad_token": pad_token})
    if model is not None:
        resize_embeddings_mean(model, len(tokenizer))
    return tokenizer.pad_token_id


EMBEDDING_MULTIPLE = 64  # LLaMA's 32,000 + <pad> = 32,001 rows would leave the LM-head matmuls misaligned


def resized_rows(old_rows: int, new_size: int, pad_to_multiple_of: int = EMBEDDING_MULTIPLE) -> int:
    """Embedding rows after `resize_embeddings_mean(model, new_size)` on a model with `old_rows` (the memory
    plan counts the same rows)."""
    return new_size if new_size <= old_rows else -(-new_size // pad_to_multiple_of) * pad_to_multiple_of


def resize_embeddings_mean(model, new_size: int, pad_to_multiple_of: int = EMBEDDING_MULTIPLE) -> None:
    """Resize a model's token embeddings to `new_size` rounded up to `pad_to_multiple_of` (1 = exactly),
    new rows = mean of the old rows (Alpaca's recipe). Rows past the tokenizer's are never produced as inputs."""
    import torch

    old_size = model.get_input_embeddings().weight.shape[0]
    if new_size <= old_size:
        model.resize_token_embeddings(new_size, mean_resizing=False)
        return
    new_size = resized_rows(old_size, new_size, pad_to_multiple_of)
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is None:
                continue
            w = emb.weight
            w[old_size:] = w[:old_size].mean(dim=0, keepdim=True)


# ---------------------------------------------------------------- one example


def _assemble(prefix: list[int], prompt_ids: list[int], response_ids: list[int], eos_id: int, max_length: int,
              overflow: str, train_on_prompt: bool = False) -> tuple[list[int], list[int], bool] | None:
    """Concatenate and label; None when dropped. Returns (input_ids, labels, truncated). With
    `train_on_prompt` the prompt's tokens are labelled too (the special prefix, never predicted, stays ignored)."""
    prompt = prefix + prompt_ids
    room = max_length - len(prompt) - 1  # response tokens that fit beside the prompt and the eos
    needed = min(1, len(response_ids))  # at least one response token, unless the output is empty
    if room < needed:
        return None
    truncated = len(response_ids) > room
    if truncated:
        if overflow == "drop":
            return None
        response_ids = response_ids[:room]
    trained = list(response_ids) + [eos_id]
    prompt_labels = [IGNORE_INDEX] * len(prefix) + prompt_ids if train_on_prompt else [IGNORE_INDEX] * len(prompt)
    return prompt + trained, prompt_labels + trained, truncated


def _check_args(max_length: int, overflow: str) -> None:
    if overflow not in _OVERFLOW:
        raise ValueError(f"overflow must be one of {_OVERFLOW}, got {overflow!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")


def prompt_prefix(tokenizer, prompt_format: str = "alpaca", first_prompt: str = "") -> list[int]:
    """The ids put before every prompt: the tokenizer's bos, unless a chat template already writes it."""
    bos = getattr(tokenizer, "bos_token", None)
    if prompt_format == "chat" and bos and first_prompt.startswith(bos):
        return []
    return special_prefix(tokenizer)


def tokenize_example(example: Mapping[str, Any], tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                     overflow: Overflow = "truncate", index: int | None = None,
                     prompt_format: str = "alpaca", train_on_prompt: bool = False) -> dict[str, list[int]] | None:
    """Tokenize one Alpaca record into `input_ids`, `labels`, `attention_mask`; None when it must be dropped.

    Labels are IGNORE_INDEX on the prompt (in `prompt_format`: "alpaca" or "chat"), unless `train_on_prompt`;
    the response (cut if needed) plus one eos are trained. `index` only names the record in errors.
    """
    _check_args(max_length, overflow)
    record = validate_record(example, f"record {index}" if index is not None else "record")
    prompt = prompt_text(record, prompt_format, tokenizer)
    out = _assemble(prompt_prefix(tokenizer, prompt_format, prompt),
                    tokenizer(prompt, add_special_tokens=False)["input_ids"],
                    encode_continuation(tokenizer, [record["output"]])[0],
                    tokenizer.eos_token_id, max_length, overflow, train_on_prompt)
    if out is None:
        return None
    ids, labels, _ = out
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


# ---------------------------------------------------------------- many examples


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts without special tokens, in one call to the Rust tokenizer when there is one
    (`encode_batch_fast` skips the offsets the transformers wrapper computes and we do not need)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


def dataset_features():
    """The `datasets.Features` of `tokenize_batch`'s output (given to `map`, which then skips type inference)."""
    from datasets import Features, List, Value

    return Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")),
                     "example_id": Value("int64"), "truncated": Value("bool")})


def tokenize_batch(batch: Mapping[str, Sequence], indices: Sequence[int] | None = None, *, tokenizer,
                   max_length: int = DEFAULT_MAX_LENGTH, overflow: Overflow = "truncate",
                   prompt_format: str = "alpaca", train_on_prompt: bool = False) -> dict[str, list]:
    """Batched form for `Dataset.map(batched=True, with_indices=True, remove_columns=...)`.

    Tokenizes all prompts and all outputs of the batch in two fast-tokenizer calls. Returns only the kept
    rows, with `input_ids`, `labels`, `example_id` (the record's index, or the batch's `example_id` column
    when present) and `truncated`. No `attention_mask`: it is all ones until the collator pads.
    """
    _check_args(max_length, overflow)
    n = len(next(iter(batch.values())))
    if "example_id" in batch:
        ids_in = list(batch["example_id"])
    else:
        ids_in = list(indices) if indices is not None else list(range(n))
    present = [f for f in ("instruction", "input", "output") if f in batch]
    prompts, outputs = [], []
    for j, example_id in enumerate(ids_in):
        record = validate_record({f: batch[f][j] for f in present}, f"record {example_id}")
        prompts.append(prompt_text(record, prompt_format, tokenizer))
        outputs.append(record["output"])
    prompt_ids = _encode_many(tokenizer, prompts)
    response_ids = encode_continuation(tokenizer, outputs)
    prefix, eos_id = prompt_prefix(tokenizer, prompt_format, prompts[0] if prompts else ""), tokenizer.eos_token_id
    result: dict[str, list] = {"input_ids": [], "labels": [], "example_id": [], "truncated": []}
    for example_id, p, r in zip(ids_in, prompt_ids, response_ids):
        out = _assemble(prefix, p, r, eos_id, max_length, overflow, train_on_prompt)
        if out is None:
            continue
        ids, labels, truncated = out
        result["input_ids"].append(ids)
        result["labels"].append(labels)
        result["example_id"].append(example_id)
        result["truncated"].append(truncated)
    return result


@dataclass
class TokenizeStats:
    """What happened to the records: kept (of which truncated) and dropped, with the dropped indices."""

    total: int
    kept: int
    truncated: int
    dropped: int
    max_length: int
    overflow: str
    dropped_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BuiltDataset(NamedTuple):
    dataset: Any  # datasets.Dataset
    stats: TokenizeStats


def validate_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check every record up front (clear error naming the index and field); `input` defaults to ""."""
    return [validate_record(r, f"record {i}") for i, r in enumerate(records)]


def build_dataset(records: Sequence[Mapping[str, Any]], tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                  num_proc: int | None = 1, overflow: Overflow = "truncate",
                  batch_size: int = 1000, prompt_format: str = "alpaca",
                  train_on_prompt: bool = False) -> BuiltDataset:
    """Tokenize Alpaca records into a `datasets.Dataset` (input_ids, labels, example_id, truncated) and
    return it with its `TokenizeStats`. `example_id` is the record's index in `records`; prompts are in
    `prompt_format` ("alpaca" or the tokenizer's "chat" template). `train_on_prompt` labels the prompt's tokens
    too (the loss on prompt + response; default: on the response only, as Alpaca)."""
    from datasets import Dataset

    _check_args(max_length, overflow)
    check_tokenizer(tokenizer)
    checked = validate_records(records)
    raw = Dataset.from_dict({
        "instruction": [r["instruction"] for r in checked],
        "input": [r["input"] for r in checked],
        "output": [r["output"] for r in checked],
        "example_id": list(range(len(checked))),
    })
    num_proc = num_proc if num_proc and num_proc > 1 and len(checked) > batch_size else None
    ds = raw.map(tokenize_batch, batched=True, batch_size=batch_size, num_proc=num_proc,
                 remove_columns=raw.column_names, features=dataset_features(),
                 fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "overflow": overflow,
                            "prompt_format": prompt_format, "train_on_prompt": train_on_prompt},
                 desc="tokenize" if num_proc else None)
    kept_ids = set(ds.data.column("example_id").to_pylist())
    dropped_ids = [i for i in range(len(checked)) if i not in kept_ids]
    truncated = sum(ds.data.column("truncated").to_pylist())
    stats = TokenizeStats(total=len(checked), kept=len(ds), truncated=truncated,
                          dropped=len(dropped_ids), max_length=max_length, overflow=overflow,
                          dropped_ids=dropped_ids)
    return BuiltDataset(ds, stats)


# ---------------------------------------------------------------- display


def label_html(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """HTML of one example's tokens: grey = masked (prompt, label -100), green = trained (output + eos).
    Hover a token for its id and label."""
    colors = {True: "#c8f7c5", False: "#e6e6e6"}
    spans = []
    for token_id, label in zip(input_ids, labels):
        text = html.escape(tokenizer.decode([token_id])).replace("\n", "&#x23CE;<br>").replace(" ", "&nbsp;")
        spans.append(f'<span style="background:{colors[label != IGNORE_INDEX]};border:1px solid #bbb;'
                     f'border-radius:3px;padding:0 1px;margin:1px" title="id {token_id}, label {label}">{text}</span>')
    legend = (f'<p><span style="background:{colors[False]}">masked (label -100)</span> '
              f'<span style="background:{colors[True]}">trained</span></p>')
    return legend + '<div style="font-family:monospace;line-height:2">' + "".join(spans) + "</div>"


# ---------------------------------------------------------------- the original recipe, for comparison


def alpaca_original_tokenize(example: Mapping[str, Any], tokenizer,
                             max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, list[int]]:
    """Stanford Alpaca's `preprocess` (train.py) for one example, kept only to measure against: do not train with it.

    As in the original, prompt + output + eos-as-text and the prompt alone are each tokenized on their own
    (to tensors, truncated to `max_length`), and the first `len(prompt_ids)` labels are masked, that length
    being counted as the non-pad tokens. Wrong when BPE merges across the prompt's end, when truncation cuts
    the eos, and when the prompt fills the window (every label masked).
    """
    record = validate_record(example, "record")
    source = format_prompt(record)
    target = f"{record['output']}{tokenizer.eos_token}"
    tokenized = [tokenizer(text, return_tensors="pt", padding="longest", max_length=max_length, truncation=True)
                 for text in (source + target, source)]
    input_ids = [t.input_ids[0] for t in tokenized]
    lens = [t.input_ids.ne(tokenizer.pad_token_id).sum().item() for t in tokenized]
    labels = copy.deepcopy(input_ids[0])
    labels[:lens[1]] = IGNORE_INDEX
    return {"input_ids": input_ids[0].tolist(), "labels": labels.tolist()}


def original_recipe_fault(example: Mapping[str, Any], original: Mapping[str, Sequence[int]], tokenizer) -> str | None:
    """Why `alpaca_original_tokenize`'s result for `example` is wrong, or None when it is right."""
    prompt_ids = tokenizer(format_prompt(validate_record(example, "record")))["input_ids"]
    if all(label == IGNORE_INDEX for label in original["labels"]):
        return "all labels masked"
    if list(original["input_ids"][:len(prompt_ids)]) != prompt_ids:
        return "prompt not a prefix (boundary merge)"
    if original["input_ids"][-1] != tokenizer.eos_token_id:
        return "eos cut by truncation"
    return None


__all__ = [
    "IGNORE_INDEX", "DEFAULT_MAX_LENGTH", "alpaca_original_tokenize", "original_recipe_fault", "BuiltDataset",
    "TokenizeStats", "adds_dummy_prefix", "build_dataset", "check_tokenizer", "encode_continuation", "encode_prompt",
    "dataset_features", "label_html", "ensure_pad_token", "resize_embeddings_mean", "resized_rows", "special_prefix",
    "tokenize_batch", "tokenize_example", "validate_records",
]
