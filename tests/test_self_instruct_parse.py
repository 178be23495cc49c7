"""The self-instruct prompt, the completion parser (on recorded malformed completions), filters, checkpoint."""

import json
from collections import Counter

import pytest

from alpaca_helpers.data import load_seed_tasks
from alpaca_helpers.self_instruct.checkpoint import Checkpoint
from alpaca_helpers.self_instruct.parse import (
    BLACKLIST,
    FILTER_REASONS,
    PARSE_REASONS,
    filter_reason,
    no_task_note,
    parse_completion,
)
from alpaca_helpers.self_instruct.prompt import encode_prompt, stop_strings


def test_prompt_lists_requirements_examples_and_the_open_slot():
    seeds = load_seed_tasks()
    examples = [seeds[0], seeds[1], seeds[2]]  # seed 0 has no input, seed 1 has one
    prompt = encode_prompt(examples, tasks_per_prompt=20)
    assert "until it holds 23 tasks" in prompt and "the 20 you add" in prompt
    assert "English" in prompt and "100 words" in prompt and "<noinput>" in prompt
    assert prompt.count("###\n") == 4
    assert "1. Input:\n<noinput>\n" in prompt
    assert f"2. Input:\n{seeds[1]['input']}\n2. Output:\n{seeds[1]['output']}\n" in prompt
    assert prompt.endswith("###\n4. Instruction:")
    assert stop_strings(3, 20) == ["24. Instruction"]


# Recorded completions of the 135M teacher (shortened), and the shapes of failure they show.
WELL_FORMED = """ Name three primary colors.
4. Input:
<noinput>
4. Output:
Red, blue and yellow.
###
5. Instruction: Rewrite the sentence in the passive voice.
5. Input:
The cat chased the mouse.
5. Output:
The mouse was chased by the cat.
###
"""

MISSING_NUMBERS = """ Summarize the paragraph in one sentence.
Input:
The city council met on Monday and voted to build a new library downtown.
Output:
The council voted to build a new downtown library.
###
Instruction: Give two synonyms for the word happy.
Input: <noinput>
Output: Joyful, cheerful.
"""

MERGED_BLOCKS = """ Translate the phrase into French.
4. Input:
Good morning
4. Output:
Bonjour
5. Instruction: Classify the review as positive or negative.
5. Input:
The food was cold and bland.
5. Output:
Negative
"""

EMPTY_OUTPUT = """ Explain what a leap year is.
4. Input:
<noinput>
4. Output:
###
5. Instruction: List the planets closer to the sun than Earth.
5. Input:
<noinput>
5. Output:
Mercury and Venus.
"""

TRUNCATED = """ Suggest a name for a bakery.
4. Input:
<noinput>
4. Output:
Rise and Shine Bakery
###
5. Instruction: Describe the water cycle in simple words.
5. Input:
<noinput>
5. Output:
Water evaporates from the sea, forms clo"""

MISSING_FIELDS = """ I am going to the party and I want to make sure I have everything ready.
4. Output:
Bring a gift.
###
5. Instruction: Provide a list of words related to a topic.
5. Input:
1. The most beautiful thing in the world
2. The most beautiful thing in the world
"""


