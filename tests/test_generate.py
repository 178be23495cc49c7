"""`alpaca_helpers.demo.generate` on the real default model: response extraction, stopping, seeding, streaming,
model loading and the model picker's search."""

import os
import shutil
from dataclasses import replace

import pytest
import torch

import alpaca_helpers.demo.generate as gen
from alpaca_helpers.demo.decoding import Decoding
from alpaca_helpers.demo.generate import (
    BASE_MODEL,
    extract_response,
    find_models,
    generate,
    generate_batch,
    generate_stream,
    generate_tokens,
    load_model,
    model_choices,
    response_perplexity,
)
from alpaca_helpers.prompts import format_prompt
from alpaca_helpers.train.rehearsal import small_llama

HEALTH = "Give three tips for staying healthy."


@pytest.fixture(scope="module")
def lm():
    return load_model(BASE_MODEL)


def test_extract_response_cuts_at_the_next_section_and_strips():
    assert extract_response("\n1. Eat well\n2. Sleep\n\n### Instruction:\nList more tips.\n\n### Response:\n") == (
        "1. Eat well\n2. Sleep")
    assert extract_response(" Paris.\n### Input:\nx") == "Paris."
    assert extract_response("  A plain answer with a ## heading.  ") == "A plain answer with a ## heading."


def test_generation_stops_when_the_model_starts_a_new_instruction(lm):
    model, tokenizer = lm
    # Kept from ending (min_new_tokens), this model answers and then writes the next Alpaca example.
    decoding = Decoding(temperature=0, repetition_penalty=1.0, max_new_tokens=60, min_new_tokens=24)
    rows = generate_tokens(model, tokenizer, [format_prompt({"instruction": HEALTH})], decoding=decoding)
    raw = tokenizer.decode(rows[0], skip_special_tokens=True)
    assert raw.rstrip().endswith("### Instruction:"), raw
    assert len(rows[0]) < 60  # it stopped there instead of running on to the token limit
    answer = generate(model, tokenizer, HEALTH, decoding=decoding)
    assert answer == extract_response(raw) and answer.startswith("1.") and "###" not in answer


def test_generation_stops_at_eos_and_returns_only_the_response(lm):
    model, tokenizer = lm
    greedy = Decoding(temperature=0, max_new_tokens=40)
    answer = generate(model, tokenizer, "What is the capital of Tanzania?", decoding=greedy)
    assert "Tanzania" in answer and "Below is an instruction" not in answer and "<|im_end|>" not in answer
    rows = generate_tokens(model, tokenizer, [format_prompt({"instruction": "What is the capital of Tanzania?"})],
                           decoding=greedy)
    assert len(rows[0]) < 40 and tokenizer.eos_token_id not in rows[0]


def test_input_field_uses_the_template_with_input(lm):
    model, tokenizer = lm
    answer = generate(model, tokenizer, "Translate the sentence into French.", "Good morning, my friend.",
                      decoding=Decoding(temperature=0, max_new_tokens=12))
    assert answer and "### Input:" not in answer


def test_seeded_sampling_is_reproducible_and_streaming_matches(lm):
    model, tokenizer = lm
    # min_new_tokens: with the Alpaca prompt the base model often samples end-of-sequence first
    decoding = Decoding(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=16, min_new_tokens=8, seed=3)
    first = generate(model, tokenizer, HEALTH, decoding=decoding)
    assert first and first == generate(model, tokenizer, HEALTH, decoding=decoding)
    pieces = list(generate_stream(model, tokenizer, HEALTH, decoding=decoding))
    assert len(pieces) > 1 and "".join(pieces) == first
    others = {generate(model, tokenizer, HEALTH, decoding=replace(decoding, seed=s)) for s in (4, 5)}
    assert others - {first}, "other seeds should give other samples"


def test_beam_search_streams_as_one_piece(lm):
    model, tokenizer = lm
    decoding = Decoding(temperature=0, num_beams=2, max_new_tokens=8)
    pieces = list(generate_stream(model, tokenizer, "What is an alpaca?", decoding=decoding))
    assert pieces == [generate(model, tokenizer, "What is an alpaca?", decoding=decoding)]


def test_batch_uses_left_padding_and_keeps_order():
    # fp32: a batched answer is compared exactly with the unpadded one, which bf16 may round differently
    model, tokenizer = load_model(BASE_MODEL, dtype=torch.float32)
    questions = ["What is the capital of Tanzania?", "Name a primary color. Answer in one word."]
    greedy = Decoding(temperature=0, max_new_tokens=12)
    answers = generate_batch(model, tokenizer, questions, decoding=greedy)
    assert len(answers) == 2 and "Tanzania" in answers[0]
    assert answers[0] == generate(model, tokenizer, questions[0], decoding=greedy)


def test_errors_in_the_streaming_thread_reach_the_caller(lm, monkeypatch):
    model, tokenizer = lm

    def fails(**kwargs):
        raise ValueError("generation failed")

    monkeypatch.setattr(model, "generate", fails)  # runs in the streaming thread
    with pytest.raises(ValueError, match="generation failed"):
        list(generate_stream(model, tokenizer, HEALTH, decoding=Decoding(max_new_tokens=4)))


@pytest.mark.parametrize("settings, message", [
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"), ({"top_p": 1.5}, "top_p must be in"),
    ({"temperature": -0.1}, "temperature must be >= 0"), ({"max_new_tokens": -1}, "max_new_tokens must be at least 1"),
    ({"top_k": -1}, "top_k must be >= 0"), ({"num_beams": 0}, "num_beams must be at least 1"),
    ({"repetition_penalty": 0}, "repetition_penalty must be > 0"), ({"min_new_tokens": -2}, "min_new_tokens must be"),
])
def test_decoding_mistakes_get_one_line_errors(settings, message):
    with pytest.raises(ValueError, match=message) as err:
        Decoding(**settings)
    assert "\n" not in str(err.value)


