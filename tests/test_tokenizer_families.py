"""The course's tokenization through the real vocabularies of every tokenizer family people fine-tune.

The five vocabularies shipped in `data/tokenizers` (llama.cpp's vocab-only GGUF files): LLaMA-1/2 and Phi-3
(SentencePiece, with a dummy prefix), Llama-3, Qwen2 and GPT-2 (byte-level BPE); SmolLM2 (the default) is in
test_tokenize.py. For every shipped example, in Alpaca's prompt format and, where the tokenizer has one, its
chat template:
- the ids decode (special tokens aside) to exactly the prompt followed by the output;
- the first trained position is exactly where the prompt ends;
- the prompt's ids are exactly the ids generation feeds the model (`demo.generate.prompt_batch`, which
  notebook 05's `generate` and notebook 06's answers use, and the local judge's `_ids`);
- the last label is eos.
Before SentencePiece was handled, `check_tokenizer` refused LLaMA's tokenizer, so Alpaca's 7B preset could not train.
"""

from __future__ import annotations

import pytest

from alpaca_helpers.data import load_alpaca, load_alpaca_eval, load_davinci_predictions, load_seed_tasks
from alpaca_helpers.demo.generate import prompt_batch
from alpaca_helpers.models import VOCABULARIES, load_vocabulary
from alpaca_helpers.paths import data_dir
from alpaca_helpers.prompts import format_prompt, prompt_text
from alpaca_helpers.train.tokenize import (
    IGNORE_INDEX,
    adds_dummy_prefix,
    build_dataset,
    check_tokenizer,
    encode_continuation,
    encode_prompt,
    tokenize_example,
)

SENTENCEPIECE = {"llama-spm", "phi-3"}


@pytest.fixture(scope="module")
def shipped_examples() -> list[dict]:
    """Every Alpaca-shaped example the course ships: seed tasks, text-davinci-003's answers, AlpacaEval's
    GPT-4 Turbo answers and the safety set (1,281 records)."""
    return (load_seed_tasks() + load_davinci_predictions() + load_alpaca_eval()
            + load_alpaca(data_dir() / "safety_set.json"))


@pytest.fixture(scope="module", params=list(VOCABULARIES))
def vocabulary(request):
    return request.param, load_vocabulary(request.param)


def decoded(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_the_families_are_what_they_claim(vocabulary):
    name, tokenizer = vocabulary
    assert adds_dummy_prefix(tokenizer) == (name in SENTENCEPIECE)
    check_tokenizer(tokenizer)  # refused on main before SentencePiece was handled


def test_shipped_vocabularies_give_llama_cpp_reference_ids(vocabulary):
    """The shipped GGUF loads as the model maker's tokenizer: llama.cpp's reference ids for its test strings
    (transformers' SentencePiece differs from llama.cpp only on strings that start with spaces)."""
    name, tokenizer = vocabulary
    folder = data_dir() / "tokenizers"
    inputs = (folder / f"ggml-vocab-{name}.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    outputs = (folder / f"ggml-vocab-{name}.gguf.out").read_text().splitlines()
    expected = [[int(x) for x in line.split()] for line in outputs]
    pairs = [(text, ids) for text, ids in zip(inputs, expected) if text and not text.startswith((" ", "\t", "\n"))]
    same = sum(tokenizer(text, add_special_tokens=False)["input_ids"] == ids for text, ids in pairs)
    assert same >= len(pairs) - 1, f"{name}: {same} of {len(pairs)} reference tokenizations agree"


@pytest.mark.parametrize("prompt_format", ["alpaca", "chat"])
def test_every_shipped_example_keeps_its_text_boundary_prompt_and_eos(vocabulary, prompt_format, shipped_examples):
    name, tokenizer = vocabulary
    if prompt_format == "chat" and not tokenizer.chat_template:
        pytest.skip(f"{name}'s GGUF carries no chat template")

    failures = []
    for i, record in enumerate(shipped_examples):
        example = tokenize_example(record, tokenizer, max_length=100_000, prompt_format=prompt_format)
        ids, labels = example["input_ids"], example["labels"]
        prompt = prompt_text(record, prompt_format, tokenizer)
        fed = encode_prompt(tokenizer, prompt, prompt_format)
        first_trained = next(j for j, label in enumerate(labels) if label != IGNORE_INDEX)
        text_ok = decoded(tokenizer, ids) == decoded(tokenizer, fed) + record["output"]
        if prompt_format == "alpaca":
            text_ok = text_ok and decoded(tokenizer, ids) == prompt + record["output"]
        checks = {"text": text_ok, "boundary": first_trained == len(fed), "prompt": ids[:len(fed)] == fed,
                  "eos": labels[-1] == ids[-1] == tokenizer.eos_token_id}
        if not all(checks.values()):
            failures.append((i, [k for k, ok in checks.items() if not ok]))
    assert not failures, f"{name}/{prompt_format}: {len(failures)} of {len(shipped_examples)} fail: {failures[:5]}"
    if prompt_format == "alpaca":  # generation feeds exactly these prompt ids (left padding aside)
        sample = shipped_examples[:8]
        prompts = [format_prompt(r) for r in sample]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = prompt_batch(tokenizer, prompts)
        for row, prompt in enumerate(prompts):
            fed = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            assert fed == encode_prompt(tokenizer, prompt) == tokenizer(prompt)["input_ids"]


def test_batched_dataset_equals_one_by_one(vocabulary, shipped_examples):
    """The batched path `train` uses (`build_dataset`, fast-tokenizer batches) gives the same rows."""
    name, tokenizer = vocabulary
    records = shipped_examples[::40]
    built = build_dataset(records, tokenizer, max_length=100_000)
    for row in built.dataset:
        one = tokenize_example(records[row["example_id"]], tokenizer, max_length=100_000)
        assert row["input_ids"] == one["input_ids"] and row["labels"] == one["labels"], name


def test_the_dummy_prefix_is_what_sentencepiece_adds():
    """What notebook 03 shows: LLaMA's tokenizer turns "Hello" alone into "▁Hello" (a leading space once it
    follows a prompt); the course tokenizes a response behind a newline and drops the newline's ids."""
    tokenizer = load_vocabulary("llama-spm")
    prompt, response = "### Response:", "Hello"
    plain = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(plain) == ["▁Hello"]
    assert decoded(tokenizer, encode_prompt(tokenizer, prompt) + plain) == "### Response: Hello"
    continued = encode_continuation(tokenizer, [response])[0]
    assert tokenizer.convert_ids_to_tokens(continued) == ["Hello"]
    assert decoded(tokenizer, encode_prompt(tokenizer, prompt) + continued) == "### Response:Hello"
