import json
from pathlib import Path

import datasets
import pytest
from conftest import SHARED_DATA

from alpaca_helpers.data import (
    AlpacaFormatError,
    DataSourceError,
    check_not_eval_set,
    load_alpaca,
    load_davinci_predictions,
    load_eval_set,
    load_seed_tasks,
    load_source,
    save_alpaca,
    source_counts,
)
from alpaca_helpers.files import append_durable, atomic_folder, complete_lines, read_complete_jsonl
from alpaca_helpers.paths import data_dir


def test_seed_tasks_counts_match_the_data():
    seeds = load_seed_tasks()
    assert len(seeds) == 175
    assert sum(r["is_classification"] for r in seeds) == 26
    assert sum(bool(r["input"]) for r in seeds) == 125
    assert all(set(r) >= {"instruction", "input", "output", "id"} for r in seeds)


def test_eval_set_and_davinci_answers_align():
    evals, davinci = load_eval_set(), load_davinci_predictions()
    assert len(evals) == len(davinci) == 252
    assert [r["instruction"].strip() for r in evals] == [r["instruction"] for r in davinci]
    assert all(r["motivation_app"] for r in evals)
    assert not davinci[0]["output"].startswith(" ")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")
@pytest.mark.parametrize("name", ["seed_tasks.jsonl", "user_oriented_instructions.jsonl",
                                  "text-davinci-003_predictions.jsonl", "LICENSE.self-instruct"])
def test_shipped_data_is_the_upstream_data_unchanged(name):
    assert (data_dir() / name).read_bytes() == (SHARED_DATA / name).read_bytes()


def test_attribution_ships_with_the_data():
    sources = (data_dir() / "SOURCES.md").read_text()
    assert "yizhongw/self-instruct" in sources and "Apache-2.0" in sources
    assert (data_dir() / "LICENSE.self-instruct").is_file()


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_save_then_load_round_trips_and_defaults_input(tmp_path, suffix):
    records = [{"instruction": "Name a colour.", "output": "Blue."},
               {"instruction": "Translate: ", "input": "bonjour ü 日本", "output": "hello", "id": 7}]
    path = save_alpaca(records, tmp_path / f"d{suffix}")
    loaded = load_alpaca(path)
    assert loaded[0] == {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert loaded[1] == records[1]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,text,expected", [
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c",\n',
     r"bad\.jsonl: line 2: malformed JSON"),
    ("bad.json", '[{"instruction": "a", "output": "b"},\n {"instruction": }]', r"bad\.json: line 2: malformed JSON"),
    ("miss.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
     r"miss\.jsonl: line 2: missing field 'output'"),
    ("type.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": 3, "output": "d"}]',
     r"type\.json: index 1: field 'input' must be a string, got int"),
    ("empty.jsonl", '{"instruction": "  ", "output": "b"}\n', r"empty\.jsonl: line 1: field 'instruction' is empty"),
    ("notobj.json", '["just a string"]', r"notobj\.json: index 0: expected an object"),
])
def test_bad_input_gets_a_one_line_error_naming_file_place_and_field(tmp_path, name, text, expected):
    path = _write(tmp_path, name, text)
    with pytest.raises(AlpacaFormatError, match=expected) as err:
        load_alpaca(path)
    assert "\n" not in str(err.value)


