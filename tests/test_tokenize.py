"""Tokenization with prompt masking: labels against an independent reference, boundaries, collation, packing."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alpaca_helpers.data import AlpacaFormatError, load_eval_set, load_seed_tasks
from alpaca_helpers.prompts import PromptFormatError, prompt_text
from alpaca_helpers.train.batches import (
    AlpacaCollator,
    global_batches,
    micro_batches,
    pack_features,
    pack_lengths,
    padding_waste,
)
from alpaca_helpers.train.tokenize import (
    IGNORE_INDEX,
    alpaca_original_tokenize,
    build_dataset,
    check_tokenizer,
    ensure_pad_token,
    resize_embeddings_mean,
    tokenize_batch,
    tokenize_example,
)

# The Alpaca templates, copied here from the Stanford release so that the reference does not share code
# with the module under test.
WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def reference_prompt(example: dict) -> str:
    template = WITH_INPUT if example.get("input") else NO_INPUT
    return template.format(instruction=example["instruction"], input=example.get("input", ""))


def reference(example: dict, tokenizer, max_length: int = 512):
    """Expected (input_ids, labels), or None if dropped, straight from the Rust tokenizer:
    prompt (with the tokenizer's own special prefix) masked, output cut to fit, then one trained eos."""
    backend = tokenizer.backend_tokenizer
    prompt = backend.encode(reference_prompt(example), add_special_tokens=True).ids
    response = backend.encode(example["output"], add_special_tokens=False).ids
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    room = max_length - len(prompt) - 1
    if room < (1 if response else 0):
        return None
    trained = response[:room] + [eos]
    return prompt + trained, [IGNORE_INDEX] * len(prompt) + trained


@pytest.fixture(scope="module")
def records():
    return load_seed_tasks() + load_eval_set()


@pytest.fixture(scope="module")
def bpe_tokenizer(records):
    """Another tokenizer, built here: a byte-level BPE trained on the shipped data, that adds a bos
    to every text (LLaMA-style) and has no pad token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([reference_prompt(r) + r["output"] for r in records], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def model32(default_model_dir):
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    return model.eval()


def _row_by_id(ds):
    return {row["example_id"]: row for row in ds}


@pytest.mark.parametrize("max_length", [512, 128])
@pytest.mark.parametrize("which", ["default", "bpe"])
def test_labels_match_reference_on_all_shipped_examples(which, max_length, records, default_tokenizer,
                                                        bpe_tokenizer):
    tokenizer = default_tokenizer if which == "default" else bpe_tokenizer
    ds, stats = build_dataset(records, tokenizer, max_length=max_length)
    rows = _row_by_id(ds)
    expected = {i: reference(r, tokenizer, max_length) for i, r in enumerate(records)}
    assert sorted(rows) == [i for i, e in expected.items() if e is not None]
    for i, row in rows.items():
        assert (row["input_ids"], row["labels"]) == expected[i], f"record {i}"
        assert len(row["input_ids"]) <= max_length
        assert row["labels"][-1] == tokenizer.eos_token_id  # eos always present and trained
    assert stats.total == len(records) and stats.kept == len(rows)
    assert stats.dropped == len(records) - len(rows)
    assert stats.dropped_ids == sorted(set(range(len(records))) - set(rows))
    assert stats.truncated == sum(row["truncated"] for row in rows.values())
    if max_length == 128:  # the short window exercises both paths on real data
        assert stats.dropped > 0 and stats.truncated > 0


@pytest.mark.parametrize("which", ["default", "bpe"])
def test_decoding_trained_and_masked_positions(which, records, default_tokenizer, bpe_tokenizer):
    tokenizer = default_tokenizer if which == "default" else bpe_tokenizer
    prefix = tokenizer.bos_token if which == "bpe" else ""
    for i, record in enumerate(records):
        out = tokenize_example(record, tokenizer, max_length=8192)  # no truncation here
        trained = [t for t, label in zip(out["input_ids"], out["labels"]) if label != IGNORE_INDEX]
        masked = [t for t, label in zip(out["input_ids"], out["labels"]) if label == IGNORE_INDEX]
        assert trained == [label for label in out["labels"] if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == record["output"] + tokenizer.eos_token, f"record {i}"
        assert tokenizer.decode(masked) == prefix + reference_prompt(record), f"record {i}"


def test_batched_map_with_processes_equals_per_example(records, default_tokenizer):
    ds, _ = build_dataset(records, default_tokenizer, max_length=256, num_proc=2, batch_size=100)
    for row in ds:
        one = tokenize_example(records[row["example_id"]], default_tokenizer, max_length=256)
        assert (row["input_ids"], row["labels"]) == (one["input_ids"], one["labels"])
        assert one["attention_mask"] == [1] * len(one["input_ids"])


def test_batched_function_works_with_dataset_map_directly(records, default_tokenizer):
    raw = Dataset.from_list([{k: r[k] for k in ("instruction", "input", "output")} for r in records[:50]])
    ds = raw.map(tokenize_batch, batched=True, with_indices=True, remove_columns=raw.column_names,
                 fn_kwargs={"tokenizer": default_tokenizer, "max_length": 512})
    assert ds["example_id"] == list(range(50))
    assert ds[7]["labels"] == tokenize_example(records[7], default_tokenizer)["labels"]


def test_boundary_merge_is_real_and_handled(records, default_tokenizer):
    """The original recipe's prompt tokens are not always a prefix of the full text's; ours are exact,
    and equal to the original wherever the original is right."""
    merged = 0
    for record in records:
        orig = alpaca_original_tokenize(record, default_tokenizer, max_length=8192)
        ours = tokenize_example(record, default_tokenizer, max_length=8192)
        prompt_ids = default_tokenizer(reference_prompt(record))["input_ids"]
        if orig["input_ids"][:len(prompt_ids)] != prompt_ids:
            merged += 1
            assert orig["labels"] != ours["labels"]
        else:
            assert orig == {"input_ids": ours["input_ids"], "labels": ours["labels"]}
    assert merged > 0
    example = {"instruction": "List two fruits.", "input": "", "output": "- apple\n- pear"}
    ours = tokenize_example(example, default_tokenizer)
    n_prompt = ours["labels"].count(IGNORE_INDEX)
    assert default_tokenizer.decode(ours["input_ids"][n_prompt:]) == "- apple\n- pear" + default_tokenizer.eos_token


def test_empty_input_uses_the_no_input_template(default_tokenizer):
    out = tokenize_example({"instruction": "Say hi.", "input": "", "output": "Hi!"}, default_tokenizer)
    masked = [t for t, label in zip(out["input_ids"], out["labels"]) if label == IGNORE_INDEX]
    assert default_tokenizer.decode(masked) == NO_INPUT.format(instruction="Say hi.")
    assert tokenize_example({"instruction": "Say hi.", "output": "Hi!"}, default_tokenizer) == out


def test_empty_output_trains_only_the_eos(default_tokenizer):
    out = tokenize_example({"instruction": "Stay silent.", "input": "", "output": ""}, default_tokenizer)
    assert [label for label in out["labels"] if label != IGNORE_INDEX] == [default_tokenizer.eos_token_id]


def test_long_input_prompt_over_max_length_is_dropped_and_counted(default_tokenizer):
    long = {"instruction": "Summarize.", "input": "word " * 2000, "output": "Words."}
    short = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
    assert tokenize_example(long, default_tokenizer) is None
    ds, stats = build_dataset([short, long, short], default_tokenizer)
    assert ds["example_id"] == [0, 2]
    assert (stats.kept, stats.dropped, stats.dropped_ids, stats.truncated) == (2, 1, [1], 0)
    for row in ds:
        assert any(label != IGNORE_INDEX for label in row["labels"])


def test_truncation_keeps_a_trained_eos_and_drop_policy(default_tokenizer):
    example = {"instruction": "Count.", "input": "", "output": " ".join(str(i) for i in range(400))}
    n_prompt = len(default_tokenizer(reference_prompt(example))["input_ids"])
    out = tokenize_example(example, default_tokenizer, max_length=n_prompt + 10)
    assert len(out["input_ids"]) == n_prompt + 10
    assert out["labels"][-1] == default_tokenizer.eos_token_id
    assert sum(label != IGNORE_INDEX for label in out["labels"]) == 10  # 9 response tokens + eos
    assert tokenize_example(example, default_tokenizer, max_length=n_prompt + 10, overflow="drop") is None
    # room for eos only: nothing of a non-empty response would be trained, so it is dropped
    assert tokenize_example(example, default_tokenizer, max_length=n_prompt + 1) is None
    assert tokenize_example(example, default_tokenizer, max_length=n_prompt + 2)["labels"][-2:] != [IGNORE_INDEX] * 2
    empty = dict(example, output="")
    assert tokenize_example(empty, default_tokenizer, max_length=n_prompt + 1)["labels"][-1] == 2


def test_non_ascii_round_trips(default_tokenizer, bpe_tokenizer):
    example = {"instruction": "Traduis en japonais : « bonjour »", "input": "Ünïcödé, emoji 🦙, 東京",
               "output": "こんにちは — 🦙 ✓"}
    for tokenizer in (default_tokenizer, bpe_tokenizer):
        out = tokenize_example(example, tokenizer)
        trained = [t for t in out["labels"] if t != IGNORE_INDEX]
        assert tokenizer.decode(trained) == example["output"] + tokenizer.eos_token


@pytest.mark.parametrize("bad, field", [
    ({"instruction": "Do.", "input": ""}, "output"),
    ({"instruction": "Do.", "input": "", "output": 3}, "output"),
    ({"instruction": None, "input": "", "output": "x"}, "instruction"),
    ({"instruction": "Do.", "input": ["a"], "output": "x"}, "input"),
])
def test_bad_records_name_index_and_field(bad, field, default_tokenizer):
    good = {"instruction": "Do.", "input": "", "output": "Done."}
    with pytest.raises(AlpacaFormatError, match=rf"record 2\b.*'{field}'"):
        build_dataset([good, good, bad], default_tokenizer)
    with pytest.raises(AlpacaFormatError, match=rf"record 5\b.*'{field}'"):
        tokenize_example(bad, default_tokenizer, index=5)


def test_tokenizer_that_changes_the_boundary_is_refused():
    """A tokenizer that puts a word-start marker before every word (Metaspace "always", not SentencePiece's
    dummy prefix before the text alone) cannot keep a response's text: it is refused, saying so."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    tok.train_from_iterator(["### Response: Hello - item \"quoted\" spaced new line"],
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"],
                                                show_progress=False))
    sp_like = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    with pytest.raises(ValueError, match="boundary"):
        check_tokenizer(sp_like)


