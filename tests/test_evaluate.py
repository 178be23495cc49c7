import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from fault_proxy import FaultProxy

from alpaca_helpers.data import load_davinci_predictions, load_eval_set
from alpaca_helpers.demo.decoding import Decoding
from alpaca_helpers.demo.generate import generate_batch, load_model
from alpaca_helpers.evaluate.absolute import (
    SCORES_NOTE,
    parse_score,
    run_absolute_judge,
    score_by_model,
    score_prompt,
    score_summary,
    scores_caveat,
)
from alpaca_helpers.evaluate.answers import (
    ALPACA_EVAL,
    alpaca_eval_rows,
    eval_subset,
    evaluation_items,
    generate_answers,
    read_answers,
    save_alpaca_eval,
)
from alpaca_helpers.evaluate.judge import LocalJudge, combine_orders, judge_item, parse_verdict, run_judge
from alpaca_helpers.evaluate.outcomes import LOSS, TIE, UNPARSED, WIN, format_tally, tally, tally_by
from alpaca_helpers.evaluate.rating import RatingWidget
from alpaca_helpers.evaluate.votes import (
    VoteStore,
    make_blind_pairs,
    outcome_of_choice,
    read_votes,
    save_blind_pairs,
    vote_outcomes,
)
from alpaca_helpers.evaluate.weighted_judge import (
    judge_item_weighted,
    run_weighted_judge,
    verdict_preference,
    weighted_win_rate,
)
from alpaca_helpers.self_instruct.server import serve
from alpaca_helpers.self_instruct.teacher import LogprobsUnavailable, Teacher, TeacherConfig


@pytest.fixture(scope="module")
def eval_records():
    return load_eval_set()


def _pairs(records, seed):
    ours = [f"ours {r['id']}" for r in records]
    theirs = [f"theirs {r['id']}" for r in records]
    return make_blind_pairs(records, ours, theirs, seed=seed)


def test_blind_order_is_reproducible_balanced_and_hides_the_key(eval_records, tmp_path):
    visible, key = _pairs(eval_records, seed=7)
    again, key_again = _pairs(eval_records, seed=7)
    _, other_key = _pairs(eval_records, seed=8)
    assert visible == again and key == key_again and key != other_key
    assert 0.35 < sum(side == "A" for side in key.values()) / len(key) < 0.65
    for item in visible:
        model_side = key[item["id"]]
        assert item[f"answer_{model_side.lower()}"] == f"ours {item['id']}"
        assert set(item) == {"id", "category", "instruction", "input", "answer_a", "answer_b"}
    pairs, key_path = save_blind_pairs(visible, key, tmp_path)
    assert "ours" in pairs.read_text() and '"A"' not in pairs.read_text()
    assert json.loads(key_path.read_text()) == key


def test_rater_choices_map_to_model_outcomes():
    assert outcome_of_choice("A", "A") == WIN and outcome_of_choice("B", "A") == LOSS
    assert outcome_of_choice("tie", "B") == TIE
    with pytest.raises(ValueError, match="unknown choice"):
        outcome_of_choice("C", "A")


@pytest.mark.parametrize("reply,verdict", [
    ("Verdict: 1", "1"), ("Both are fine.\nverdict: TIE", "tie"), ("**Verdict:** 2.", "2"),
    ("Answer 1 is better.", None), ("Verdict: 1\nVerdict: 2", None), ("Verdict: 3", None), ("", None),
    ("The verdict: 1 is obvious because", None),
])
def test_verdict_parser_is_strict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_both_order_judging_turns_an_always_left_judge_into_ties(eval_records):
    prompts = []

    def always_first(prompt):
        prompts.append(prompt)
        return "Verdict: 1"

    outcomes = [judge_item(always_first, r["instruction"], r["input"], "ours", "theirs")["outcome"]
                for r in eval_records[:20]]
    assert outcomes == [TIE] * 20
    assert prompts[0].index("ours") < prompts[0].index("theirs")
    assert prompts[1].index("theirs") < prompts[1].index("ours")


