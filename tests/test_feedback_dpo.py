"""`alpaca_helpers.train.preference` and `alpaca_helpers.feedback.dpo`: the DPO loss by hand on tensors, only
response tokens counting, the reference log-probabilities computed once, and the loss, rewards and reference equal
to TRL's `DPOTrainer` on the same batch (the real embedded model)."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from alpaca_helpers.feedback.dpo import dpo_batch_loss, pair_losses, reference_logps, with_reference_logps
from alpaca_helpers.prompts import format_prompt
from alpaca_helpers.train.preference import dpo_loss, dpo_metrics, pair_batch, response_features, response_logps
from alpaca_helpers.train.tokenize import encode_prompt

BETA = 0.1
PAIRS = [
    {"prompt": format_prompt({"instruction": "Name the capital of France.\nAnswer in lowercase."}),
     "chosen": " the capital of france is paris.", "rejected": " The capital of France is Paris, of course."},
    {"prompt": format_prompt({"instruction": "List two fruits.", "input": "Use bullet points."}),
     "chosen": "\n* apple\n* pear", "rejected": " Apples and pears are two fruits that many people like to eat."},
]


@pytest.fixture(scope="module")
def model(default_model_dir):
    # float64: TRL scores tokens with its own chunked LM-head kernel, whose float32 sums differ from a plain forward
    # by ~1e-4 over a response; in float64 both agree to ~1e-6 and the comparison tests the loss, not the rounding.
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def reference(model, default_tokenizer):
    return reference_logps(model, default_tokenizer, PAIRS, batch_size=2)


def test_loss_rewards_and_metrics_by_hand():
    pc, pr = torch.tensor([-5.0, -3.0]), torch.tensor([-6.0, -2.0])
    rc, rr = torch.tensor([-5.5, -3.0]), torch.tensor([-5.5, -2.5])
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 0: log-ratios 0.5 and -0.5, z = 0.5 * 1.0; pair 1: log-ratios 0 and 0.5, z = 0.5 * -0.5
    expected = [math.log1p(math.exp(-0.5)), math.log1p(math.exp(0.25))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.25, 0.0]) and rejected_rewards.tolist() == pytest.approx(
        [-0.25, 0.25])
    metrics = dpo_metrics(losses, chosen_rewards, rejected_rewards, pc, pr)
    assert metrics == pytest.approx({"loss": sum(expected) / 2, "rewards/chosen": 0.125, "rewards/rejected": 0.0,
                                     "rewards/accuracies": 0.5, "rewards/margins": 0.125, "logps/chosen": -4.0,
                                     "logps/rejected": -4.0})
    same = dpo_loss(pc, pr, pc, pr)[0]  # policy = reference: log 2 whatever beta
    assert same.tolist() == pytest.approx([math.log(2)] * 2)


def test_only_labelled_tokens_count_in_the_log_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 4)
    labels = torch.tensor([[-100, -100, 3, 1, -100]])  # prompt, prompt, response, response(eos), padding
    log_probs = logits.log_softmax(-1)
    assert response_logps(logits, labels).item() == pytest.approx((log_probs[0, 1, 3] + log_probs[0, 2, 1]).item())
    changed = logits.clone()
    changed[0, 0] += torch.tensor([5.0, -3.0, 2.0, 1.0])  # predicts a prompt token
    changed[0, 3:] = 9.0  # predicts padding, and beyond
    assert response_logps(changed, labels).item() == pytest.approx(response_logps(logits, labels).item())


def test_features_mask_the_prompt_as_the_training_recipe(default_tokenizer, model, reference):
    pair = PAIRS[0]
    features = response_features(default_tokenizer, pair["prompt"], pair["chosen"])
    n_prompt = len(encode_prompt(default_tokenizer, pair["prompt"]))
    assert features["labels"][:n_prompt] == [-100] * n_prompt
    assert features["labels"][n_prompt:] == features["input_ids"][n_prompt:]
    assert features["input_ids"][-1] == default_tokenizer.eos_token_id
    assert default_tokenizer.decode(features["input_ids"][n_prompt:-1]) == pair["chosen"]
    cut = response_features(default_tokenizer, pair["prompt"], pair["chosen"], max_length=n_prompt + 3)
    assert len(cut["input_ids"]) == n_prompt + 3 and cut["input_ids"][-1] == default_tokenizer.eos_token_id
    # by hand: the log-probs of the response's tokens and eos only, each predicted from the position before
    batch = pair_batch(default_tokenizer, PAIRS)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    ids = batch["input_ids"][0]
    by_hand = sum(full[0, t - 1, ids[t]].item() for t in range(n_prompt, len(features["input_ids"])))
    assert reference[0][0] == pytest.approx(by_hand, abs=1e-8)


def test_reference_is_batched_without_gradients_and_padding_does_not_count(default_tokenizer, model, reference):
    model.train()
    alone = reference_logps(model, default_tokenizer, PAIRS, batch_size=1)
    assert model.training  # the mode is put back
    model.eval()
    assert [x for pair in alone for x in pair] == pytest.approx([x for pair in reference for x in pair], abs=1e-6)
    stored = with_reference_logps(PAIRS, reference)
    assert stored[0]["ref_chosen_logps"] == reference[0][0] and stored[1]["ref_rejected_logps"] == reference[1][1]
    assert set(stored[0]) == set(PAIRS[0]) | {"ref_chosen_logps", "ref_rejected_logps"}
    loss, metrics = dpo_batch_loss(model, default_tokenizer, stored, beta=BETA)
    assert loss.requires_grad and loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="no reference log-probabilities"):
        dpo_batch_loss(model, default_tokenizer, PAIRS)


def test_loss_and_rewards_equal_trls_dpo_trainer(default_model_dir, default_tokenizer, model, reference, tmp_path):
    trl_model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float64)
    config = DPOConfig(output_dir=str(tmp_path), beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True,
                       per_device_train_batch_size=2, bf16=False, use_cpu=True, report_to="none", max_length=None)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in PAIRS])
    trainer = DPOTrainer(model=trl_model, args=config, train_dataset=dataset, processing_class=default_tokenizer)
    trainer.model.eval()

    # TRL's precomputed reference (stored as float32) = ours: its tokenization counts the same tokens
    trl_reference = [(row["ref_chosen_logps"], row["ref_rejected_logps"]) for row in trainer.train_dataset]
    assert [x for p in trl_reference for x in p] == pytest.approx([x for p in reference for x in p], abs=1e-4)

    # a reference that differs from the policy, so that the loss is not log 2
    shifted = [(c - 2.0 + i, r + 1.5 - 3 * i) for i, (c, r) in enumerate(reference)]
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    rows = [{**{k: trainer.train_dataset[i][k] for k in columns}, "ref_chosen_logps": shifted[i][0],
             "ref_rejected_logps": shifted[i][1]} for i in range(len(PAIRS))]

    def trl_loss(indices):
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, trainer.data_collator([rows[i] for i in indices]))
        logged = {k: v[-1] for k, v in trainer._metrics["eval"].items() if k.startswith(("rewards/", "logps/"))}
        return loss.item(), logged

    with torch.no_grad():
        ours = pair_losses(model, default_tokenizer, with_reference_logps(PAIRS, shifted), beta=BETA)
    metrics = dpo_metrics(ours["losses"], ours["chosen_rewards"], ours["rejected_rewards"], ours["chosen_logps"],
                          ours["rejected_logps"])
    trl_mean, trl_metrics = trl_loss([0, 1])
    assert ours["losses"].mean().item() == pytest.approx(trl_mean, abs=1e-5) and abs(trl_mean - math.log(2)) > 0.05
    assert set(trl_metrics) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                                "logps/chosen", "logps/rejected"}
    assert {k: metrics[k] for k in trl_metrics} == pytest.approx(trl_metrics, abs=1e-5)
    for i in range(len(PAIRS)):  # per pair: TRL on a batch of one
        trl_one, trl_metrics = trl_loss([i])
        assert ours["losses"][i].item() == pytest.approx(trl_one, abs=1e-5)
        assert ours["chosen_rewards"][i].item() == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-5)
        assert ours["rejected_rewards"][i].item() == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-5)
