"""The feedback comparison's parts (notebook 09 runs the whole of it with the real model): the verifier's pass rates
agree with IFEval's own scorer, best-of-n keeps the verifier's best, the judge's agreement counts, the presets and
their one-line refusals, and an output folder holding another run's settings is refused."""

import math

import pytest

from alpaca_helpers.data import load_seed_tasks
from alpaca_helpers.evaluate.ifeval import load_ifeval, score_ifeval
from alpaca_helpers.feedback.__main__ import main
from alpaca_helpers.feedback.compare import (
    best_rows,
    check_output_dir,
    constraint_scores,
    ifeval_as_prompts,
    judge_agreement,
    seed_prompts,
)
from alpaca_helpers.feedback.settings import FeedbackError, load_settings
from alpaca_helpers.self_instruct.server import free_port

PROMPT = {"key": 7, "instruction": "Describe a cat.", "input": "",
          "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]}


def test_pass_rates_are_ifevals_strict_accuracies_on_its_own_prompts():
    rows = load_ifeval()[:12]
    answers = ["a plain answer in lowercase without commas.", "An Answer, With Commas, In Title Case.",
               "* one\n* two\n* three", '{"answer": "json"}'] * 3
    prompt_level, instruction_level = constraint_scores(ifeval_as_prompts(rows), answers)
    scores = score_ifeval({r["prompt"]: a for r, a in zip(rows, answers)}, rows)
    assert prompt_level == pytest.approx(scores["prompt_strict"])
    assert instruction_level == pytest.approx(scores["instruction_strict"])


def test_constraint_scores_count_prompts_and_constraints():
    prompt_level, instruction_level = constraint_scores([PROMPT, PROMPT, PROMPT],
                                                        ["a cat is soft", "A cat, soft", "a cat, soft"])
    assert prompt_level == pytest.approx(1 / 3) and instruction_level == pytest.approx(3 / 6)


def test_best_of_n_keeps_the_verifiers_best_sample_first_among_ties():
    samples = [[{"output": "A Cat, Soft"}, {"output": "A cat is soft"}, {"output": "a cat is soft"},
                {"output": "a cat purrs"}]]
    assert best_rows([PROMPT], samples) == [{"output": "a cat is soft"}]


def test_judge_agreement_counts_only_pairs_where_the_judge_leans():
    judged = [{"preference": p} for p in (0.9, 0.8, 0.2, 0.5, None)]
    agreement = judge_agreement(judged)
    assert (agreement["agree"], agreement["disagree"], agreement["undecided"], agreement["n"]) == (2, 1, 2, 3)
    assert agreement["rate"] == pytest.approx(2 / 3)
    assert agreement["se"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
    assert judge_agreement([{"preference": 0.5}])["rate"] is None


def test_seed_prompts_are_seeded_apart_and_sized():
    settings = load_settings("cpu_course")
    records = load_seed_tasks()
    first, again, other = (seed_prompts(settings, records, s) for s in (0, 0, 1))
    assert first == again and first.train != other.train
    assert len(first.train) == settings.train_prompts and len(first.held_out) == settings.held_out_prompts
    held = {p["base_instruction"] for p in first.held_out}
    assert not held & {p["base_instruction"] for p in first.train}


def test_presets_load_and_mistakes_are_one_line(tmp_path, capsys):
    assert load_settings("cpu_course").train_config(tmp_path).loss == "dpo"
    seven = load_settings("alpaca_7b")
    assert seven.gpus == 8 and seven.judge_model and seven.train_config(tmp_path).dpo_beta == 0.5
    for overrides, message in [({"samples": 1}, "samples must be at least 2"),
                               ({"train": {"loss": "sft"}}, "set by the comparison itself"),
                               ({"train": {"learning_rat": 1}}, "unknown setting"),
                               ({"judge_base_url": "http://127.0.0.1:9", "judge_model": ""}, "judge_model"),
                               ({"seeds": [0, 0]}, "distinct")]:
        with pytest.raises(FeedbackError, match=message):
            load_settings("cpu_course", **overrides)
    assert main(["--preset", "nope", "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nope: no such feedback preset")
    # A judge endpoint that is down is refused before any sampling (nothing listens on a free port).
    down = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["--judge_base_url", down, "--judge_model", "m", "--output_dir", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: judge_base_url: teacher endpoint {down} is unreachable")
    assert not (tmp_path / "y").exists()  # nothing written: the same folder takes the corrected endpoint


def test_an_output_folder_of_other_settings_is_refused(tmp_path):
    check_output_dir(load_settings("cpu_course"), tmp_path)
    check_output_dir(load_settings("cpu_course", seeds=[0, 1]), tmp_path)  # more seeds may be added
    with pytest.raises(FeedbackError, match="other settings"):
        check_output_dir(load_settings("cpu_course", samples=3), tmp_path)