def test_a_consistent_judge_and_garbage():
    def prefers_ours(prompt):
        return "Verdict: 1" if prompt.index("ours") < prompt.index("theirs") else "Verdict: 2"

    assert judge_item(prefers_ours, "q", "", "ours", "theirs")["outcome"] == WIN
    assert judge_item(lambda p: "I cannot decide", "q", "", "ours", "theirs")["outcome"] == UNPARSED
    assert combine_orders("2", "1") == LOSS and combine_orders("1", "tie") == WIN


def test_tally_arithmetic_and_standard_error():
    outcomes = [WIN] * 3 + [LOSS] + [TIE] * 2 + [UNPARSED]
    result = tally(outcomes)
    scores = [1, 1, 1, 0, 0.5, 0.5]
    assert (result["wins"], result["losses"], result["ties"], result["unparsed"], result["n"]) == (3, 1, 2, 1, 6)
    assert result["record"] == "3 vs 1"
    assert result["win_rate"] == pytest.approx(4 / 6)
    assert result["win_rate_se"] == pytest.approx(statistics.stdev(scores) / math.sqrt(6))
    # Alpaca's headline: 90 wins, 89 losses (ties not reported) is a coin flip.
    alpaca = tally([WIN] * 90 + [LOSS] * 89)
    assert alpaca["record"] == "90 vs 89" and abs(alpaca["win_rate"] - 0.5) < alpaca["win_rate_se"]
    by = tally_by([WIN, LOSS, WIN], ["Gmail", "Netflix", "Gmail"])
    assert list(by) == ["Gmail", "Netflix"] and by["Gmail"]["wins"] == 2
    with pytest.raises(ValueError, match="unknown outcomes"):
        tally(["draw"])


def test_votes_append_resume_and_combine(tmp_path, eval_records):
    ids = [r["id"] for r in eval_records[:5]]
    ann = VoteStore(tmp_path / "votes_ann.csv", "ann")
    ann.add(ids[0], "A")
    ann.add(ids[1], "tie")
    assert ann.next_item(ids) == ids[2]
    bob = VoteStore(tmp_path / "votes_bob.csv", "bob")
    bob.add(ids[0], "B")
    rows = read_votes([ann.path, bob.path])
    outcomes = vote_outcomes(rows, {i: "A" for i in ids})
    assert sorted((o["rater"], o["outcome"]) for o in outcomes) == [("ann", TIE), ("ann", WIN), ("bob", LOSS)]
    with pytest.raises(ValueError, match="rater name"):
        VoteStore(tmp_path / "x.csv", "../../etc")


def test_a_torn_vote_line_is_ignored_then_repaired(tmp_path, eval_records):
    ids = [r["id"] for r in eval_records[:5]]
    store = VoteStore(tmp_path / "votes.csv", "ann")
    store.add(ids[0], "A")
    with open(store.path, "a") as f:
        f.write("2026-11-21T10:00:00+00:00,ann,user_orie")  # a crash mid-line
    assert store.votes() == {ids[0]: "A"} and store.next_item(ids) == ids[1]
    store.add(ids[1], "B")
    assert store.path.read_text().endswith("\n")
    assert store.votes() == {ids[0]: "A", ids[1]: "B"}


