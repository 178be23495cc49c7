"""Export a LLaMA-architecture Hugging Face folder to one GGUF file for llama.cpp and Ollama.

    python -m alpaca_helpers.demo.export_gguf runs/04_train/final runs/alpaca.gguf --dtype q8_0
    export_gguf("runs/04_train/final", "runs/alpaca.gguf", dtype="f16")   # -> GGUFExport(path, modelfile, ...)

The file holds the weights, the hyperparameters and the tokenizer (vocabulary; merges for a byte-level BPE
such as SmolLM2's, scores for a SentencePiece one such as LLaMA's; special tokens, chat template), so a GGUF
reader needs nothing else. Beside it goes an Ollama `Modelfile` whose template is the
Alpaca prompt and whose stop sequences end the answer where `alpaca_helpers.demo.generate` does. Writing, tensor
names and quantization are llama.cpp's own Python library (`gguf`); the file appears atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..cli import ArgumentParser
from ..files import atomic_write_text
from ..models import _DEFAULT_ALIASES, default_model
from ..paths import REPO_ROOT
from ..prompts import PROMPT_NO_INPUT
from .decoding import STOP_MARKERS, Decoding

DTYPES = ("f16", "bf16", "q8_0")
MODELFILE = "Modelfile"
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
             "rms_norm_eps", "vocab_size")


class ExportError(ValueError):
    """The folder cannot be exported (not a LLaMA folder, missing files, an unsupported feature)."""


@dataclass(frozen=True)
class GGUFExport:
    """What `export_gguf` wrote."""

    path: Path
    modelfile: Path
    dtype: str
    size_bytes: int
    seconds: float
    tensors: int


def _qtype(dtype: str, shape: tuple[int, ...]):
    """The GGML type a tensor of `shape` gets: norms (1-D) stay float32, as llama.cpp's converter keeps them."""
    from gguf import GGMLQuantizationType as Q

    if len(shape) == 1:
        return Q.F32
    if dtype == "q8_0":
        block = 32  # Q8_0 quantizes rows in blocks of 32 values; other rows fall back to f16
        return Q.Q8_0 if shape[-1] % block == 0 else Q.F16
    return {"f16": Q.F16, "bf16": Q.BF16}[dtype]


