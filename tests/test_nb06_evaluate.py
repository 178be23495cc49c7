import json


def test_notebook_06_runs_the_judge_end_to_end_on_the_real_local_server(execute_notebook, tmp_path):
    summary, _ = execute_notebook("06_evaluate", subset_size=3, judge_items=2, max_new_tokens=24)
    assert summary["n_items"] == 3 and summary["n_judged"] == 2
    judge = summary["judge"]
    assert judge["wins"] + judge["losses"] + judge["ties"] + judge["unparsed"] == 2
    assert summary["usage"]["requests"] == 4  # both orders
    assert summary["usage"]["prompt_tokens"] > 0 and summary["usage"]["cost_usd"] == 0.0
    assert summary["human_votes"] == 0  # headless: the widget is built, nobody votes
    out = tmp_path / "course" / "06_evaluate"
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(a["decoding"]["max_new_tokens"] == 24 for a in answers)
    assert json.loads((out / "pairs_key.json").read_text()).keys() == {a["id"] for a in answers}
    assert "answer_a" in (out / "pairs.jsonl").read_text() and (out / "tally.png").is_file()