def test_votes_survive_kill_9_while_writing(tmp_path):
    """A real process voting as fast as it can is killed with SIGKILL; every complete vote is kept."""
    path = tmp_path / "votes.csv"
    code = ("import sys; from alpaca_helpers.evaluate.votes import VoteStore\n"
            "s = VoteStore(sys.argv[1], 'ann')\n"
            "for i in range(10**9): s.add(f'item_{i}', 'A')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 2000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = VoteStore(path, "ann")
    votes = store.votes()
    assert len(votes) > 10
    assert list(votes) == [f"item_{i}" for i in range(len(votes))]  # no gap, no garbage
    store.add("after", "tie")
    assert store.votes()["after"] == "tie" and len(store.votes()) == len(votes) + 1


def test_eval_subset_is_seeded_and_ordered():
    assert eval_subset(list(range(252)), None) == list(range(252))
    sub = eval_subset(list(range(252)), 10, seed=3)
    assert sub == sorted(sub) and len(set(sub)) == 10 and sub == eval_subset(list(range(252)), 10, seed=3)


def test_answers_are_generated_resumably_with_the_real_model(tmp_path, eval_records):
    # fp32: the answers are compared exactly across batches of different padding, which bf16 rounds differently
    model, tokenizer = load_model("default", dtype=torch.float32)
    records = eval_records[:3]
    path = tmp_path / "answers.jsonl"
    decoding = {"temperature": 0.0, "max_new_tokens": 12}
    first = generate_answers(model, tokenizer, records[:2], path, batch_size=2, progress=False, **decoding)
    assert list(first) == [r["id"] for r in records[:2]]
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:15])  # the second answer was torn by a crash
    answers = generate_answers(model, tokenizer, records, path, batch_size=2, progress=False, **decoding)
    assert list(read_answers(path)) == [r["id"] for r in records]
    assert answers[records[1]["id"]]["output"] == first[records[1]["id"]]["output"]  # greedy: same answer again
    assert all(a["decoding"] == decoding and a["output"] for a in answers.values())
    assert all(a["ended"] == (a["new_tokens"] < 12) and 0 < a["new_tokens"] <= 12 for a in answers.values())
    # the same text as the plain batch call
    assert generate_batch(model, tokenizer, [records[2]["instruction"]], [records[2]["input"]],
                          decoding=Decoding(**decoding)) == \
        [answers[records[2]["id"]]["output"]]
    assert len(load_davinci_predictions()) == len(eval_records)


def test_rating_widget_records_each_click_and_resumes(tmp_path, eval_records):
    visible, key = _pairs(eval_records[:4], seed=1)
    store = VoteStore(tmp_path / "votes_ann.csv", "ann")
    widget = RatingWidget(visible, store)
    assert widget.current == visible[0]["id"] and "0 / 4" in widget.header.value
    assert "ours" in widget.body.value and "theirs" in widget.body.value
    widget.buttons["A"].click()
    widget.buttons["tie"].click()
    assert store.votes() == {visible[0]["id"]: "A", visible[1]["id"]: "tie"}  # on disk at once
    reopened = RatingWidget(visible, VoteStore(tmp_path / "votes_ann.csv", "ann"))
    assert reopened.current == visible[2]["id"] and "2 / 4" in reopened.header.value
    reopened.buttons["B"].click()
    reopened.buttons["B"].click()
    assert reopened.current is None and all(b.disabled for b in reopened.buttons.values())
    outcomes = vote_outcomes(read_votes([store.path]), key)
    assert len(outcomes) == 4


def test_tally_of_nothing_is_json_safe_and_printable():
    empty = tally([UNPARSED, UNPARSED])
    assert empty["win_rate"] is None and empty["win_rate_se"] is None
    json.dumps(empty, allow_nan=False)
    assert format_tally(empty) == "0 vs 0 (ties 0, unparsed 2)"
    assert format_tally(tally([WIN, LOSS, TIE])) == "1 vs 1 (ties 1, unparsed 0), win rate 0.50 ± 0.29"


# ---------------------------------------------------------------------------------------------------------
# The judge read through log-probabilities


def test_verdict_preference_and_both_orders():
    assert verdict_preference({"1": math.log(0.6), " 2": math.log(0.2), "The": math.log(0.2)}) == pytest.approx(0.75)
    assert verdict_preference({"Sure": -0.1}) is None

    def always_first(prompt):  # position bias only: a tie, preference exactly one half
        return {"1": math.log(0.9), "2": math.log(0.1)}

    result = judge_item_weighted(always_first, "q", "", "ours", "theirs")
    assert result["outcome"] == TIE and result["preference"] == pytest.approx(0.5)

    def likes_ours(prompt):
        ours_first = prompt.index("ours") < prompt.index("theirs")
        return {"1": math.log(0.7 if ours_first else 0.4), "2": math.log(0.3 if ours_first else 0.6)}

    result = judge_item_weighted(likes_ours, "q", "", "ours", "theirs")
    assert result["outcome"] == WIN and result["verdicts"] == ["1", "2"]
    assert result["preference"] == pytest.approx((0.7 + 0.6) / 2)
    assert judge_item_weighted(lambda p: {"x": -1.0}, "q", "", "a", "b")["outcome"] == UNPARSED
    rate = weighted_win_rate([0.65, 0.5, None, 0.2])
    assert rate["n_weighted"] == 3 and rate["weighted_win_rate"] == pytest.approx(0.45)
    assert rate["weighted_win_rate_se"] == pytest.approx(statistics.stdev([0.65, 0.5, 0.2]) / math.sqrt(3))


