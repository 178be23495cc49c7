"""Generation with the Alpaca prompt: load a model once, answer an instruction, stream the answer.

    model, tokenizer = load_model("default")            # or a fine-tuned folder under runs/
    generate(model, tokenizer, "What is an alpaca?", decoding=Decoding(temperature=0.7, seed=0))
    for piece in generate_stream(model, tokenizer, "What is an alpaca?"):
        print(piece, end="")
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import _MANIFEST as CONVERSION_MANIFEST
from ..models import DEFAULT_MODEL_NAME, default_model, resolve_model
from ..paths import cache_dir, resolve, runs_dir
from ..precision import inference_choice
from ..prompts import format_prompt
from ..train.tokenize import encode_continuation, encode_prompt
from .decoding import STOP_MARKERS, Decoding, padding_id

if TYPE_CHECKING:
    import torch

BASE_MODEL = "default"

_models: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_models_lock = threading.Lock()


def load_model(name_or_path: str | os.PathLike | None = BASE_MODEL, device: str | None = None,
               dtype: torch.dtype | None = None, cached: bool = True) -> tuple[Any, Any]:
    """Load (model, tokenizer): "default", a local Hugging Face folder, or a Hub name; cached per source,
    device and dtype (`cached=False`: loaded afresh and not kept, for one-off models such as an ablation's).

    Relative paths are tried from the working directory, then from the repository root. The default device
    is CUDA when available; the default dtype is `precision.inference_choice`'s: bf16 where the device has
    native bf16 (a CPU with avx512_bf16 or AMX, a GPU of compute capability 8.0+), else float32. The load
    prints that choice and its reason.
    """
    try:
        source = resolve_model(name_or_path)  # the default's folder, an absolute local folder, or a Hub name
    except FileNotFoundError as e:
        if resolve(name_or_path).exists():
            raise  # a folder that is not a model folder: that message says so
        raise _not_found(name_or_path, str(e)) from None
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    choice = inference_choice(device) if dtype is None else None
    dtype = choice.dtype if choice is not None else dtype
    key = (source, device, str(dtype))
    how = choice.line("precision") if choice is not None else f"dtype {dtype} (as asked)"
    if not cached:
        print(f"Loading {source} on {device}, {how} (not cached)...", flush=True)
        return _load(source, name_or_path, device, dtype)
    with _models_lock:
        if key not in _models:
            print(f"Loading {source} on {device}, {how} (once; cached afterwards)...", flush=True)
            start = time.perf_counter()
            _models[key] = _load(source, name_or_path, device, dtype)
            print(f"Loaded in {time.perf_counter() - start:.1f} s", flush=True)
        return _models[key]


def release_models() -> int:
    """Forget every model `load_model` cached and give their GPU memory back (notebook 04 does so after its
    answers, so that a re-run of its training cell finds the GPU free); returns how many were released.
    A caller that still holds one keeps it alive."""
    import torch

    with _models_lock:
        released = len(_models)
        _models.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return released


def _load(source: str, name_or_path: str | os.PathLike | None, device: str, dtype: Any) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer) from a resolved source; safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as e:
        if Path(source).exists():
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _not_found(name_or_path, reason) from None
    return model.to(device).eval(), tokenizer


def _not_found(name_or_path: str | os.PathLike, reason: str) -> FileNotFoundError:
    available = ", ".join(label for label, _ in model_choices()) or "none"
    return FileNotFoundError(f"no model folder at {resolve(name_or_path)} and no Hub model {str(name_or_path)!r} "
                             f"could be loaded ({reason}); models found: {available}")


def _is_model_cache(folder: Path) -> bool:
    """Whether `folder` was written by the model cache (`models.default_model`, `models.vocabulary_folder`): it
    holds their conversion manifest, or it is a cache root (the converted default model or `vocabularies/` in it)."""
    return ((folder / CONVERSION_MANIFEST).is_file() or (folder / DEFAULT_MODEL_NAME / CONVERSION_MANIFEST).is_file()
            or (folder / "vocabularies").is_dir() and any((folder / "vocabularies").glob(f"*/{CONVERSION_MANIFEST}")))


def find_models(root: str | os.PathLike | None = None) -> list[Path]:
    """Every Hugging Face model folder (config.json + safetensors weights) under `root` (default `runs/`).

    Left out: the model cache (`ALPACA_CACHE` or `paths.cache_dir()`, and any other cache folder, such as the
    tests' `runs/ci-cache`, recognised by the conversion manifest it writes), so the base model's converted copy
    is never offered as a fine-tuned model; and hidden folders (half-written saves).
    """
    root = resolve(root) if root is not None else runs_dir()
    skip = {default_model().resolve(), cache_dir().resolve()}
    found = []
    for config in sorted(root.rglob("config.json")) if root.is_dir() else []:
        folder = config.parent
        if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
            continue
        parts = folder.relative_to(root).parts
        if any(p.startswith(".") for p in parts) or any(s == folder.resolve() or s in folder.resolve().parents
                                                         for s in skip):
            continue
        if any(_is_model_cache(root.joinpath(*parts[:k])) for k in range(len(parts) + 1)):
            continue
        found.append(folder)
    return found


def model_choices(root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs for a model picker: the base model first, then every folder `find_models` finds."""
    base = [(f"base: {DEFAULT_MODEL_NAME}", BASE_MODEL)]
    root_path = resolve(root) if root is not None else runs_dir()
    return base + [(f"fine-tuned: {f.relative_to(root_path)}", str(f)) for f in find_models(root_path)]


def extract_response(text: str) -> str:
    """The answer in generated text: cut at the first Alpaca section marker and strip whitespace."""
    for marker in STOP_MARKERS:
        text = text.split(marker, 1)[0]
    return text.strip()


def prompt_batch(tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` of raw prompts, each encoded as training encodes a prompt
    (`train.tokenize.encode_prompt`), or of prompts given as token ids."""
    import torch
    from transformers import BatchEncoding

    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    width, pad = max(len(i) for i in ids), padding_id(tokenizer)
    return BatchEncoding({"input_ids": torch.tensor([[pad] * (width - len(i)) + i for i in ids]),
                          "attention_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])})


def generate_tokens(model, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]],
                    *, decoding: Decoding = Decoding(),
                    watermark_rows: Sequence[bool] | None = None) -> list[list[int]]:
    """Continue several raw prompts (or prompts as token ids) in one `generate` call (left padding); returns
    each one's new token ids. `watermark_rows` (one bool per prompt) puts `decoding.watermark` on those rows only.

    A row ends at the end-of-sequence token (left out), just after a stop marker (kept; unless
    `decoding.stop_at_markers` is false), or at `decoding.max_new_tokens`.
    """
    import torch

    batch = prompt_batch(tokenizer, prompts).to(model.device)
    kwargs = decoding.generate_kwargs(tokenizer, batch["input_ids"].shape[1], watermark_rows)
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    with torch.inference_mode():
        out = model.generate(**batch, **kwargs)
    ends = {padding_id(tokenizer), tokenizer.eos_token_id}
    rows = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        while row and row[-1] in ends:
            row.pop()
        rows.append(row)
    return rows


def generate_batch(model, tokenizer, instructions: Sequence[str], inputs: Sequence[str] | None = None,
                   *, decoding: Decoding = Decoding()) -> list[str]:
    """Answer several instructions in one batched `generate` call; returns one response each."""
    inputs = list(inputs) if inputs is not None else [""] * len(instructions)
    prompts = [format_prompt({"instruction": i, "input": x}) for i, x in zip(instructions, inputs, strict=True)]
    rows = generate_tokens(model, tokenizer, prompts, decoding=decoding)
    return [extract_response(t) for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def generate(model, tokenizer, instruction: str, input: str = "", *, decoding: Decoding = Decoding()) -> str:
    """Answer one instruction (with optional input) in the Alpaca format and return only the response.

    `decoding` holds temperature (0 = greedy), top_p, top_k, max_new_tokens, num_beams, repetition_penalty, seed
    and the watermark. Generation stops at the end-of-sequence token or when the model starts a new
    `### Instruction:`, which is cut off.
    """
    return generate_batch(model, tokenizer, [instruction], [input], decoding=decoding)[0]


def _held_back(text: str) -> int:
    """Length of the longest end of `text` that could be the start of a stop marker still being written."""
    for k in range(max(map(len, STOP_MARKERS)) - 1, 0, -1):
        if len(text) >= k and any(m.startswith(text[-k:]) for m in STOP_MARKERS):
            return k
    return 0


def generate_stream(model, tokenizer, instruction: str, input: str = "",
                    *, decoding: Decoding = Decoding()) -> Iterator[str]:
    """Like `generate`, but yields the response piece by piece while it is produced.

    The pieces join to exactly what `generate` returns with the same seed: text that might begin a stop marker
    is held back until it is clear. Beam search cannot stream, so with `num_beams > 1` the whole answer comes
    as one piece.
    """
    import torch
    from transformers import TextIteratorStreamer

    if decoding.num_beams > 1:
        yield generate(model, tokenizer, instruction, input, decoding=decoding)
        return
    prompt = format_prompt({"instruction": instruction, "input": input})
    batch = prompt_batch(tokenizer, [prompt]).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = decoding.generate_kwargs(tokenizer, batch["input_ids"].shape[1])
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(**batch, **kwargs, streamer=streamer)
        except BaseException as exc:  # re-raised in the caller's thread below
            failure.append(exc)
            streamer.end()

    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    raw, sent = "", 0
    for piece in streamer:
        raw += piece
        visible = raw.lstrip()
        for marker in STOP_MARKERS:
            visible = visible.split(marker, 1)[0]
        visible = visible[: len(visible) - _held_back(visible)].rstrip()
        if len(visible) > sent:
            yield visible[sent:]
            sent = len(visible)
    thread.join()
    if failure:
        raise failure[0]
    final = extract_response(raw)
    if len(final) > sent:
        yield final[sent:]


def continuation_nlls(model, tokenizer, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                      batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of each continuation's tokens given its prompt's, under
    `model` (prompts and continuations as token ids; the prompt's own tokens are not scored)."""
    import torch

    rows = [(list(p) + list(c), [-100] * len(p) + list(c)) for p, c in zip(prompts, continuations, strict=True)]
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([i + [padding_id(tokenizer)] * (width - len(i)) for i, _ in chunk])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk])
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].to(model.device),
                                                ignore_index=-100, reduction="none").sum(dim=1)
        counts = (labels[:, 1:] != -100).sum(dim=1)
        out.extend((float(n), int(c)) for n, c in zip(nll, counts))
    return out


def response_perplexity(model, tokenizer, instructions: Sequence[str], responses: Sequence[str],
                        inputs: Sequence[str] | None = None, batch_size: int = 8) -> float:
    """Perplexity of `responses` given their Alpaca prompts under `model`, over all response tokens together."""
    inputs = list(inputs) if inputs is not None else [""] * len(instructions)
    prompts, answers = [], []
    for ins, inp, resp in zip(instructions, inputs, responses, strict=True):
        prompts.append(encode_prompt(tokenizer, format_prompt({"instruction": ins, "input": inp})))
        answers.append(encode_continuation(tokenizer, [resp])[0])
    scored = continuation_nlls(model, tokenizer, prompts, answers, batch_size=batch_size)
    return math.exp(sum(n for n, _ in scored) / max(sum(t for _, t in scored), 1))
