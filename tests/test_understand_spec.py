"""The ablation's specification, arms, cleaning rules, grades and statistics (no training here; the runs are in
test_understand_run.py)."""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from alpaca_helpers.course import TRAIN_SET, linked_parameters
from alpaca_helpers.demo.generate import load_model
from alpaca_helpers.evaluate.refusal import classify_refusal
from alpaca_helpers.evaluate.stats import mean_se
from alpaca_helpers.self_instruct.teacher import Completion
from alpaca_helpers.train.config import make_config
from alpaca_helpers.train.tokenize import IGNORE_INDEX, build_dataset
from alpaca_helpers.understand import grade
from alpaca_helpers.understand.ablate import main
from alpaca_helpers.understand.arms import Arm, Pool, arm_records, mix_count
from alpaca_helpers.understand.clean import clean_reasons
from alpaca_helpers.understand.errors import AblationError
from alpaca_helpers.understand.grade import GraderConfig, expected_grade, grade_records, parse_grade
from alpaca_helpers.understand.metrics import evaluation_sets, measure
from alpaca_helpers.understand.spec import arm_config, load_spec, parse_spec
from alpaca_helpers.understand.stats import (
    COVERS,
    MIN_SEEDS,
    conclusion,
    conclusions_note,
    paired_difference,
    summarize,
    t_quantile,
    told_apart,
)

TINY = {"base": {"data_path": "seed", "max_examples": 24, "model_max_length": 96, "global_batch_size": 2,
                 "per_device_train_batch_size": 2},
        "budget": {"steps": 2}, "seeds": [0, 1], "baseline": "all", "evaluation": {"heldout": 4},
        "arms": {"all": {"kind": "base"}, "longest": {"kind": "selection", "method": "longest", "n": 4}}}


def with_change(**change):
    raw = copy.deepcopy(TINY)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) and key != "budget" else value
    return raw


def test_the_shipped_presets_parse():
    course = load_spec("cpu_course")
    assert list(course.arms) == ["all", "random_n", "longest_n", "graded_n", "prompt_loss"]
    assert course.baseline == "all"
    assert course.gpus == 0 and course.seeds == (0, 1) and course.evaluation.max_length == 128
    big = load_spec("alpaca_7b")
    cfg = big.base_config()
    assert big.gpus == 8 and cfg.learning_rate == 2e-5 and cfg.global_batch_size == 128  # configs/alpaca_7b.yaml
    assert cfg.data_path == "tatsu-lab/alpaca" and big.arms["cleaned"].params["data_path"] == "yahma/alpaca-cleaned"
    assert big.steps(cfg) * cfg.global_batch_size == 27_008 and big.arms["graded_n"].params["n"] == 9000
    # Overrides: None keeps the preset's, an arm set to None is dropped, select_n reaches every selection arm.
    small = load_spec("cpu_course", select_n=5, base={"data_path": None, "learning_rate": 3e-4},
                      arms={"random_n": None}, seeds=[3], budget_steps=2)
    assert "random_n" not in small.arms and small.arms["longest_n"].params["n"] == 5
    assert small.base_config().data_path == "seed" and small.base_config().learning_rate == 3e-4
    assert small.seeds == (3,) and small.budget.steps == 2


