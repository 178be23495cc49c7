"""One precision rule for every model load and training run (`alpaca_helpers.precision`): bf16 where the device
has native bf16 matrix instructions, fp32 elsewhere; `ALPACA_BF16=false` forces "no native bf16", and then every
`auto` stays fp32 and says so. Real training runs on a tiny LLaMA, the real default model, the real server command.
The GPU rule is shown with a faked `torch.cuda` (this machine has no GPU), as said in that test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import make_tiny_llama

from alpaca_helpers import precision
from alpaca_helpers.demo.generate import load_model
from alpaca_helpers.precision import (
    FORCE_ENV,
    NativeBf16,
    PrecisionError,
    choose_bf16,
    cpu_native_bf16,
    inference_choice,
    native_bf16,
)
from alpaca_helpers.self_instruct.server import server_command
from alpaca_helpers.train.config import check_run, make_config, parse_config
from alpaca_helpers.train.recipe import device_native_bf16, main, train


@pytest.fixture(autouse=True)
def machine_as_it_is(monkeypatch):
    """These tests read the machine itself: an `ALPACA_BF16` of the caller's (`ALPACA_BF16=false make test`) is
    removed; the tests of the override set it themselves."""
    monkeypatch.delenv(FORCE_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_precision") / "model", default_model_dir)


def tiny_run(tiny, out, **extra):
    return make_config(model_name_or_path=str(tiny), output_dir=str(out), max_examples=8, global_batch_size=4,
                       per_device_train_batch_size=2, max_steps=1, model_max_length=128, **extra)


def test_the_cpu_rule_reads_torchs_capability_report():
    assert cpu_native_bf16({"avx512_bf16": True, "amx_bf16": False}).available
    assert cpu_native_bf16({"amx_bf16": True}).reason.endswith("amx_bf16")
    without = cpu_native_bf16({"avx512_f": True, "avx2": True})
    assert not without.available and "emulated" in without.reason
    caps = torch.cpu.get_capabilities()
    assert native_bf16("cpu").available == bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and caps.get("architecture") == "x86_64":  # the kernel's flags say the same
        flags = set(cpuinfo.read_text().split())
        assert native_bf16("cpu").available == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_settings_win_over_auto_and_each_choice_says_why():
    yes, no = NativeBf16(True, "native here"), NativeBf16(False, "not here")
    assert choose_bf16(None, yes).line("precision") == "precision: bf16 (auto: native here)"
    assert choose_bf16(None, no).line("precision") == "precision: fp32 (auto: not here)"
    assert choose_bf16(False, yes).line("precision") == "precision: fp32 (bf16=false)"
    emulated = choose_bf16(True, no)
    assert emulated.bf16 and emulated.dtype == torch.bfloat16 and "not here" in emulated.reason
    with pytest.raises(PrecisionError, match="this GPU has no bf16 support"):
        choose_bf16(True, no, on_gpu=True)


def test_auto_on_this_machine_trains_as_the_hardware_says_and_prints_one_line(tmp_path, tiny, capsys):
    summary = train(tiny_run(tiny, tmp_path / "auto"))
    native = native_bf16("cpu")
    assert summary["bf16"] is native.available
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precision:")]
    expected = "bf16 compute (autocast), fp32 master weights and optimizer state" if native.available else "fp32"
    assert lines == [f"precision: {expected} (auto: {native.reason})"]


def test_forcing_no_native_bf16_keeps_every_auto_in_fp32_and_says_so(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "false")
    forced = native_bf16("cpu")
    assert not forced.available and forced.reason.startswith("ALPACA_BF16=false")
    # training: auto is fp32, an explicit bf16=true still wins
    assert not check_run(parse_config([]), 1, on_gpu=False, native=forced).precision.bf16
    assert check_run(parse_config(["--bf16", "true"]), 1, on_gpu=False, native=forced).precision.bf16
    summary = train(tiny_run(tiny, tmp_path / "forced"))
    out = capsys.readouterr().out
    assert summary["bf16"] is False
    assert "precision: fp32 (auto: ALPACA_BF16=false: treated as a machine without native bf16)" in out.splitlines()
    # inference: the server and every load_model
    assert inference_choice("cpu").dtype == torch.float32
    cmd = server_command("some/model", 8000)
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    model, _ = load_model("default")
    assert model.dtype == torch.float32
    assert "precision: fp32 (auto: ALPACA_BF16=false" in capsys.readouterr().out


def test_a_wrong_forcing_value_is_a_one_line_error(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "maybe")
    assert main(["--model_name_or_path", str(tiny), "--output_dir", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip() == "error: ALPACA_BF16='maybe': expected auto or false (unset = auto)"
    monkeypatch.setenv(FORCE_ENV, "auto")
    assert native_bf16("cpu") == cpu_native_bf16()


@pytest.mark.parametrize("command", [
    ["alpaca_helpers.self_instruct", "--num-instructions", "1", "--output-dir"],
    ["alpaca_helpers.safety", "--num_instructions", "1", "--output_dir"],
    ["alpaca_helpers.understand", "--spec", "cpu_course", "--output_dir"],
])
def test_every_command_that_loads_a_model_says_a_wrong_forcing_value_in_one_line(command, tmp_path):
    run = subprocess.run([sys.executable, "-m", *command, str(tmp_path)], env={**os.environ, FORCE_ENV: "maybe"},
                         capture_output=True, text=True, timeout=300)
    assert (run.returncode, run.stderr) == (2, "error: ALPACA_BF16='maybe': expected auto or false (unset = auto)\n")


class FakeCuda:
    """Stands in for `torch.cuda` on a machine without a GPU: records calls, refuses anything that would
    allocate or count emulated bf16 (`is_bf16_supported`)."""

    def __init__(self, capability: tuple[int, int], name: str):
        self.capability, self.name, self.calls = capability, name, []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: self.calls.append(("set_device", str(d))))
        monkeypatch.setattr(torch.cuda, "get_device_capability", self.get_capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: self.name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", self.refuse)
        monkeypatch.setattr(torch.cuda, "current_device", self.refuse)

    def get_capability(self, device=None):
        self.calls.append(("capability", str(device)))
        return self.capability

    def refuse(self, *_, **__):
        raise AssertionError("called a torch.cuda function that allocates or reads the current device")


@pytest.mark.parametrize("capability, name, bf16", [((7, 0), "Tesla V100-SXM2-32GB", False),
                                                    ((7, 5), "Tesla T4", False),
                                                    ((8, 0), "NVIDIA A100-SXM4-80GB", True),
                                                    ((9, 0), "NVIDIA H100 80GB HBM3", True)])
def test_gpu_bf16_comes_from_the_ranks_own_device_capability_after_set_device(monkeypatch, capability, name, bf16):
    """A fake torch.cuda (no GPU on this machine): rank 1's device is set first, then its own capability is read;
    `is_bf16_supported` (True on V100/T4 by emulation, and it allocates on the current GPU) is never called."""
    fake = FakeCuda(capability, name)
    fake.install(monkeypatch)
    native = device_native_bf16(torch.device("cuda", 1))
    assert fake.calls == [("set_device", "cuda:1"), ("capability", "cuda:1")]
    assert native.available is bf16 and f"compute capability {capability[0]}.{capability[1]}" in native.reason
    plan = check_run(parse_config([]), 2, on_gpu=True, native=native)
    assert plan.precision.bf16 is bf16
    assert precision.inference_choice(torch.device("cuda", 1)).bf16 is bf16