def test_well_formed_completion():
    result = parse_completion(WELL_FORMED, 4, "stop")
    assert result.tasks == [
        {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yellow."},
        {"instruction": "Rewrite the sentence in the passive voice.", "input": "The cat chased the mouse.",
         "output": "The mouse was chased by the cat."},
    ]
    assert not result.failures


def test_missing_numbers_are_tolerated():
    result = parse_completion(MISSING_NUMBERS, 4, "stop")
    assert [t["instruction"] for t in result.tasks] == ["Summarize the paragraph in one sentence.",
                                                        "Give two synonyms for the word happy."]
    assert result.tasks[0]["input"].startswith("The city council") and result.tasks[1]["input"] == ""
    assert not result.failures


def test_merged_blocks_are_split():
    result = parse_completion(MERGED_BLOCKS, 4, "stop")
    assert [(t["input"], t["output"]) for t in result.tasks] == [("Good morning", "Bonjour"),
                                                                ("The food was cold and bland.", "Negative")]


def test_empty_output_is_counted():
    result = parse_completion(EMPTY_OUTPUT, 4, "stop")
    assert [t["output"] for t in result.tasks] == ["Mercury and Venus."]
    assert result.failures == {"empty_output": 1}


# Chat replies seen from a third-party OpenAI-compatible server: the reply restates the slot's number and label
# (the prompt already ends with "4. Instruction:"), on the same line or on its own.
CHAT_RESTATED_SAME_LINE = """ 4. Instruction: I need you to create a movie title for a story about a lost dog.
4. Input:
<noinput>
4. Output:
Paws on the Road
###
5. Instruction: 5. Instruction: Translate the greeting into Spanish.
5. Input:
Good evening
5. Output:
Buenas noches"""

CHAT_RESTATED_NEXT_LINE = """
1. Instruction: Instruction: List two uses of a paperclip.
1. Input:
<noinput>
1. Output:
Holding papers together; resetting a device."""


def test_a_restated_instruction_label_in_a_chat_reply_is_stripped():
    result = parse_completion(CHAT_RESTATED_SAME_LINE, 4, "stop")
    assert [t["instruction"] for t in result.tasks] == [
        "I need you to create a movie title for a story about a lost dog.", "Translate the greeting into Spanish."]
    assert not result.failures
    result = parse_completion(CHAT_RESTATED_NEXT_LINE, 4, "stop")
    assert [t["instruction"] for t in result.tasks] == ["List two uses of a paperclip."]
    assert all(not t["instruction"].lower().startswith(("1.", "instruction")) for t in result.tasks)


def test_last_block_dropped_when_cut_for_length():
    result = parse_completion(TRUNCATED, 4, "length")
    assert [t["instruction"] for t in result.tasks] == ["Suggest a name for a bakery."]
    assert result.failures == {"truncated": 1}
    # The same text with a normal stop keeps both blocks.
    assert len(parse_completion(TRUNCATED, 4, "stop").tasks) == 2


def test_missing_fields_and_garbage_are_counted_by_reason():
    result = parse_completion(MISSING_FIELDS, 4, "stop")
    assert not result.tasks and result.failures == {"missing_input": 1, "missing_output": 1}
    assert parse_completion("", 4, "length").failures == {"truncated": 1}
    assert parse_completion(" \n###\n", 4, "stop").failures == {"missing_input": 1}
    assert set(result.failures) <= set(PARSE_REASONS)


@pytest.mark.parametrize("instruction, reason", [
    ("Name three colors.", "too_short"),
    ("Explain " + "very " * 150 + "clearly.", "too_long"),
    ("Describe the image of a sunset.", "blacklisted_word"),
    ("Please GO TO the store and buy milk.", "blacklisted_word"),
    ("Plot the sales figures for last year.", "blacklisted_word"),
    ("Write a program that sorts a list.", "write_a_program"),
    ('"Translate this sentence into Spanish please.', "starts_with_punctuation"),
    ("Émettez une opinion sur ce film.", "starts_non_ascii"),
    ("Explain the mapping between keys and values in a dictionary.", None),  # whole words only
    ("Suggest a fun plotline for a short story.", None),
])
def test_filters(instruction, reason):
    assert filter_reason(instruction) == reason
    assert reason is None or reason in FILTER_REASONS


def test_blacklist_is_alpacas():
    assert len(BLACKLIST) == 18 and "flowchart" in BLACKLIST and "go to" in BLACKLIST


def test_checkpoint_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "ck.jsonl"
    ck = Checkpoint(path)
    ck.append([{"instruction": "A b c d", "input": "", "output": "x"}], {"index": 0, "rejections": {}})
    with open(path, "a") as f:
        f.write('{"type": "record", "instruction": "half')  # what a crash mid-write would leave
    again = Checkpoint(path)
    assert [r["instruction"] for r in again.records] == ["A b c d"] and len(again.requests) == 1
    again.append([], {"index": 1, "rejections": {}})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["type"] for entry in lines] == ["record", "request", "request"]


def test_a_reply_that_parses_to_nothing_gets_a_one_line_reason():
    parsed = parse_completion(" Summarise the text.\n4. Output:\nA summary.", 4, "stop")
    assert not parsed.tasks and parsed.failures == Counter({"missing_input": 1})
    note = no_task_note(parsed.failures, 128, "the 135M teacher")
    assert "\n" not in note and note.startswith("Nothing parsed: the 135M teacher's reply failed as `missing_input`")
    assert "no `Input:` line" in note and "text-davinci-003" in note
    truncated = parse_completion(" The most beautiful thing\n" * 20, 4, "length")
    assert "128-token limit" in no_task_note(truncated.failures, 128)
    assert "`no_task_found`" in no_task_note(Counter(), 128)
