"""IFEval scoring: verdicts on crafted responses against the paper's definition of each of the 25 constraint
types, the four accuracies and their errors, the response-file format, and that the checks run offline
without loading a pickle or asking the network."""

import json
import math
import sys

import nltk
import nltk.tokenize
import pytest
from if_verifiable.ifeval import instructions_util

from alpaca_helpers.evaluate.ifeval import (
    DROP_NOTE,
    LEVELS,
    check_response,
    check_responses,
    drop_caveat,
    ifeval_scores,
    load_ifeval,
    prompt_change,
    punkt_data_dir,
    read_responses,
    score_ifeval,
    summary_row,
    write_responses,
)

LONG_EN = "the weather is lovely today and we are going for a long walk in the park by the river"

# (instruction id, kwargs, response, strict verdict, loose verdict), from Zhou et al. 2023, Table 1 and the
# reference definitions: loose also accepts the response without its first line, its last line or both, and
# without markdown asterisks.
CASES = [
    ("punctuation:no_comma", {}, "No commas in this one.", True, True),
    ("punctuation:no_comma", {}, "Well, there is one.", False, False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", True, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* only", False, False),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three", True, True),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three", False, False),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] lives at [address]", True, True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] lives here", False, False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi to Ann."}, "Say hi to Ann. Hi Ann!", True, True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi to Ann."}, "Hi Ann! Say hi to Ann.", False, False),
    ("detectable_format:title", {}, "<<A Title>>\nThe text.", True, True),
    ("detectable_format:title", {}, "A Title\nThe text.", False, False),
    ("change_case:english_lowercase", {}, LONG_EN, True, True),
    ("change_case:english_lowercase", {}, LONG_EN.capitalize(), False, False),
    ("change_case:english_lowercase", {}, f"Note:\n{LONG_EN}", False, True),  # loose drops the first line
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n* three", False, True),
    ("change_case:english_capital", {}, LONG_EN.upper(), True, True),
    ("change_case:english_capital", {}, LONG_EN, False, False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nThe first.\nSection 2\nThe second.", True, True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nOnly one.", False, False),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "THE CAT met THE DOG.", True, True),  # NLTK's word tokenizer (Punkt inside): 4 capital words
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "less than"},
     "THE CAT met THE DOG.", False, False),
    ("startend:quotation", {}, '"All of it quoted."', True, True),
    ("startend:quotation", {}, 'Here:\n"All of it quoted."', False, True),
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An apple and a pear.", True, True),
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An apple alone.", False, False),
    ("detectable_format:json_format", {}, '{"answer": 42}', True, True),
    ("detectable_format:json_format", {}, '```json\n{"answer": 42}\n```', True, True),
    ("detectable_format:json_format", {}, "answer: 42", False, False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", True, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Just one part.", False, False),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", True, True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False, False),
    ("language:response_language", {"language": "de"},
     "Das Wetter ist heute sehr schön und wir gehen lange im Park spazieren.", True, True),
    ("language:response_language", {"language": "de"}, LONG_EN, False, False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Fizz buzz, jazz.", True, True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "No such letter.", False, False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", True, True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\nBye.", False, True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A dog in a category.", True, True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A Cat.", False, False),
    ("keywords:frequency", {"keyword": "rain", "frequency": 2, "relation": "at least"}, "Rain, rain.", True, True),
    ("keywords:frequency", {"keyword": "rain", "frequency": 2, "relation": "at least"}, "Rain once.", False, False),
    # Punkt knows "Dr." and "Mr." are abbreviations: 2 sentences here, where a split at every period gives 4.
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith met Mr. Jones. They talked.", True, True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "One. Two. Three.", False, False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. Bye.", True, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.", False, False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "second"},
     "First paragraph.\n\nSecond paragraph.", True, True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "second"},
     "First paragraph.\n\nThird paragraph.", False, False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True, True),
    ("detectable_format:constrained_response", {}, "Perhaps.", False, False),
]


def _prompt(instruction, kwargs, key=0):
    return {"key": key, "prompt": "A crafted prompt.", "instruction_id_list": [instruction], "kwargs": [kwargs]}


def test_every_constraint_type_of_the_set_is_covered():
    types = {i for p in load_ifeval() for i in p["instruction_id_list"]}
    assert len(load_ifeval()) == 541 and len(types) == 25
    assert {c[0] for c in CASES} == types


@pytest.mark.parametrize("instruction,kwargs,response,strict,loose", CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in CASES])
def test_verdicts_on_crafted_responses(instruction, kwargs, response, strict, loose):
    checked = check_responses([_prompt(instruction, kwargs)], {"A crafted prompt.": response})[0]
    assert (checked["strict"], checked["loose"]) == ([strict], [loose])