def test_save_refuses_bad_records_before_writing(tmp_path):
    with pytest.raises(AlpacaFormatError, match=r"record 1: field 'output' must be a string"):
        save_alpaca([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": None}], tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_alpaca(tmp_path / "nope.json")


def test_blank_lines_in_jsonl_are_not_records(tmp_path):
    path = _write(tmp_path, "b.jsonl", '\n{"instruction": "a", "output": "b"}\n\n')
    assert len(load_alpaca(path)) == 1


def test_json_written_like_alpaca_data(tmp_path):
    path = save_alpaca([{"instruction": "é", "input": "", "output": "x"}], tmp_path / "d.json")
    text = path.read_text()
    assert text.startswith("[\n    {") and "é" in text
    assert json.loads(text)[0]["instruction"] == "é"


def test_training_data_with_eval_instructions_is_refused():
    evals = load_eval_set()
    check_not_eval_set(load_seed_tasks())  # the seeds are fine
    leaked = load_seed_tasks()[:3] + [{"instruction": "  " + evals[5]["instruction"].upper(),
                                       "input": evals[5]["input"] + " ", "output": "x"}]
    with pytest.raises(AlpacaFormatError, match=r"train\.json: 1 record\(s\) repeat evaluation-set instructions "
                                                r"\(first at index 3\)"):
        check_not_eval_set(leaked, source="train.json")


def test_durable_appends_skip_and_repair_a_torn_line(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    assert complete_lines(path) == ""
    append_durable(path, '{"a": 1}')
    append_durable(path, '{"b": 2}\n{"c": 3}')
    with open(path, "a") as f:
        f.write('{"d": ')  # what a crash mid-write leaves
    assert complete_lines(path) == '{"a": 1}\n{"b": 2}\n{"c": 3}\n'
    append_durable(path, '{"e": 5}')
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n{"c": 3}\n{"e": 5}\n'


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """U+2028 and U+0085 stay raw in JSON written with ensure_ascii=False; str.splitlines would cut there."""
    records = [{"instruction": "Split\u2028here?", "input": "", "output": "next\x85line \u2029 end"}]
    assert load_alpaca(save_alpaca(records, tmp_path / "odd.jsonl")) == records
    append_durable(tmp_path / "log.jsonl", json.dumps(records[0], ensure_ascii=False))
    assert read_complete_jsonl(tmp_path / "log.jsonl") == records
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: malformed JSON"):
        read_complete_jsonl(tmp_path / "bad.jsonl")


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left behind


# --- load_source: every kind of data_path ------------------------------------------------------------


@pytest.fixture(scope="module")
def local_sources(tmp_path_factory):
    """The first 20 seed tasks as tatsu-lab/alpaca has them (with an extra `text` column), written as a
    Hub-repo layout folder, a save_to_disk folder, and parquet, CSV and JSONL files."""
    root = tmp_path_factory.mktemp("sources")
    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"],
             "text": f"### Instruction:\n{r['instruction']}"} for r in load_seed_tasks()[:20]]
    table = datasets.Dataset.from_list(rows)
    (root / "tatsu-lab" / "alpaca" / "data").mkdir(parents=True)
    table.to_parquet(str(root / "tatsu-lab" / "alpaca" / "data" / "train-00000-of-00001.parquet"))
    table.save_to_disk(str(root / "saved"))
    table.to_parquet(str(root / "rows.parquet"))
    table.to_csv(str(root / "rows.csv"), index=False)
    save_alpaca(rows, root / "rows.jsonl")
    renamed = [{"prompt": r["instruction"], "context": r["input"], "completion": r["output"]} for r in rows]
    datasets.Dataset.from_list(renamed).to_parquet(str(root / "renamed.parquet"))
    return root, rows


@pytest.mark.parametrize("name", ["tatsu-lab/alpaca", "saved", "rows.parquet", "rows.csv", "rows.jsonl"])
def test_load_source_reads_every_local_kind_alike(local_sources, name):
    root, rows = local_sources
    records = load_source(str(root / name))
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in records] == [
        {k: r[k] for k in ("instruction", "input", "output")} for r in rows]
    assert records[0]["text"].startswith("### Instruction:")  # extra columns are kept, training ignores them


def test_load_source_maps_columns_and_names_bad_rows(local_sources, tmp_path):
    root, rows = local_sources
    mapped = load_source(str(root / "renamed.parquet"), "instruction=prompt,input=context,output=completion")
    assert [r["output"] for r in mapped] == [r["output"] for r in rows]
    with pytest.raises(DataSourceError, match=r"row 0: no column 'question'"):
        load_source(str(root / "renamed.parquet"), {"instruction": "question"})
    with pytest.raises(DataSourceError, match="not Alpaca fields"):
        load_source(str(root / "rows.csv"), "prompt=instruction")
    with pytest.raises(AlpacaFormatError, match=r"renamed.parquet: row 0: missing field 'instruction'"):
        load_source(str(root / "renamed.parquet"))
    assert len(load_source("seed")) == 175
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataSourceError, match="unknown data format"):
        load_source(str(tmp_path / "notes.txt"))


def test_source_counts_count_the_source_field():
    assert source_counts([{"source": "seed"}, {"source": "self-instruct"}, {"source": "seed"}]) == {
        "seed": 2, "self-instruct": 1}
    assert source_counts(load_seed_tasks()) == {}