def _file_type(dtype: str) -> int:
    from gguf import LlamaFileType

    return {"f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
            "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]


def _model_folder(model_dir: str | os.PathLike) -> Path:
    """"default" (the embedded model), or a folder from the working directory or else the repository root."""
    if str(model_dir) in _DEFAULT_ALIASES:
        return default_model()
    path = Path(model_dir).expanduser()
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if not path.is_dir():
        raise ExportError(f"no model folder at {path}")
    return path.resolve()


def _read_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        if (folder / "adapter_config.json").is_file():
            raise ExportError(f"{folder} holds a LoRA adapter only: export the merged model folder instead")
        raise ExportError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{config_path} is not valid JSON ({e.msg})") from None
    if config.get("model_type") != "llama":
        raise ExportError(f"{folder} is a {config.get('model_type')!r} model, not a LLaMA-architecture one")
    _weight_files(folder)
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ExportError(f"{folder / 'config.json'} lacks {', '.join(missing)}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"{folder} uses rope scaling {rope.get('rope_type')!r}, which this exporter does not write")
    return config


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / n for n in names]
    else:
        files = [folder / "model.safetensors"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ExportError(f"{folder} is missing its weights ({', '.join(missing)}); only safetensors are read")
    return files


def _hf_to_gguf_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q/k projection from Hugging Face's rotary layout to llama.cpp's.

    Hugging Face rotates the first half of each head's dimensions against the second half; llama.cpp (like
    Meta's original code) rotates interleaved pairs. Within each head, row i of the first half and row i of
    the second half become neighbours. transformers undoes exactly this when it loads a GGUF file.
    """
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _tensor_count(folder: Path, config: dict[str, Any]) -> int:
    """How many tensors `_tensors` yields (read from the safetensors headers, no weights loaded)."""
    from safetensors import safe_open

    tied = config.get("tie_word_embeddings", False)
    count = 0
    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            count += sum(not (name == "lm_head.weight" and tied) and not name.endswith("rotary_emb.inv_freq")
                         for name in f.keys())
    return count


def _tensors(folder: Path, config: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """(Hugging Face name, float32 array) for every weight to write, rotary rows already reordered."""
    from safetensors import safe_open

    tied = config.get("tie_word_embeddings", False)
    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name == "lm_head.weight" and tied:
                    continue  # tied to the embedding: llama.cpp reuses token_embd when output.weight is absent
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                array = f.get_tensor(name).float().numpy()
                if name.endswith("self_attn.q_proj.weight"):
                    array = _hf_to_gguf_rotary(array, config["num_attention_heads"])
                elif name.endswith("self_attn.k_proj.weight"):
                    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
                    array = _hf_to_gguf_rotary(array, heads)
                yield name, array


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for how the text is split before BPE (`tokenizer.ggml.pre`)."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = (pre or {}).get("pretokenizers") or []
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"
    raise ExportError(f"unsupported pre-tokenizer {json.dumps(pre)[:120]}: only GPT-2-style byte-level BPE "
                      "tokenizers are exported")


def _is_sentencepiece(spec: dict[str, Any]) -> bool:
    """Whether a tokenizer.json is a SentencePiece BPE converted to `tokenizers` (LLaMA-1/2, Mistral): byte
    fallback, and spaces spelled "▁" by a Metaspace pre-tokenizer or a Replace/Prepend normalizer."""
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    pre, norm = spec.get("pre_tokenizer") or {}, spec.get("normalizer") or {}
    steps = [norm, *(norm.get("normalizers") or [])]
    return pre.get("type") == "Metaspace" or any(s.get("type") in ("Prepend", "Replace") for s in steps)


def _sentencepiece_scores(tokens: list[str], merges: list[Any]) -> list[float]:
    """SentencePiece scores recovered from the merges: a token made by the merge of rank r scores -r (earlier
    merges win), tokens no merge makes (characters, bytes, specials) 0. llama.cpp merges by these scores, and
    transformers rebuilds the merges from them when it reads the file: the same order as tokenizer.json's."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def _token_table(spec: dict[str, Any], vocab_size: int, path: Path) -> tuple[list[str], list[Any], dict[str, Any]]:
    """Every embedding row's token (rows no token uses get llama.cpp's "[PAD<i>]", type UNUSED) and its GGUF
    token type; also the added tokens by content."""
    import gguf

    ids = dict(spec["model"]["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    ids.update({content: t["id"] for content, t in added.items()})
    if max(ids.values()) >= vocab_size:
        raise ExportError(f"{path} has token id {max(ids.values())} but the model's vocab_size is {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in ids.items():
        tokens[i] = token
        info = added.get(token)
        types[i] = (gguf.TokenType.NORMAL if info is None else
                    gguf.TokenType.CONTROL if info.get("special") else gguf.TokenType.USER_DEFINED)
    return tokens, types, added


def _add_sentencepiece_vocab(writer, spec: dict[str, Any], tokens: list[str], types: list[Any],
                             added: dict[str, Any], unk: str | None) -> None:
    """llama.cpp's "llama" tokenizer model: tokens, scores, and types (the unknown token `unk`, the <0xXX>
    byte pieces), as its converter writes them from a tokenizer.model."""
    import gguf

    for i, token in enumerate(tokens):
        if token == unk:
            types[i] = gguf.TokenType.UNKNOWN
        elif token not in added and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            types[i] = gguf.TokenType.BYTE
    scores = _sentencepiece_scores(tokens, spec["model"].get("merges") or [])
    # Unused rows and added tokens never come out of a merge: the lowest score, as llama.cpp's converter gives.
    scores = [-1000.0 if t in (gguf.TokenType.UNUSED, gguf.TokenType.USER_DEFINED) else s
              for s, t in zip(scores, types)]
    prepend = (spec.get("pre_tokenizer") or {}).get("prepend_scheme", "always") != "never"
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(prepend)


@contextlib.contextmanager
def _quiet_pair_template() -> Iterator[None]:
    """Silence gguf's warning about LLaMA's pair template ("<s> A <s> B"): it concerns only the add-bos/eos
    flags, which `_add_tokenizer` sets from what the tokenizer does."""
    def quiet(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unknown separator token")

    logger = logging.getLogger("gguf.vocab")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _add_tokenizer(writer, folder: Path, vocab_size: int) -> None:
    """Vocabulary, token types, merges (byte-level BPE) or scores (SentencePiece), special token ids and chat
    template, from the folder's tokenizer.json."""
    import gguf
    from transformers import AutoTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{folder} has no tokenizer.json (a fast tokenizer is needed to export the vocabulary)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    sentencepiece = _is_sentencepiece(spec)
    byte_level = (model.get("type") == "BPE" and not model.get("byte_fallback")
                  and (spec.get("decoder") or {}).get("type") == "ByteLevel")
    if not (sentencepiece or byte_level):
        raise ExportError(f"{path}: only byte-level BPE (GPT-2 style) and SentencePiece BPE (LLaMA style) "
                          "tokenizers are exported")
    tokens, types, added = _token_table(spec, vocab_size, path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if sentencepiece:  # the unknown token: tokenizer.json's model may not name it (unk_token null)
        _add_sentencepiece_vocab(writer, spec, tokens, types, added, tokenizer.unk_token)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer_name(spec.get("pre_tokenizer")))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    # Merges (byte-level only: llama.cpp's SentencePiece path merges by score), bos/eos/unk/pad ids and the chat
    # template, read the way llama.cpp's converter reads them.
    with _quiet_pair_template():
        special = gguf.SpecialVocab(folder, load_merges=byte_level, n_vocab=vocab_size)
    if tokenizer.pad_token_id is not None:
        special.special_token_ids["pad"] = tokenizer.pad_token_id
    # Whether BOS/EOS get added is what the tokenizer actually does, not what a config flag claims.
    encoded = tokenizer("a")["input_ids"]
    special.add_special_token = {"bos": tokenizer.bos_token_id is not None and encoded[0] == tokenizer.bos_token_id,
                                 "eos": tokenizer.eos_token_id is not None and encoded[-1] == tokenizer.eos_token_id}
    special.add_to_gguf(writer, quiet=True)


def _add_hyperparameters(writer, config: dict[str, Any], name: str, dtype: str) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(_file_type(dtype))
    writer.add_quantization_version(2)  # the GGML quantization format generation (gguf.GGML_QUANT_VERSION)


def modelfile_text(gguf_name: str) -> str:
    """An Ollama Modelfile for `gguf_name` (a file in the same folder): the Alpaca prompt as the template, stop
    sequences where `alpaca_helpers.demo.generate` cuts the answer, and the notebook's sampling defaults."""
    template = PROMPT_NO_INPUT.format(instruction="{{ .Prompt }}")
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', ""]
    lines += [f'PARAMETER stop "{marker}"' for marker in STOP_MARKERS]
    defaults = Decoding()
    lines += [f"PARAMETER {name} {getattr(defaults, name)}" for name in ("temperature", "top_p", "top_k")]
    lines.append(f"PARAMETER num_predict {defaults.max_new_tokens}")
    return "\n".join(lines) + "\n"


def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "f16",
                progress: bool = False) -> GGUFExport:
    """Write `model_dir` (a LLaMA Hugging Face folder with safetensors) as one GGUF file of `dtype` (f16, bf16
    or q8_0) at `out_path`, and an Ollama `Modelfile` beside it. Raises `ExportError` with a one-line reason.

    Quiet by default (a notebook prints the result's size and time); `progress=True` (the command line) shows one
    bar over the tensors converted. Writing the file is a few seconds even for 7B, so it has no bar of its own."""
    import gguf

    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    folder, out = _model_folder(model_dir), Path(out_path)
    if out.suffix != ".gguf":
        raise ExportError(f"{out} should end in .gguf")
    config = _read_config(folder)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _add_hyperparameters(writer, config, folder.name, dtype)
        _add_tokenizer(writer, folder, config["vocab_size"])
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
        count = 0
        bar = tqdm(desc=f"converting to {dtype}", unit=" tensors",
                   total=_tensor_count(folder, config) if progress else None, disable=not progress)
        for hf_name, array in _tensors(folder, config):
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ExportError(f"{folder}: no GGUF name for tensor {hf_name!r} (not a plain LLaMA model?)")
            qtype = _qtype(dtype, array.shape)
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            count += 1
            bar.update()
        bar.close()
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # mkstemp makes it private; a model file is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    modelfile = out.parent / MODELFILE
    atomic_write_text(modelfile, modelfile_text(out.name))
    modelfile.chmod(0o644)
    return GGUFExport(path=out, modelfile=modelfile, dtype=dtype, size_bytes=out.stat().st_size,
                      seconds=time.perf_counter() - start, tensors=count)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m alpaca_helpers.demo.export_gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a LLaMA-architecture Hugging Face folder ('default' = the embedded model)")
    parser.add_argument("out", help="the .gguf file to write (a Modelfile for Ollama goes beside it)")
    parser.add_argument("--dtype", choices=DTYPES, default="f16", help="weight type (default: f16)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        result = export_gguf(args.model_dir, args.out, dtype=args.dtype, progress=not args.no_progress)
    except (ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.dtype}, {result.tensors} tensors, "
          f"{result.seconds:.1f} s) and {result.modelfile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
