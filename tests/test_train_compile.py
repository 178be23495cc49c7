"""`torch_compile`: each decoder layer compiled (inductor, the real setting), as torchtitan does. On the tiny
LLaMA in fp32 the loss of every step and the trained weights equal the eager run's. Whether it is faster only
a GPU can show: the GPU proof (`scripts/gpu_check.sh`, `full_fsdp_bf16_compiled`) measures MFU with it on and off.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_tiny_llama
from torch._dynamo.utils import counters

from alpaca_helpers.train.config import make_config, parse_config
from alpaca_helpers.train.recipe import train

pytestmark = pytest.mark.slow  # about a minute: inductor's C++ compile of one layer's forward and backward

LOSS_TOL = 1e-4  # absolute, on losses near 11: inductor fuses and reorders fp32 reductions


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_compile") / "model", default_model_dir)


def run(tiny, out, **extra):
    """Two optimizer steps (the first at the warm-up's learning rate 0, the second moves the weights) of
    different lengths, in one process through the FSDP path (the layers compiled, then sharded), as the GPU
    proof runs. Kept this small because inductor's C++ compile of one layer's forward and backward alone takes
    30 to 40 s of CPU (a minute or two of wall time on 2 busy cores)."""
    summary = train(make_config(model_name_or_path=str(tiny), output_dir=str(out), max_examples=8,
                                global_batch_size=2, per_device_train_batch_size=2, max_steps=2,
                                model_max_length=128, learning_rate=1e-3, bf16="false", fsdp="full_shard",
                                device="cpu", **extra))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return summary, rows, load_file(str(out / "model" / "model.safetensors"))


def test_compiled_layers_train_to_the_eager_runs_losses_and_weights(tmp_path, tiny, capsys):
    assert parse_config([]).torch_compile is False  # off until measured
    _, eager, eager_weights = run(tiny, tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    try:
        summary, compiled, weights = run(tiny, tmp_path / "compiled", torch_compile=True)
        assert counters["stats"]["unique_graphs"] > 0  # dynamo compiled frames: the switch is not a no-op
    finally:
        torch._dynamo.reset()
    assert "torch_compile: 2 LlamaDecoderLayer layers compiled" in capsys.readouterr().out
    assert summary["finished"] and len(compiled) == 2 and eager[0]["tokens"] != eager[1]["tokens"]
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], abs=LOSS_TOL)
    assert [r["grad_norm"] for r in compiled] == pytest.approx([r["grad_norm"] for r in eager], rel=1e-4)
    assert weights.keys() == eager_weights.keys()
    for name, weight in weights.items():
        torch.testing.assert_close(weight, eager_weights[name], atol=1e-4, rtol=1e-4, msg=name)
