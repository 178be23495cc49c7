"""The teacher client's pure parts: prices, stop strings, the key never shown, unreachable endpoints."""

from pathlib import Path

import pytest
from fault_proxy import FaultProxy

from alpaca_helpers.self_instruct.projection import cost_note, projection_at
from alpaca_helpers.self_instruct.server import free_port
from alpaca_helpers.self_instruct.teacher import (
    LogprobsUnavailable,
    Teacher,
    TeacherConfig,
    TeacherError,
    TeacherUnreachable,
    estimate_cost,
    format_usd,
    price_per_million,
    returned_tokens,
    strip_stop,
)
from alpaca_helpers.self_instruct.teacher_run import RunResult


def test_price_table():
    assert price_per_million("gpt-4o-mini") == (0.15, 0.60)
    assert price_per_million("gpt-4o-mini-2024-07-18") == (0.15, 0.60)  # dated snapshot: its family's price
    assert price_per_million("gpt-4o") == (2.50, 10.00)
    assert price_per_million("my-model", "http://127.0.0.1:8000/v1") == (0.0, 0.0)  # local: free
    assert price_per_million("some-unknown-model", "https://example.com/v1") is None
    # Alpaca's 52K run: about 52K/ (kept per request) requests; one million tokens each way on davinci = $40.
    assert estimate_cost("text-davinci-003", 1_000_000, 1_000_000) == pytest.approx(40.0)
    assert estimate_cost("gpt-3.5-turbo-instruct", 2_000_000, 1_000_000) == pytest.approx(5.0)
    assert estimate_cost("unknown", 10, 10) is None


def test_strip_stop():
    assert strip_stop("a\n###\n5. Instruction: b", ["5. Instruction"]) == "a\n###\n"
    assert strip_stop("no stop here", ["5. Instruction"]) == "no stop here"
    assert strip_stop("text", None) == "text"


def test_key_comes_from_the_environment_and_is_never_shown(monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-value")
    config = TeacherConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="MY_TEACHER_KEY")
    teacher = Teacher(config)
    assert "sk-secret" not in repr(teacher) and "sk-secret" not in str(config.to_dict())
    assert teacher._client.api_key == "sk-secret-value"


def test_unreachable_endpoint_is_one_clear_line():
    port = free_port()  # nothing listens there
    teacher = Teacher(TeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m"))
    with pytest.raises(TeacherUnreachable) as err:
        teacher.check(timeout=5)
    message = str(err.value)
    assert "unreachable" in message and str(port) in message and "\n" not in message


def test_a_rejected_key_is_not_retried_and_not_echoed(monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-value")
    with FaultProxy("http://127.0.0.1:1", then="401") as proxy:
        teacher = Teacher(TeacherConfig(base_url=proxy.base_url, model="m", api_key_env="MY_TEACHER_KEY"))
        with pytest.raises(TeacherError) as err:
            teacher.complete("Hello")
    assert proxy.seen == {"401": 1}
    assert "HTTP 401" in str(err.value) and "$MY_TEACHER_KEY" in str(err.value)
    assert "sk-secret" not in str(err.value)


def test_an_endpoint_that_refuses_logprobs_is_told_apart_at_once():
    with FaultProxy("http://127.0.0.1:1", then="400") as proxy:
        teacher = Teacher(TeacherConfig(base_url=proxy.base_url, model="m"))
        assert teacher.gives_logprobs() is False
        with pytest.raises(LogprobsUnavailable, match="refused the logprobs field"):
            teacher.complete("Say 1.", top_logprobs=5)
    assert proxy.seen == {"400": 2}  # not retried


def test_reply_tokens_stop_at_the_stop_string():
    text = "Write a haiku.\n4. Input:\n<noinput>\n###\n5. Instruction: ramble ramble ramble"
    cut = strip_stop(text, ["5. Instruction"])
    assert returned_tokens(128, text, text) == 128  # nothing cut: what the server reported
    assert returned_tokens(128, text, cut, count_tokens=lambda t: len(t.split())) == len(cut.split())
    estimate = returned_tokens(128, text, cut)  # no tokenizer: in proportion to the characters kept
    assert estimate == -(-128 * len(cut) // len(text)) and estimate < 128
    assert returned_tokens(3, text, cut, count_tokens=lambda t: 99) == 3  # never more than decoded


def test_dollars_are_rounded_for_reading():
    assert format_usd(3859.3312) == "$3,859" and format_usd(93.0149) == "$93.01" and format_usd(0.0) == "$0.00"
    assert format_usd(None) == "unknown"


def test_projection_at_alpacas_20_tasks_per_request_reconciles_the_cost():
    # A laptop-sized run, numbers chosen for the arithmetic: 8 kept from 33 requests of 688 prompt tokens.
    run = RunResult(records=[{}] * 8, target=8, requests=33, rejections={}, prompt_tokens=688 * 33,
                    completion_tokens=110 * 33, cost_usd=0.0, wall_seconds=600, retries=0, complete=True,
                    output_path=Path("x"), meta_path=Path("y"))
    at_20 = projection_at(run, 20, tasks_asked=2)
    assert at_20["requests"] == 2601 and at_20["prompt_tokens"] == 2601 * 688
    assert at_20["completion_tokens"] == 2601 * 20 * 55  # 110 reply tokens for 2 tasks: 55 per task
    half = projection_at(run, 20, tasks_asked=2, kept_share=0.5)
    assert half["requests"] == 5201
    usd = estimate_cost("text-davinci-003", at_20["prompt_tokens"], at_20["completion_tokens"])
    note = cost_note(run, 2)
    assert note.startswith("Why this is not Alpaca's < $500") and "0.24 per request" in note
    assert "4.1 prompts of 688 tokens" in note and f"${usd:.2f}" in note and f"{usd / 500:.0%}" in note
    empty = RunResult(records=[], target=8, requests=0, rejections={}, prompt_tokens=0, completion_tokens=0,
                      cost_usd=0.0, wall_seconds=1, retries=0, complete=False, output_path=Path("x"),
                      meta_path=Path("y"))
    assert projection_at(empty, 20, 2) is None and "nothing can be projected" in cost_note(empty, 2)