@pytest.mark.parametrize("change, message", [
    ({"arms": {"x": {"kind": "bogus"}}}, "arm 'x': unknown kind 'bogus' (kinds: base, size,"),
    ({"arms": {"x": {"kind": "setting", "val_set_size": 0.1}}},
     "arm 'x': changes val_set_size, which would change the evaluation set"),
    ({"arms": {"x": {"kind": "setting", "data_path": "other.json"}}},
     "arm 'x': changes data_path, which would change the evaluation set"),
    ({"baseline": "nope"}, "baseline 'nope' is not one of the arms (all, longest)"),
    ({"arms": {"x": {"kind": "setting", "seed": 3}}}, "arm 'x': changes seed, which every arm shares"),
    ({"arms": {"x": {"kind": "setting", "learning_rate": 1e-3, "warmup_ratio": 0.0}}},
     "changes exactly one training setting"),
    ({"arms": {"x": {"kind": "setting", "learning_rate": "fast"}}},
     "arm 'x': learning_rate: cannot read 'fast' as float"),
    ({"arms": {"x": {"kind": "selection", "method": "best", "n": 3}}}, "arm 'x': method 'best' unknown"),
    ({"arms": {"x": {"kind": "selection", "method": "random"}}}, "arm 'x': kind selection needs n"),
    ({"arms": {"x": {"kind": "cleaning", "rules": ["typos"]}}}, "arm 'x': unknown cleaning rule(s) ['typos']"),
    ({"arms": {"x": {"kind": "size", "fraction": 1.5}}}, "arm 'x': fraction must be in (0, 1]"),
    ({"seeds": [0, -1]}, "seeds: a list of distinct whole numbers from 0 to 2**32 - 1, got [0, -1]"),
    ({"seeds": [1, 1]}, "seeds: a list of distinct whole numbers"),
    ({"budget": {"steps": 2, "examples": 4}}, "budget: give steps (equal optimizer steps) or examples"),
    ({"base": {"max_steps": 5}}, "base: max_steps is set by the ablation (budget), not in base"),
    ({"evaluation": {"metrics": ["val_loss", "bleu"]}}, "evaluation: unknown metric(s) ['bleu']"),
    ({"evaluation": {"metrics": ["val_loss", "ifeval"]}}, "evaluation: the ifeval metric needs ifeval_items >= 1"),
    ({"evaluation": {"xstest_items": 4}}, "evaluation: the xstest metric needs xstest_items >= 1, and xstest_items"),
    ({"evaluation": {"metrics": ["xstest"], "xstest_items": 201}}, "xstest_items is per group, at most 200"),
    ({"arms": {"x": {"kind": "mix", "share": 0.03}}}, "arm 'x': kind mix needs data_path"),
    ({"arms": {"x": {"kind": "mix", "data_path": "data/seed_tasks.jsonl"}}}, "arm 'x': kind mix needs share"),
    ({"arms": {"x": {"kind": "mix", "data_path": "data/seed_tasks.jsonl", "share": 1.0}}},
     "arm 'x': share must be a number in [0, 1), got 1.0"),
    ({"arms": {"x": {"kind": "mix", "data_path": "data/seed_tasks.jsonl", "share": "3%"}}},
     "arm 'x': share must be a number in [0, 1), got '3%'"),
    ({"arms": {"x": {"kind": "mix", "data_path": "no_such_safety.json", "share": 0.1}}},
     "arm 'x': data_path 'no_such_safety.json' is not a file"),
    ({"arms": {"x": {"kind": "mix", "data_path": "data/seed_tasks.jsonl", "share": 0.1, "n": 3}}},
     "arm 'x': unknown parameter(s) ['n'] for kind mix (it takes: data_path, share)"),
])
def test_each_mistake_is_one_clear_line(change, message):
    with pytest.raises(AblationError) as err:
        parse_spec(with_change(**change))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_examples_budget_gives_every_arm_the_same_examples_seen():
    spec = parse_spec(with_change(budget={"examples": 8},
                                  arms={"big_batch": {"kind": "setting", "global_batch_size": 4}}))
    seen = {name: arm_config(spec, arm, 0, "d.json", "r") for name, arm in spec.arms.items()}
    assert {n: c.max_steps for n, c in seen.items()} == {"all": 4, "longest": 4, "big_batch": 2}
    assert {c.max_steps * c.global_batch_size for c in seen.values()} == {8}
    with pytest.raises(AblationError, match="budget: 7 examples are not a whole number of global batches of 2"):
        parse_spec(with_change(budget={"examples": 7}))


