"""The teacher client's pure parts: prices, stop strings, the key never shown, unreachable endpoints."""

import pytest
from fault_proxy import FaultProxy

from alpaca_helpers.self_instruct.server import free_port
from alpaca_helpers.self_instruct.teacher import (
    Teacher,
    TeacherConfig,
    TeacherError,
    TeacherUnreachable,
    estimate_cost,
    price_per_million,
    strip_stop,
)


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
    from alpaca_helpers.self_instruct.teacher import LogprobsUnavailable

    with FaultProxy("http://127.0.0.1:1", then="400") as proxy:
        teacher = Teacher(TeacherConfig(base_url=proxy.base_url, model="m"))
        assert teacher.gives_logprobs() is False
        with pytest.raises(LogprobsUnavailable, match="refused the logprobs field"):
            teacher.complete("Say 1.", top_logprobs=5)
    assert proxy.seen == {"400": 2}  # not retried