def test_the_local_judge_gives_a_preference_on_every_item(eval_records):
    model, tokenizer = load_model("default")
    judge = LocalJudge(model, tokenizer)
    items = [{"id": r["id"], "instruction": r["instruction"], "input": r["input"], "model_answer": "I don't know.",
              "reference_answer": r["output"]} for r in eval_records[:1]]
    results, usage = run_weighted_judge(judge, items, progress=False)
    assert [r["outcome"] for r in results if r["outcome"] == UNPARSED] == []
    assert all(0 <= p <= 1 for r in results for p in r["preferences"] + [r["preference"]])
    assert usage["requests"] == 2 and usage["prompt_tokens"] > 100 and usage["cost_usd"] == 0.0


def test_alpaca_eval_files(tmp_path, eval_records):
    rows = alpaca_eval_rows(eval_records[:2], ["a", "b"], "my-model", "user_oriented_instructions")
    path = save_alpaca_eval(rows, tmp_path / "model_outputs.json")
    back = json.loads(path.read_text())
    assert back == rows and set(back[0]) == {"instruction", "output", "generator", "dataset"}
    with_input = next(r for r in eval_records if r["input"])
    row = alpaca_eval_rows([with_input], ["x"], "g", "d")[0]
    assert row["instruction"].startswith(with_input["instruction"])
    assert row["instruction"].endswith(with_input["input"])


@pytest.mark.slow
def test_judge_log_probabilities_through_the_real_local_server(default_model_dir):
    """`transformers serve` returns no log-probabilities (the fallback is the text judge); the fault proxy
    stands in for an OpenAI endpoint's log-probabilities, malformed first, and the judge retries and decides."""
    item = {"id": "x", "instruction": "Name a primary colour.", "input": "", "model_answer": "Red.",
            "reference_answer": "Blue."}
    with serve(default_model_dir) as server:
        for api in ("chat", "completions"):
            teacher = Teacher(TeacherConfig(base_url=server.base_url, model=server.model, api=api, temperature=0.0))
            assert teacher.gives_logprobs() is False
            with pytest.raises(LogprobsUnavailable):
                teacher.complete("Say 1.", top_logprobs=5)
        with FaultProxy(server.root_url, script=["badlogprobs"], then="logprobs",
                        logprobs={"1": math.log(0.8), "2": math.log(0.2)}) as proxy:
            teacher = Teacher(TeacherConfig(base_url=proxy.base_url, model=server.model, api="chat", temperature=0.0,
                                            backoff_initial=0.01))
            results, usage = run_weighted_judge(teacher, [item], progress=False)
    assert proxy.seen == {"badlogprobs": 1, "logprobs": 2}  # the malformed reply was retried
    assert results[0]["preferences"] == [pytest.approx(0.8), pytest.approx(0.8)]
    assert results[0]["outcome"] == TIE and results[0]["preference"] == pytest.approx(0.5)
    assert usage["requests"] == 2 and usage["completion_tokens"] >= 1


