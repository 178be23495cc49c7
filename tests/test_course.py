"""The course chain: which earlier output each notebook of a course run reads."""

from alpaca_helpers.course import COURSE_LINKS, TRAIN_SET, course_notebooks, linked_parameters, notebook_parameters


def test_a_course_run_trains_on_the_set_notebook_02_wrote(tmp_path):
    out = tmp_path / "course"
    assert linked_parameters("03_tokenize_and_mask", out) == {}  # nothing written yet: each notebook's own default
    (out / "02_dedup_analysis").mkdir(parents=True)
    (out / TRAIN_SET).write_text("[]\n")
    for stem in ("03_tokenize_and_mask", "04_train"):
        assert linked_parameters(stem, out) == {"data_path": str(out / "02_dedup_analysis" / "train_set.json")}
    assert "data_path" not in linked_parameters("05_generate", out)


def test_every_link_names_a_parameter_its_notebook_declares():
    books = {b.stem: b for b in course_notebooks()}
    for stem, links in COURSE_LINKS.items():
        assert set(links) <= notebook_parameters(books[stem]), stem
