import json


def test_notebook_06_scores_the_teacher_and_judges_every_item(execute_notebook, tmp_path):
    summary, _ = execute_notebook("06_evaluate", subset_size=3, judge_items=2, max_new_tokens=24, agreement_items=4)
    assert summary["n_items"] == 3 and summary["n_judged"] == 2
    # Teacher agreement: model_path "default" is the base model, so the two are one set of numbers.
    agreement = summary["teacher_agreement"]
    assert agreement["base"] == agreement["fine_tuned"] and agreement["base"]["n"] == 4
    assert 0 < agreement["base"]["loss"] < 10 and agreement["base"]["perplexity"] > 1
    assert summary["teacher_agreement_change"]["mean"] == 0.0
    shape = summary["answer_shape"]
    assert set(shape) == {"base", "fine_tuned", "text-davinci-003"} and shape["fine_tuned"]["n"] == 3
    assert shape["text-davinci-003"]["ended_share"] is None and 0 <= shape["fine_tuned"]["ended_share"] <= 1
    # The default judge is read through its token probabilities: a verdict on every item.
    judge = summary["judge"]
    assert summary["judge_method"] == "logprobs" and judge["unparsed"] == 0
    assert judge["wins"] + judge["losses"] + judge["ties"] == 2 and 0 <= judge["weighted_win_rate"] <= 1
    assert summary["usage"]["requests"] == 4 and summary["usage"]["cost_usd"] == 0.0  # both orders
    assert summary["human_votes"] == 0  # headless: the widget is built, nobody votes
    out = tmp_path / "course" / "06_evaluate"
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(a["decoding"]["max_new_tokens"] == 24 for a in answers)
    assert json.loads((out / "pairs_key.json").read_text()).keys() == {a["id"] for a in answers}
    assert "answer_a" in (out / "pairs.jsonl").read_text() and (out / "tally.png").is_file()
    assert (out / "teacher_agreement.png").is_file()
    # alpaca_eval's input format, the same instructions in the same order on both sides.
    model_rows = json.loads((out / "model_outputs.json").read_text())
    reference_rows = json.loads((out / "reference_outputs.json").read_text())
    assert [r["instruction"] for r in model_rows] == [r["instruction"] for r in reference_rows]
    assert all(set(r) == {"instruction", "output", "generator", "dataset"} for r in model_rows + reference_rows)
    assert {r["generator"] for r in reference_rows} == {"text-davinci-003"}
    assert [r["output"] for r in model_rows] == [a["output"] for a in answers]