def test_the_cli_refuses_a_selection_larger_than_the_pool_before_any_training(tmp_path, capsys):
    spec = tmp_path / "too_many.yaml"
    too_many = {"longest": {"kind": "selection", "method": "longest", "n": 500}}
    spec.write_text(yaml.safe_dump(with_change(arms=too_many)))
    assert main(["--spec", str(spec), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: arm 'longest': selects 500 records but the pool holds") and "\n" not in err
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained
    assert main(["--spec", str(tmp_path / "missing.yaml")]) == 2
    assert "no such ablation" in capsys.readouterr().err
    spec.write_text(yaml.safe_dump({**TINY, "cpu_processes": 3}))  # a global batch of 2 does not split over 3
    assert main(["--spec", str(spec), "--output_dir", str(tmp_path / "out")]) == 2
    assert "error: arm 'all': global batch 2 is not divisible by" in capsys.readouterr().err
    assert main(["--spec", str(spec), "--gpus", "64", "--output_dir", str(tmp_path / "out")]) == 2
    assert "error: gpus=64 but this machine has" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


def pool() -> Pool:
    rows = [
        {"instruction": "Write a haiku about the sea.", "input": "", "output": "Waves fold into foam. " * 3,
         "source": "seed"},
        {"instruction": "Write a haiku about the sea please.", "input": "", "output": "Salt wind.",
         "source": "self-instruct"},
        {"instruction": "List three primary colours.", "input": "", "output": "Red, blue and yellow.",
         "source": "seed"},
        {"instruction": "List three primary colours.", "input": "", "output": "Red, blue, yellow.",
         "source": "self-instruct"},
        {"instruction": "Describe this image in detail.", "input": "", "output": "A cat on a mat.",
         "source": "self-instruct"},
        {"instruction": "Summarise the story of Hamlet briefly.", "input": "", "output": "",
         "source": "self-instruct"},
        {"instruction": "Give a long answer about the history of tea.", "input": "",
         "output": "Tea was first drunk in China. " * 40, "source": "seed"},
        {"instruction": "Repeat the answer given before here.", "input": "", "output": "Red, blue and yellow.",
         "source": "self-instruct"},
        {"instruction": "Name the capital city of France.", "input": "",
         "output": "Tea was first drunk in China. " * 40, "source": "self-instruct"},
    ]
    return Pool(rows, [{"instruction": "Name the largest ocean on Earth.", "input": "", "output": "The Pacific."}])


def test_every_arm_kind_draws_what_it_says(tmp_path, default_tokenizer):
    p = pool()
    outputs = lambda recs: [r["output"] for r in recs]  # noqa: E731
    def records(kind, seed=0, **params):
        return arm_records(Arm("x", kind, params), p, seed, grades=[1, 5, 2, 4, 3, None, 2, 1, 5],
                           tokenizer=default_tokenizer, max_length=96)
    assert records("base") == records("mask") == p.train
    assert len(records("size", fraction=0.5)) == 4 and len(records("size", count=3)) == 3
    assert records("size", count=5, seed=0) != records("size", count=5, seed=1)  # the run seed draws the sample
    assert all(r in p.train for r in records("selection", method="random", n=4))
    longest = records("selection", method="longest", n=2)
    assert sorted(map(len, outputs(longest))) == sorted(map(len, outputs(p.train)))[-2:]
    assert [p.train.index(r) for r in records("selection", method="graded", n=3)] == [1, 3, 8]  # grades 5, 4, 5
    with pytest.raises(AblationError, match="selects 10 records but the pool holds 9"):
        records("selection", method="longest", n=10)
    # Notebook 02's ROUGE-L filter: "... about the sea please." is too close to the first one at 0.7.
    assert len(records("diversity", threshold=0.7)) < len(p.train) == len(records("diversity", threshold=None))
    assert {r["source"] for r in records("source", source="seed")} == {"seed"}
    assert len(records("source", source="both")) == len(p.train)
    # Another data set, minus the held-out tasks (no arm ever trains on them).
    other = tmp_path / "other.json"
    other.write_text(json.dumps(p.heldout + p.train[:2]))
    assert records("dataset", data_path=str(other)) == p.train[:2]


def test_mix_arms_differ_only_by_the_added_records(tmp_path):
    p = Pool([{"instruction": f"Name a word that rhymes with number {i}.", "input": "", "output": f"Word {i}.",
               "source": "seed"} for i in range(100)], [{"instruction": "Refuse this.", "input": "", "output": "No."}],
             seed=5)
    extra = [{"instruction": f"Unsafe request of category {i}.", "input": "", "output": "I can't help with that.",
              "source": "safety"} for i in range(120)] + [{**p.heldout[0], "source": "safety"}]
    path = tmp_path / "safety.json"
    path.write_text(json.dumps(extra))
    for share in (0, 0.03, 0.5):
        records = arm_records(Arm("x", "mix", {"data_path": str(path), "share": share}), p, seed=0)
        # the same at every run seed
        assert records == arm_records(Arm("x", "mix", {"data_path": str(path), "share": share}), p, seed=1)
        added = records[len(p.train):]
        assert records[:len(p.train)] == p.train and len(added) == mix_count(share, 100)  # the pool, then the dose
        assert all(r["source"] == "safety" and r in extra and r["instruction"] != "Refuse this." for r in added)
        assert len(added) / len(records) == pytest.approx(share, abs=0.005)
    assert [mix_count(s, 100) for s in (0, 0.03, 0.5)] == [0, 3, 100]
    small, large = (arm_records(Arm("x", "mix", {"data_path": str(path), "share": s}), p, 0)[100:]
                    for s in (0.03, 0.5))
    assert all(r in large for r in small)  # a larger dose adds to a smaller one
    other = arm_records(Arm("x", "mix", {"data_path": str(path), "share": 0.03}), Pool(p.train, p.heldout, seed=6), 0)
    assert other[100:] != small  # the evaluation seed draws them
    with pytest.raises(AblationError, match="share 0.6 of a pool of 100 needs 150 extra records but .* holds 120"):
        arm_records(Arm("x", "mix", {"data_path": str(path), "share": 0.6}), p, 0)


def test_the_xstest_metric_on_the_real_model(tmp_path):
    model, tokenizer = load_model("default")
    sets = evaluation_sets([], 1, 1, seed=0, max_length=96, max_new_tokens=8, xstest_items=2)
    assert [p["label"] for p in sets.xstest].count("safe") == 2 and len(sets.identity()["xstest"]) == 4
    values = measure(model, tokenizer, sets, tmp_path, ["xstest"])
    answers = [json.loads(line) for line in (tmp_path / "xstest_answers.jsonl").read_text().splitlines()]
    assert [a["id"] for a in answers] == [f"xstest-{p['id']}" for p in sets.xstest]
    refused = [classify_refusal(a["output"]).label != "complies" for a in answers]
    unsafe = [p["label"] == "unsafe" for p in sets.xstest]
    assert values["xstest_refusal"] == sum(r for r, u in zip(refused, unsafe) if u) / 2
    assert values["xstest_over_refusal"] == sum(r for r, u in zip(refused, unsafe) if not u) / 2
    by_type = json.loads((tmp_path / "xstest_by_type.json").read_text())
    assert by_type["refusal"]["rate"] == values["xstest_refusal"] and sum(
        t["refusal"]["n"] for t in by_type["by_type"].values()) == 4


def test_the_cleaning_rules(default_tokenizer):
    reasons = clean_reasons(pool().train, tokenizer=default_tokenizer, max_length=96)
    assert reasons == [None, None, None, "duplicate_task", "alpaca_filters", "empty_output", "truncated_output",
                       None, "duplicate_output"]  # "Red, blue and yellow." has 4 words: a short answer may repeat
    assert clean_reasons(pool().train, rules=["empty_output"]).count(None) == 8
    with pytest.raises(ValueError, match="needs the tokenizer"):
        clean_reasons(pool().train)


def test_grades_from_log_probabilities_and_text():
    logprobs = {"5": math.log(0.5), " 4": math.log(0.25), "3": math.log(0.25), "x": 0.0}
    assert expected_grade(logprobs) == pytest.approx(4.25)
    assert expected_grade({"hello": 0.0}) is None
    assert parse_grade("Score: 4 out of 5") == 4.0 and parse_grade("10/10") is None and parse_grade("none") is None


class LogprobEndpoint:
    """Stands in for an OpenAI endpoint's log-probability replies, a shape no local server gives
    (`transformers serve` 5.x ignores the field); counts the requests."""

    def __init__(self):
        self.requests = 0

    def complete(self, prompt, top_logprobs=None):
        self.requests += 1
        grade = "5" if "sea" in prompt else "2"
        return Completion(text=grade, finish_reason="length", top_logprobs={grade: 0.0})


def test_grades_through_an_endpoint_are_cached_and_resume_by_whole_chunks(tmp_path, monkeypatch):
    endpoint = LogprobEndpoint()
    monkeypatch.setattr(grade, "make_grader", lambda config: (endpoint, "logprobs"))
    config, path = GraderConfig(base_url="http://127.0.0.1:1/v1", model="judge"), tmp_path / "grades.jsonl"
    records = pool().train
    first = grade_records(records, config, path, progress=False)
    assert first[:2] == [5.0, 5.0] and first[2] == 2.0 and endpoint.requests == len(records)
    assert grade_records(records, config, path, progress=False) == first and endpoint.requests == len(records)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[8], *lines[:3]]) + "\n" + lines[3][:10])  # a crash inside the first chunk of 8
    assert grade_records(records, config, path, progress=False) == first
    assert endpoint.requests == len(records) + grade.CHUNK  # the first chunk again, whole; the second was complete