def test_decoding_builds_the_generation_config(default_tokenizer):
    decoding = Decoding(temperature=0.5, top_p=0.8, top_k=7, max_new_tokens=9, min_new_tokens=3)
    sampled = decoding.to_generation_config(default_tokenizer)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.top_k) == (True, 0.5, 0.8, 7)
    assert (sampled.max_new_tokens, sampled.min_new_tokens) == (9, 3)
    assert sampled.pad_token_id == default_tokenizer.pad_token_id
    greedy = Decoding(temperature=0).to_generation_config(default_tokenizer)
    assert (greedy.do_sample, greedy.temperature, greedy.top_p, greedy.top_k) == (False, None, None, None)
    assert Decoding() == Decoding(temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=256, num_beams=1,
                                  repetition_penalty=1.0, seed=None)  # the demo's defaults


def test_models_load_once_and_unknown_paths_fail_clearly(lm, capsys, tmp_path):
    assert load_model("default") is lm and load_model(None) is lm
    with pytest.raises(FileNotFoundError, match="no model folder at .*nope.*models found: base"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_model("runs/does-not-exist")


def test_model_picker_lists_base_and_every_fine_tuned_folder(default_model_dir, tmp_path):
    def fake_checkpoint(folder, weights="model.safetensors"):
        folder.mkdir(parents=True)
        shutil.copy(default_model_dir / "config.json", folder / "config.json")
        os.symlink(default_model_dir / "model.safetensors", folder / weights)

    fake_checkpoint(tmp_path / "04_train" / "final")
    fake_checkpoint(tmp_path / "04_train" / "checkpoint-10")
    fake_checkpoint(tmp_path / "04_train" / ".tmp-save")  # a half-written save
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")  # no weights: not a model
    assert find_models(tmp_path) == [tmp_path / "04_train" / "checkpoint-10", tmp_path / "04_train" / "final"]
    choices = model_choices(tmp_path)
    assert choices[0] == ("base: SmolLM2-135M-Instruct", "default")
    assert [label for label, _ in choices[1:]] == ["fine-tuned: 04_train/checkpoint-10", "fine-tuned: 04_train/final"]
    assert find_models(tmp_path / "missing") == []
    # The converted default model's own folder is the base, not a fine-tuned model.
    assert find_models(default_model_dir.parent) == []


def test_model_picker_skips_a_model_cache_under_runs(default_model_dir, tmp_path, monkeypatch):
    """After `make test` (ALPACA_CACHE=runs/ci-cache) a course run with another cache must not offer the tests'
    converted copy of the base model, nor the cache's vocabularies, as fine-tuned models."""
    runs = tmp_path / "runs"
    copy = runs / "ci-cache" / default_model_dir.name
    copy.mkdir(parents=True)
    for f in default_model_dir.iterdir():  # the cache's folder as written: weights, config and its manifest
        os.symlink(f, copy / f.name)
    vocabulary = runs / "ci-cache" / "vocabularies" / "llama-spm"
    vocabulary.mkdir(parents=True)
    (vocabulary / "alpaca_conversion.json").write_text("{}")
    tuned = runs / "04_train" / "final"  # a fine-tuned save: no manifest
    tuned.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        os.symlink(default_model_dir / name, tuned / name)
    monkeypatch.setenv("ALPACA_CACHE", str(tmp_path / "elsewhere"))  # the course's cache is another folder
    monkeypatch.setattr(gen, "default_model", lambda: default_model_dir)  # no conversion into "elsewhere"
    assert find_models(runs) == [tuned]
    assert [label for label, _ in model_choices(runs)] == ["base: SmolLM2-135M-Instruct", "fine-tuned: 04_train/final"]
    # a converted copy anywhere (not only in a folder named like a cache) is the base model too
    moved = runs / "old" / "model"
    moved.mkdir(parents=True)
    for f in default_model_dir.iterdir():
        os.symlink(f, moved / f.name)
    assert find_models(runs) == [tuned]


def test_response_perplexity_prefers_the_models_own_answer(lm):
    model, tokenizer = lm
    greedy = Decoding(temperature=0, max_new_tokens=20)
    own = generate(model, tokenizer, "What is the capital of Tanzania?", decoding=greedy)
    scrambled = " ".join(reversed(own.split()))
    ppl = response_perplexity(model, tokenizer, ["What is the capital of Tanzania?"] * 2, [own, scrambled])
    own_ppl = response_perplexity(model, tokenizer, ["What is the capital of Tanzania?"], [own])
    assert 1.0 < own_ppl < ppl


def test_a_base_llama_without_pad_token_answers_in_batches(tmp_path):
    """LLaMA-1/2 base models (huggyllama/llama-7b) have no pad token: batches are left-padded with eos, masked,
    and each answer is the one the prompt gets alone; perplexity pads the same way."""
    model, tokenizer = load_model(str(small_llama(tmp_path / "llama")), dtype=torch.float32)
    assert tokenizer.pad_token_id is None
    questions = ["What is the capital of Tanzania?", "Name a color."]
    greedy = Decoding(temperature=0, max_new_tokens=6, stop_at_markers=False)
    answers = generate_batch(model, tokenizer, questions, decoding=greedy)
    assert answers == [generate(model, tokenizer, q, decoding=greedy) for q in questions]
    assert response_perplexity(model, tokenizer, questions, ["Dodoma.", "Blue, the colour of the sky."]) > 1
