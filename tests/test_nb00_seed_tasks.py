def test_notebook_00_runs_and_counts_the_seed_tasks(execute_notebook, tmp_path):
    summary, executed = execute_notebook("00_seed_tasks", n_samples=3)
    assert summary["n_tasks"] == 175
    assert summary["n_classification"] == 26
    assert summary["n_with_input"] == 125
    assert summary["top_leading_words"]["write"] == 19
    out = tmp_path / "course" / "00_seed_tasks"
    assert (out / "lengths.png").stat().st_size > 10_000 and (out / "leading_verbs.png").is_file()