def test_mean_se_and_paired_differences_equal_a_direct_computation():
    rows = [{"arm": arm, "seed": seed, "metrics": {"loss": value}}
            for arm, values in {"all": [2.0, 2.4, 2.1], "small": [1.8, 2.3, 1.7]}.items()
            for seed, value in zip((0, 1, 2), values)]
    table = {t["arm"]: t for t in summarize(rows, "all", ["loss"])}
    diffs = [-0.2, -0.1, -0.4]
    assert table["small"]["mean"] == pytest.approx(statistics.fmean([1.8, 2.3, 1.7]))
    assert table["small"]["se"] == pytest.approx(statistics.stdev([1.8, 2.3, 1.7]) / math.sqrt(3))
    assert table["small"]["diff"] == pytest.approx(statistics.fmean(diffs))
    assert table["small"]["diff_se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    high = statistics.fmean(diffs) + 4.303 * statistics.stdev(diffs) / math.sqrt(3)
    assert table["small"]["diff_high"] == pytest.approx(high)
    assert table["all"]["diff"] is None and table["small"]["pairs"] == 3
    assert paired_difference({0: 1.0, 5: 2.0}, {0: 0.5})["seeds"] == [0]  # only seeds both arms have
    assert mean_se([1.0])["se"] is None
    assert [t_quantile(d) for d in (1, 2, 30)] == [12.706, 4.303, 2.042] and abs(t_quantile(60) - 2.0003) < 1e-3
    assert "no difference can be told" in conclusion(table["small"], "all")
    assert "gives a lower loss than all" in conclusion({**table["small"], "diff_high": -0.01}, "all")
    same = {**table["small"], "diff_se": 0.0, "diff_low": -0.2, "diff_high": -0.2}
    assert "the seeds agree exactly" in conclusion(same, "all")
    assert "one seed gives no interval" in conclusion({**table["small"], "diff_low": None, "pairs": 1}, "all")


def test_conclusions_say_what_their_interval_covers_and_need_three_seeds():
    def table(values, varies):  # {arm: per-seed values}, {arm: data varies with the seed}
        rows = [{"arm": arm, "seed": seed, "metrics": {"val_loss": v}} for arm, vs in values.items()
                for seed, v in enumerate(vs)]
        return {t["arm"]: t for t in summarize(rows, "all", ["val_loss"], data_varies=varies)}

    varies = {"all": False, "longest_n": False, "random_n": True}
    # notebook 07's case: the same data at both seeds, two near-identical runs, an interval far from 0
    two = table({"all": [2.0, 2.01], "longest_n": [2.05484, 2.06494], "random_n": [2.1, 1.9]}, varies)
    line = conclusion(two["longest_n"], "all")
    assert "excludes no difference" not in line and "gives a higher" not in line and not told_apart(two["longest_n"])
    assert f"{MIN_SEEDS} are needed" in line and "2 paired seeds" in line and COVERS["training"] in line
    assert "+0.0549, 95% interval +0.0543 to +0.0555 over 2 paired seeds" in line  # 3 significant digits
    assert two["random_n"]["covers"] == "data and training"
    assert COVERS["data and training"] in conclusion(two["random_n"], "all")
    note = conclusions_note(list(two.values()))
    assert note.startswith("0 of 2 comparisons are told apart") and "seeds=[0, 1, 2, 3, 4]" in note
    assert "training noise only" in note
    # three seeds: a conclusion, worded for what the interval covers
    three = table({"all": [2.0, 2.01, 2.02], "longest_n": [2.055, 2.065, 2.076], "random_n": [2.1, 1.9, 2.0]}, varies)
    fixed = conclusion(three["longest_n"], "all")
    assert told_apart(three["longest_n"])
    assert "The interval excludes 0: on this data, longest_n gives a higher" in fixed
    assert "another draw of the data is not covered" in fixed
    assert "The interval includes 0: no difference can be told" in conclusion(three["random_n"], "all")
    drawn = table({"all": [2.0, 2.01, 2.02], "random_n": [2.055, 2.065, 2.076]}, varies)
    ending = "The interval excludes 0: random_n gives a higher val_loss than all."
    assert conclusion(drawn["random_n"], "all").endswith(ending)
    assert conclusions_note(list(drawn.values())).startswith("1 of 1 comparisons are told apart")


def test_the_prompt_mask_setting_labels_the_prompt(default_tokenizer):
    record = pool().train[2]
    masked = build_dataset([record], default_tokenizer).dataset[0]
    full = build_dataset([record], default_tokenizer, train_on_prompt=True).dataset[0]
    assert masked["input_ids"] == full["input_ids"] and full["labels"] == full["input_ids"]  # no special prefix here
    trained = [t for t in masked["labels"] if t != IGNORE_INDEX]
    assert full["labels"][-len(trained):] == trained and len(trained) < len(full["labels"])
    assert make_config().train_on_prompt is False and make_config(train_on_prompt="true").train_on_prompt is True


def test_course_runs_notebook_07_on_notebook_02s_training_set(tmp_path):
    (tmp_path / "02_dedup_analysis").mkdir()
    (tmp_path / TRAIN_SET).write_text("[]")
    assert linked_parameters("07_understand", tmp_path) == {"data_path": str(tmp_path / TRAIN_SET)}
    assert Path(__file__).with_name("test_nb07_understand.py").is_file()
