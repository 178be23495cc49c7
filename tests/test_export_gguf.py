"""GGUF export: the file loads back in transformers (`gguf_file=`), its tokenizer and logits match the source
folder's within the bounds stated below, and the default model's greedy answers are identical in f16. Run on the
real default model and, in every dtype, on the fine-tuned folder of a real (2-step, CPU) training run. The exports
are a few hundred MB each: every file is deleted after its test. A SentencePiece LLaMA vocabulary (token scores and
types, the added <pad>) is exported and checked on the trained folder of tests/test_rehearsal_7b.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from alpaca_helpers.demo.decoding import STOP_MARKERS, Decoding
from alpaca_helpers.demo.export_gguf import ExportError, _hf_to_gguf_rotary, export_gguf
from alpaca_helpers.demo.generate import generate_batch, load_model
from alpaca_helpers.prompts import PROMPT_NO_INPUT, format_prompt

pytestmark = pytest.mark.slow

PROMPTS = [format_prompt({"instruction": "Name three primary colors."}),
           format_prompt({"instruction": "Translate to French.", "input": "Good morning, 12345 alpacas!"}),
           "The capital of France is"]
INSTRUCTIONS = ["What is an alpaca?", "Give three tips for staying healthy.", "What is the capital of Tanzania?",
                "Write a haiku about the sea.", "Add 12 and 30."]
# Logits against the source folder's (they span about ±30 here). The default model's weights are bf16, which f16 and
# bf16 hold exactly: its f16 export must match to float noise. A CPU fine-tune saves float32 weights; rounding them to
# f16 (11 significant bits) or bf16 (8) moves each weight by up to ~1e-5 relative to the fine-tune's own changes, and
# this small 30-layer model amplifies that on the Alpaca prompt (measured on a 2-step run: mean |Δ| 0.15 f16, 0.23
# bf16, 0.15 q8_0; max 2.0, 3.1, 1.0; next-token agreement >= 95%). The bounds below are those with about 2x margin.
EXACT = 1e-3
MEAN_MAX = {"f16": (0.3, 4.0), "bf16": (0.5, 6.0), "q8_0": (0.3, 3.0)}
AGREEMENT = 0.9  # share of positions whose most likely next token is unchanged


def _load(folder, gguf_file=None):
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()


def _logits(model, tokenizer):
    with torch.inference_mode():
        return [model(torch.tensor([tokenizer(p)["input_ids"]])).logits[0] for p in PROMPTS]


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory):
    """The fine-tuned folder (float32 weights) of a real, cheap CPU training run: 2 steps of 4 seed examples, in
    fp32 as `bf16: auto` trains on a CPU without native bf16 (bf16 training has its own tests: test_train_bf16.py)."""
    out = tmp_path_factory.mktemp("train")
    subprocess.run([sys.executable, "-m", "alpaca_helpers.train", "--device", "cpu", "--max_steps", "2",
                    "--global_batch_size", "4", "--per_device_train_batch_size", "4", "--max_examples", "8",
                    "--bf16", "false", "--output_dir", str(out)],
                   check=True, capture_output=True, text=True)
    found = [c.parent for c in out.rglob("config.json") if (c.parent / "model.safetensors").is_file()]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def tuned_reference(tuned_dir):
    tokenizer = AutoTokenizer.from_pretrained(tuned_dir)
    model = _load(tuned_dir)
    return model, tokenizer, _logits(model, tokenizer)


def _check_logits(reference, exported, mean_bound, max_bound, agreement=1.0):
    for want, got in zip(reference, exported, strict=True):
        error = (want - got).abs()
        assert float(error.mean()) < mean_bound and float(error.max()) < max_bound
        assert float((want.argmax(-1) == got.argmax(-1)).float().mean()) >= agreement


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_a_fine_tuned_folder_exports_and_loads_back(dtype, tuned_dir, tuned_reference, tmp_path):
    _, tokenizer, ref_logits = tuned_reference
    result = export_gguf(tuned_dir, tmp_path / f"alpaca-{dtype}.gguf", dtype=dtype, progress=False)
    try:
        assert result.path.is_file() and result.size_bytes == result.path.stat().st_size
        assert result.tensors == 272  # 30 blocks × 9 + embedding + final norm; the output is tied
        assert not list(tmp_path.glob(".*.tmp"))  # written atomically
        model = _load(tmp_path, result.path.name)
        _check_logits(ref_logits, _logits(model, tokenizer), *MEAN_MAX[dtype], AGREEMENT)
    finally:
        result.path.unlink()


def test_the_default_model_round_trips_with_its_tokenizer(default_tokenizer, tmp_path, capfd):
    result = export_gguf("default", tmp_path / "smollm2-f16.gguf", dtype="f16")
    assert capfd.readouterr().err == ""  # quiet by default: no progress bars in a notebook's stderr
    try:
        gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=result.path.name)
        for text in PROMPTS + ["<|im_start|>user\nHi<|im_end|>", "naïve café ☕ 3.14159"]:
            assert gguf_tokenizer(text)["input_ids"] == default_tokenizer(text)["input_ids"]
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            assert getattr(gguf_tokenizer, name) == getattr(default_tokenizer, name), name
        # fp32 pinned: the comparison is exact (bf16 inference, the default on a CPU with native bf16, is not)
        model, (reference, _) = _load(tmp_path, result.path.name), load_model("default", device="cpu",
                                                                              dtype=torch.float32)
        _check_logits(_logits(reference, default_tokenizer), _logits(model, gguf_tokenizer), EXACT, EXACT)
        greedy = Decoding(temperature=0, max_new_tokens=24)
        answers = generate_batch(model, gguf_tokenizer, INSTRUCTIONS, decoding=greedy)
        assert answers == generate_batch(reference, default_tokenizer, INSTRUCTIONS, decoding=greedy) and any(answers)
    finally:
        result.path.unlink()
    modelfile = result.modelfile.read_text()
    assert modelfile.startswith("FROM ./smollm2-f16.gguf\n")
    assert 'TEMPLATE """' + PROMPT_NO_INPUT.format(instruction="{{ .Prompt }}") + '"""' in modelfile
    assert [line.split(" ", 2)[2].strip('"') for line in modelfile.splitlines()
            if line.startswith("PARAMETER stop ")] == list(STOP_MARKERS)


def test_rotary_rows_are_reordered_the_way_transformers_undoes_them():
    """A wrong q/k order loads fine and gives garbage: pin it to the inverse transformers applies on load."""
    undo = LlamaTensorProcessor()._reverse_permute_weights
    for heads, rows in ((9, 576), (3, 192)):
        w = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        moved = _hf_to_gguf_rotary(w, heads)
        assert not np.array_equal(moved, w) and np.array_equal(undo(moved, heads, heads), w)
        # Within a head, the first-half row i and the second-half row i become neighbours.
        half = rows // heads // 2
        assert np.array_equal(moved[1], w[half]) and np.array_equal(moved[2], w[1])


def _llama_like(folder, **config):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda p: _llama_like(p, model_type="gpt2"), "is a 'gpt2' model, not a LLaMA-architecture one"),
    (lambda p: p.mkdir(), "has no config.json: not a Hugging Face model folder"),
    (lambda p: (p.mkdir(), (p / "adapter_config.json").write_text("{}")), "holds a LoRA adapter only"),
    (lambda p: _llama_like(p), "is missing its weights (model.safetensors)"),
    (lambda p: None, "no model folder at"),
])
def test_user_mistakes_get_one_line_errors(make, message, tmp_path):
    make(tmp_path / "model")
    with pytest.raises(ExportError) as err:
        export_gguf(tmp_path / "model", tmp_path / "out.gguf", progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.gguf").exists()


def test_the_cli_prints_one_line_and_exits_1(tmp_path):
    _llama_like(tmp_path / "model", model_type="mistral")
    run = subprocess.run([sys.executable, "-m", "alpaca_helpers.demo.export_gguf", str(tmp_path / "model"),
                          str(tmp_path / "out.gguf"), "--dtype", "q8_0"], capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"error: {tmp_path / 'model'} is a 'mistral' model, not a "
                                               "LLaMA-architecture one"]
