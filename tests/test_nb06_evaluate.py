import json
from collections import Counter

import nbformat

from alpaca_helpers.evaluate.absolute import SCORES_NOTE
from alpaca_helpers.evaluate.agreement import SAME_MODEL_NOTE
from alpaca_helpers.evaluate.answers import ALPACA_EVAL, eval_subset, evaluation_items
from alpaca_helpers.evaluate.ifeval import DROP_NOTE, LEVELS, read_responses, score_ifeval
from alpaca_helpers.evaluate.raters import JUDGE_POSITION_NOTE, cohen_kappa
from alpaca_helpers.evaluate.votes import VoteStore


def test_notebook_06_scores_the_teacher_ifeval_and_checks_the_judge_against_votes(execute_notebook, tmp_path):
    out = tmp_path / "course" / "06_evaluate"
    # A person has already voted on the first two items of the subset (and once on an item of another subset).
    records = evaluation_items(ALPACA_EVAL)[0]
    ids = [records[i]["id"] for i in eval_subset(records, 3, seed=0)]
    votes = VoteStore(out / "votes_tester.csv", "tester")
    for item_id, choice in zip(ids, ("A", "tie")):
        votes.add(item_id, choice)
    votes.add("not-in-this-subset", "B")

    summary, executed = execute_notebook("06_evaluate", subset_size=3, judge_items=2, max_new_tokens=24,
                                         agreement_items=4, ifeval_items=4)
    assert summary["n_items"] == 3 and summary["n_judged"] == 2 and summary["reference"] == "gpt4_1106_preview"
    # Teacher agreement: model_path "default" is the base model, so the two are one set of numbers.
    agreement = summary["teacher_agreement"]
    assert agreement["base"] == agreement["fine_tuned"] and agreement["base"]["n"] == 4
    assert 0 < agreement["base"]["loss"] < 10 and agreement["base"]["perplexity"] > 1
    assert summary["teacher_agreement_change"]["mean"] == 0.0
    shape = summary["answer_shape"]
    assert set(shape) == {"base", "fine_tuned", "gpt4_1106_preview"} and shape["fine_tuned"]["n"] == 3
    assert shape["gpt4_1106_preview"]["ended_share"] is None and 0 <= shape["fine_tuned"]["ended_share"] <= 1

    # IFEval: the four accuracies of both models, and response files its reference scorer reads.

    ifeval = summary["ifeval"]
    assert ifeval["base"] == ifeval["fine_tuned"] and ifeval["base"]["n_prompts"] == 4
    assert all(0 <= ifeval["base"][level] <= 1 for level in LEVELS) and ifeval["change_prompt_strict"]["mean"] == 0
    lines = (out / "ifeval_responses_fine_tuned.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(set(json.loads(line)) == {"prompt", "response"} for line in lines)
    rescored = score_ifeval(read_responses(out / "ifeval_responses_fine_tuned.jsonl"))
    assert all(rescored[level] == ifeval["fine_tuned"][level] for level in LEVELS)
    answers = [json.loads(line) for line in (out / "ifeval_answers_fine_tuned.jsonl").read_text().splitlines()]
    assert all(a["decoding"] == {"temperature": 0.0, "max_new_tokens": 24} for a in answers)

    # The default judge is read through its token probabilities: a verdict on every item.
    judge = summary["judge"]
    assert summary["judge_method"] == "logprobs" and judge["unparsed"] == 0
    assert judge["wins"] + judge["losses"] + judge["ties"] == 2 and 0 <= judge["weighted_win_rate"] <= 1
    assert summary["usage"]["requests"] == 4 and summary["usage"]["cost_usd"] == 0.0  # both orders
    assert summary["position_bias"]["judge"]["n"] <= 4 and summary["length_controlled"]["lc_win_rate"] is None
    scores = summary["absolute_judge"]
    assert scores["base"] == scores["fine_tuned"] and scores["base"]["n"] + scores["base"]["unparsed"] == 2
    assert scores["scale"] == [0, 100]

    # Judge against people, on the votes written above: kappa is the one its confusion table gives.
    versus = summary["judge_human_agreement"]
    assert summary["human_votes"] == 2 and (versus["n"], versus["n_items"], versus["raters"]) == (2, 2, ["tester"])
    pairs = Counter({tuple(k.removeprefix("judge ").split(", people ")): c for k, c in versus["confusion"].items()})
    judged, people = zip(*pairs.elements())
    assert versus["kappa"] == cohen_kappa(list(judged), list(people))
    assert versus["percent"] == 100 * sum(j == p for j, p in zip(judged, people)) / 2
    assert summary["position_bias"]["people"] == {"first_position_share": 1.0, "n": 1, "se": None}

    answers = [json.loads(line) for line in (out / "answers_fine_tuned.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(a["decoding"]["max_new_tokens"] == 24 for a in answers)
    assert json.loads((out / "pairs_key.json").read_text()).keys() == {a["id"] for a in answers}
    assert "answer_a" in (out / "pairs.jsonl").read_text()
    assert all((out / name).is_file() for name in ("tally.png", "teacher_agreement.png", "ifeval.png", "scores.png"))
    # alpaca_eval's input format, the same instructions in the same order on both sides.
    model_rows = json.loads((out / "model_outputs.json").read_text())
    reference_rows = json.loads((out / "reference_outputs.json").read_text())
    assert [r["instruction"] for r in model_rows] == [r["instruction"] for r in reference_rows]
    assert all(set(r) == {"instruction", "output", "generator", "dataset"} for r in model_rows + reference_rows)
    assert {r["generator"] for r in reference_rows} == {"gpt4_1106_preview"}
    assert [r["output"] for r in model_rows] == [a["output"] for a in answers]
    _notes_sit_under_their_degenerate_outputs(summary, executed)


def _outputs_by_cell(executed) -> list[str]:
    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    return ["".join(o.get("text", "") for o in c.outputs) for c in cells]


def _cell_printing(outputs: list[str], text: str) -> str:
    found = [o for o in outputs if text in o]
    assert found, f"no cell printed {text!r}"
    return found[0]


def _notes_sit_under_their_degenerate_outputs(summary, executed):
    """Each degenerate laptop result the summary shows gets its note, printed by the cell that shows the result."""
    outputs = _outputs_by_cell(executed)
    teacher = _cell_printing(outputs, "change per answer (fine-tuned - base)")
    assert "loss per token" in teacher and "per answer" in teacher and "over n = 4 text-davinci-003 answers" in teacher
    assert summary["teacher_pool"] == 252
    if summary["teacher_agreement_change"]["mean"] == 0:
        assert SAME_MODEL_NOTE in teacher
    bias, judge = summary["position_bias"]["judge"], summary["judge"]
    judge_cell = _cell_printing(outputs, "items judged in both orders")
    if (bias["n"] >= 2 and bias["first_position_share"] >= 0.9) or judge["ties"] == judge["n"]:
        assert JUDGE_POSITION_NOTE in judge_cell
    ifeval_cell = _cell_printing(outputs, "prompt-level strict change")
    assert (DROP_NOTE in ifeval_cell) == (summary["ifeval"]["change_prompt_strict"]["mean"] < 0)
    scores = summary["absolute_judge"]
    score_cell = _cell_printing(outputs, "change of the score") if scores["base"]["n"] else ""
    given = scores["base"]["n"] + scores["fine_tuned"]["n"]
    if scores["base"]["unparsed"] + scores["fine_tuned"]["unparsed"] >= given or scores["base"]["se"] in (0, None):
        assert SCORES_NOTE in (score_cell or "".join(outputs))
    win = _cell_printing(outputs, "raw win rate")
    assert "characters longer than" not in win or "-" not in win.split("characters longer than")[0][-8:]
    assert "characters shorter than" in win or "characters longer than" in win or "as long as" in win
    printed = "".join(outputs)
    assert "0.4846877" not in printed and not any(len(t) > 8 for t in __import__("re").findall(r"\d+\.\d+", win))
