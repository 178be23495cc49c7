"""The one flag spelling: underscores shown, hyphens accepted silently, nothing after `--` touched."""

import sys

import pytest

from alpaca_helpers.cli import ArgumentParser


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="demo")
    p.add_argument("--num_instructions", type=int, default=1)
    p.add_argument("--output_dir", default="runs")
    return p


def test_hyphens_are_accepted_silently():
    args = _parser().parse_args(["--num-instructions", "3", "--output-dir=out"])
    assert (args.num_instructions, args.output_dir) == (3, "out")


def test_help_shows_one_spelling(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--num_instructions" in out and "--num-instructions" not in out


def test_values_and_what_follows_the_separator_are_left_alone(monkeypatch):
    p = _parser()
    args, rest = p.parse_known_args(["--output_dir=--not-a-flag", "--", "--num-instructions", "9"])
    assert args.output_dir == "--not-a-flag" and rest == ["--", "--num-instructions", "9"]
    monkeypatch.setattr(sys, "argv", ["demo", "--num-instructions=4"])
    assert p.parse_args().num_instructions == 4


def test_unknown_flags_still_fail_in_one_line(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--num-instruction", "3"])
    assert "unrecognized arguments: --num-instruction" in capsys.readouterr().err