def test_alpaca_eval_set_loads_as_evaluation_items(tmp_path):
    """The 805-instruction set, as a local copy in its own format (offline here; by name it comes from the Hub)."""
    rows = [{"instruction": "What are the names of some famous actors?", "output": "Some famous actors are ...",
             "generator": "text_davinci_003", "dataset": "helpful_base"},
            {"instruction": "How do I wrap a present neatly?", "output": "Use ...", "generator": "text_davinci_003",
             "dataset": "oasst"}]
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps(rows))
    items, reference, generator, dataset = evaluation_items(str(path))
    assert [i["id"] for i in items] == ["0", "1"] and [i["motivation_app"] for i in items] == ["helpful_base", "oasst"]
    assert reference == [r["output"] for r in rows] and generator == "text_davinci_003" and dataset == str(path)
    back = alpaca_eval_rows(items, ["a", "b"], "mine", dataset)
    assert [r["dataset"] for r in back] == ["helpful_base", "oasst"]
    assert [r["instruction"] for r in back] == [r["instruction"] for r in rows]


def test_the_shipped_alpaca_eval_set_holds_the_user_oriented_instructions():
    items, reference, generator, dataset = evaluation_items(ALPACA_EVAL)
    assert len(items) == len(reference) == 805 and generator == "gpt4_1106_preview" and dataset == "alpaca_eval"
    assert {i["motivation_app"] for i in items} == {"selfinstruct", "oasst", "koala", "helpful_base", "vicuna"}
    selfinstruct = {" ".join(i["instruction"].split()) for i in items if i["motivation_app"] == "selfinstruct"}
    user_oriented = {" ".join((r["instruction"] + " " + r["input"]).split()) for r in load_eval_set()}
    assert selfinstruct == user_oriented  # AlpacaEval writes the input after the instruction
    rows = alpaca_eval_rows(items[:2], ["a", "b"], "mine", dataset)
    assert [r["instruction"] for r in rows] == [i["instruction"] for i in items[:2]]
    assert [r["dataset"] for r in rows] == [i["dataset"] for i in items[:2]]


# ---------------------------------------------------------------------------------------------------------
# The absolute judge, and the one judge loop behind every judge


@pytest.mark.parametrize("reply,score", [
    ("85", 85.0), ("Score: 85/100", 85.0), ("**70**\nbecause...", 70.0), ("  42. ", 42.0), ("0", 0.0),
    ("101", None), ("1. The answer is incomplete", None), ("I would give it 80", None), ("", None),
])
def test_score_parser_is_strict(reply, score):
    assert parse_score(reply) == score


def test_the_local_judge_writes_text_for_the_text_judge_and_the_score():
    """The same `judge_each` loop drives the pairwise text judge and the absolute judge with the real model;
    identical answer lists of two names are scored once."""
    judge = LocalJudge(*load_model("default"), max_new_tokens=3)
    item = {"id": "x", "instruction": "Name a primary colour.", "input": "", "model_answer": "Red.",
            "reference_answer": "Blue."}
    results, usage = run_judge(judge, [item], progress=False)
    assert len(results[0]["replies"]) == 2 and all(isinstance(r, str) for r in results[0]["replies"])
    assert results[0]["outcome"] in (WIN, LOSS, TIE, UNPARSED)
    assert usage["requests"] == 2 and 0 < usage["completion_tokens"] <= 6 and usage["cost_usd"] == 0.0
    graded = {"id": "x", "instruction": item["instruction"], "input": "", "answer": "Red.",
              "reference_answer": "Blue."}
    scored, usage = run_absolute_judge(judge, [graded], progress=False)
    assert set(scored[0]) == {"id", "reply", "score"} and usage["requests"] == 1
    assert "Blue." in score_prompt(graded["instruction"], "", "Red.", "Blue.")
    both = score_by_model(judge, {"base": [graded], "fine_tuned": [graded]}, progress=False)
    assert both["base"] is both["fine_tuned"]


def test_scores_caveat_flags_a_judge_that_cannot_grade():
    stuck = {"base": [100.0, None, None], "fine_tuned": [100.0, None, None]}
    note = scores_caveat({k: score_summary(v) for k, v in stuck.items()}, stuck)
    assert SCORES_NOTE in note and "4 of 6 replies" in note and "1 distinct value(s) (100)" in note
    spread = {"base": [40.0, 70.0, 55.0], "fine_tuned": [60.0, 80.0, None]}
    assert scores_caveat({k: score_summary(v) for k, v in spread.items()}, spread) is None