def test_collator_pads_by_position_and_keeps_the_real_eos(default_tokenizer):
    assert default_tokenizer.pad_token_id == default_tokenizer.eos_token_id  # the trap this guards against
    features = [tokenize_example({"instruction": "Say hi.", "output": out}, default_tokenizer)
                for out in ("Hi!", "Hello there, how are you today?")]
    batch = AlpacaCollator(default_tokenizer.pad_token_id, pad_to_multiple_of=8)(features)
    n0, n1 = (len(f["input_ids"]) for f in features)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= n1
    assert batch["input_ids"][0, n0:].eq(default_tokenizer.pad_token_id).all()
    assert batch["labels"][0, n0:].eq(IGNORE_INDEX).all() and batch["labels"][1, n1:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    for row, f in enumerate(features):  # the eos label survives although its id is the pad id
        assert batch["labels"][row, len(f["input_ids"]) - 1] == default_tokenizer.eos_token_id
        assert batch["labels"][row, :len(f["labels"])].tolist() == f["labels"]


def test_ensure_pad_token_adds_one_with_mean_embeddings(default_tokenizer, default_model_dir):
    tokenizer = copy.deepcopy(default_tokenizer)
    tokenizer.pad_token = None  # as for a tokenizer that ships without one (LLaMA-1, Alpaca's case)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    old = model.get_input_embeddings().weight.detach().clone()
    size = old.shape[0]
    assert len(tokenizer) == size
    pad = ensure_pad_token(tokenizer, model)
    assert pad == size and tokenizer.pad_token == "<pad>" and pad != tokenizer.eos_token_id
    new = model.get_input_embeddings().weight
    assert new.shape[0] == -(-(size + 1) // 64) * 64 and new.shape[0] % 64 == 0  # padded to a multiple of 64
    torch.testing.assert_close(new[size:], old.mean(0).expand(new.shape[0] - size, -1))
    torch.testing.assert_close(model.get_output_embeddings().weight[size], old.mean(0))  # tied here
    assert ensure_pad_token(tokenizer, model) == pad  # already there: unchanged
    features = [tokenize_example({"instruction": "Hi.", "output": o}, tokenizer) for o in ("a", "a b c d")]
    batch = AlpacaCollator(pad)(features)
    assert batch["input_ids"][0, -1] == pad and batch["labels"][0, -1] == IGNORE_INDEX


def test_packed_batch_loss_equals_unpacked(records, default_tokenizer, model32):
    """No example sees another: same loss packed (position_ids restarts) as unpacked."""
    # short rows keep the three forward passes of a 135M model quick on 2 cores
    features = [tokenize_example(r, default_tokenizer, max_length=80) for r in records[:10]]
    features = [f for f in features if f is not None][:6]
    assert len(features) == 6
    pad = default_tokenizer.pad_token_id
    rows = pack_features(features, max_length=256)
    assert len(rows) < len(features)
    assert sorted(i for row in rows for i in row["example_ids"]) == list(range(len(features)))
    for row in rows:
        assert len(row["input_ids"]) <= 256
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert [row["labels"][s] for s in starts] == [IGNORE_INDEX] * len(starts)
    with torch.no_grad():
        unpacked = model32(**AlpacaCollator(pad)(features)).loss
        packed = model32(**AlpacaCollator(pad, pad_to_multiple_of=32)(rows), use_cache=False).loss
    assert abs(packed.item() - unpacked.item()) < 1e-5


def test_pack_lengths_fits_and_covers():
    rng = random.Random(0)
    lengths = [rng.randint(1, 512) for _ in range(2000)]
    bins = pack_lengths(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(2000))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert len(bins) <= 1.1 * sum(lengths) / 512 + 1  # near the lower bound
    with pytest.raises(ValueError, match="item 1"):
        pack_lengths([3, 600], 512)


def test_length_grouping_cuts_padding_waste():
    rng = random.Random(1)
    lengths = [rng.randint(20, 500) for _ in range(3000)]
    order = global_batches(len(lengths), 128, seed=0, epoch=0)  # as training cuts each epoch
    grouped = [m for b in order for m in micro_batches(b, lengths, 16, group_by_length=True)]
    shuffled = [m for b in order for m in micro_batches(b, lengths, 16, group_by_length=False)]
    for batches in (grouped, shuffled):
        assert sorted(i for b in batches for i in b) == sorted(i for b in order for i in b)
        assert all(len(b) == 16 for b in batches)
    assert padding_waste(lengths, grouped) < padding_waste(lengths, shuffled) / 3
    assert padding_waste([5, 5], [[0, 1]]) == 0.0
    assert padding_waste([5, 5], [[0, 1]], pad_to_multiple_of=8) == pytest.approx(3 / 8)


def test_packing_a_dataset_and_drop_policy_counts(records, default_tokenizer):
    ds, stats = build_dataset(records[:200], default_tokenizer, max_length=160, overflow="drop")
    assert stats.truncated == 0 and stats.dropped > 0 and stats.kept + stats.dropped == 200
    assert all(len(ids) <= 160 for ids in ds["input_ids"])
    packed = pack_features(ds.select_columns(["input_ids", "labels", "example_id"]).to_list(), max_length=512)
    assert sorted(i for row in packed for i in row["example_ids"]) == sorted(ds["example_id"])
    assert sum(len(row["input_ids"]) for row in packed) == sum(map(len, ds["input_ids"]))
    assert all(len(row["input_ids"]) <= 512 for row in packed)


def test_llama_vocab_plus_pad_is_padded_to_a_multiple_of_64():
    """LLaMA's 32,000 tokens + <pad> = 32,001 would give misaligned LM-head matmuls: 32,064 rows, all the
    new ones (input and untied output) the mean of the old rows."""
    config = LlamaConfig(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    resize_embeddings_mean(model, 32001)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape == new_out.shape == (32064, 16) and model.config.vocab_size == 32064
    torch.testing.assert_close(new_in[:32000], old_in)
    torch.testing.assert_close(new_in[32000:], old_in.mean(0).expand(64, -1))
    torch.testing.assert_close(new_out[32000:], old_out.mean(0).expand(64, -1))
    resize_embeddings_mean(model, 32064)  # already that size: unchanged
    assert model.get_input_embeddings().weight.shape[0] == 32064


def test_chat_prompt_format_masks_the_chat_template_and_trains_the_same_answer(default_tokenizer):
    record = {"instruction": "Summarize the text.", "input": "Alpacas are camelids.",
              "output": "Alpacas are camelids."}
    chat = tokenize_example(record, default_tokenizer, prompt_format="chat")
    alpaca = tokenize_example(record, default_tokenizer, prompt_format="alpaca")
    prompt = prompt_text(record, "chat", default_tokenizer)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert "Summarize the text.\n\nAlpacas are camelids." in prompt  # the input follows the instruction
    n_prompt = len(default_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert chat["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert chat["input_ids"][:n_prompt] == default_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    trained = [[t for t in x["labels"] if t != IGNORE_INDEX] for x in (chat, alpaca)]
    assert trained[0] == trained[1] and trained[0][-1] == default_tokenizer.eos_token_id
    no_template = copy.deepcopy(default_tokenizer)
    no_template.chat_template = None
    with pytest.raises(PromptFormatError, match="needs a tokenizer with a chat template"):
        tokenize_example(record, no_template, prompt_format="chat")
    with pytest.raises(PromptFormatError, match="must be one of alpaca, chat"):
        prompt_text(record, "chatml")