def test_empty_response_fails_every_instruction_and_a_random_letter_is_seeded():
    prompt = {"key": 7, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
              "kwargs": [{}, {}]}
    assert check_response(prompt, "   ") == {"key": 7, "instruction_id_list": prompt["instruction_id_list"],
                                           "strict": [False, False], "loose": [False, False]}
    hashes = next(p for p in load_ifeval() if p["key"] == 1122)  # asks for '#': the reference draws a letter
    response = "just a few words #with #hash #tags #here abcdefghijklmnopqrstuvwxyz"
    assert len({json.dumps(check_response(hashes, response)) for _ in range(5)}) == 1


def test_accuracies_levels_and_clustered_errors():
    rows = [{"instruction_id_list": ["a:x", "b:y"], "strict": [True, True], "loose": [True, True]},
            {"instruction_id_list": ["a:x", "b:z"], "strict": [True, False], "loose": [True, True]},
            {"instruction_id_list": ["a:x"], "strict": [False], "loose": [True]}]
    s = ifeval_scores(rows)
    assert (s["prompt_strict"], s["prompt_loose"]) == (pytest.approx(1 / 3), 1.0)
    assert (s["instruction_strict"], s["instruction_loose"]) == (pytest.approx(3 / 5), 1.0)
    assert s["n_prompts"] == 3 and s["n_instructions"] == 5
    assert s["prompt_strict_se"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 2))  # stdev / sqrt(n)
    r = 3 / 5  # clustered by prompt: passed and checked per prompt (2, 2), (1, 2), (0, 1)
    clustered = math.sqrt(3 / 2 * ((2 - 2 * r) ** 2 + (1 - 2 * r) ** 2 + (0 - r) ** 2)) / 5
    assert s["instruction_strict_se"] == pytest.approx(clustered)
    assert list(s["by_type"]) == ["a:x", "b:y", "b:z"]
    assert s["by_type"]["a:x"]["instruction_strict"] == pytest.approx(2 / 3)
    assert s["by_group"]["b"]["n_instructions"] == 2 and s["by_group"]["b"]["prompt_loose"] == 1.0
    assert set(summary_row(s)) == {*LEVELS, *(f"{level}_se" for level in LEVELS), "n_prompts", "n_instructions"}
    change = prompt_change(rows, [{**row, "strict": [True] * len(row["strict"])} for row in rows])
    assert change["mean"] == pytest.approx(2 / 3) and change["n"] == 3


def test_response_file_round_trip_and_the_one_call_api(tmp_path):
    prompts = load_ifeval()[:3]
    responses = {prompts[0]["prompt"]: "a lowercase answer with no commas at all", prompts[1]["prompt"]: "Fine."}
    path = write_responses(tmp_path / "responses.jsonl", prompts, responses)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(r) for r in rows] == [{"prompt", "response"}] * 3 and rows[2]["response"] == ""
    back = read_responses(path)
    by_rows, by_dict = score_ifeval(rows), score_ifeval(back)
    assert by_rows == by_dict and by_rows["n_prompts"] == 3
    assert score_ifeval(responses)["n_prompts"] == 2  # without `prompts`: the shipped prompts that were answered
    with pytest.raises(ValueError, match="none of the responses"):
        score_ifeval({"not an IFEval prompt": "x"})


def test_checks_load_no_pickle_and_touch_no_network(monkeypatch):
    """Every check runs (sentence and capital-word counts use Punkt) while an audit hook watches every file
    opened and every connection tried: no pickle, no socket; Punkt's files come from our punkt_tab folder."""
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download was called"))
    instructions_util._get_sentence_tokenizer.cache_clear()  # earlier tests loaded Punkt: load it again here
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    seen = {"open": [], "connect": []}
    watching = [True]

    def hook(event, args):
        if watching[0] and event == "open" and isinstance(args[0], str):
            seen["open"].append(args[0])
        elif watching[0] and event == "socket.connect":
            seen["connect"].append(args)

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one stops recording below
    try:
        prompts = [_prompt(i, k, key=n) for n, (i, k, *_rest) in enumerate(CASES)]
        check_responses(prompts, {"A crafted prompt.": "Dr. Smith met Mr. Jones. THE END."})
    finally:
        watching[0] = False
    assert not seen["connect"]
    assert not [p for p in seen["open"] if p.endswith((".pickle", ".pkl"))]
    punkt_files = [p for p in seen["open"] if "punkt" in p]
    assert punkt_files and all(p.startswith(str(punkt_data_dir())) for p in punkt_files)


def test_drop_caveat_explains_a_drop_and_stays_silent_otherwise():
    note = drop_caveat({"mean": -0.125, "se": 0.09, "n": 16}, 128)
    assert DROP_NOTE in note and "128 tokens" in note and "ChatML" in note and "may be noise" in note
    assert "may be noise" not in drop_caveat({"mean": -0.3, "se": 0.05, "n": 16}, 128)
    assert drop_caveat({"mean": 0.0, "se": 0.0, "n": 16}, 128) is None and drop_caveat({"mean": None}, 128) is None
