"""bf16 on the sharded path, on CPU: FSDP2's mixed-precision policy (bf16 compute, fp32 reduce) over gloo,
the same code the GPUs run. One tiny LLaMA (2 layers, hidden 64).

Tolerances (bf16 has an 8-bit mantissa, ~0.4% relative): 2 processes (FSDP, the whole layer in bf16) against
1 process (autocast: matmuls in bf16) over the same global batches, per-step loss within BF16_LOSS_TOL
(absolute, on losses near 11) and final weights within BF16_WEIGHT_TOL; a run resumed from a bf16 checkpoint
ends with the uninterrupted run's weights within 1e-6 (resume restores fp32 state exactly).
Observed: losses agree to ~6e-5, weights to ~2.5e-3 (Adam's normalised step turns tiny gradient differences
on near-zero gradients into up to one learning rate, 1e-3, per step), resume is bit-exact.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_tiny_llama
from test_train_fsdp import RUN, launch, losses
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from alpaca_helpers.train.config import make_config
from alpaca_helpers.train.recipe import train

pytestmark = pytest.mark.slow

BF16_LOSS_TOL = 5e-3
BF16_WEIGHT_TOL = 5e-3
BF16 = ["--bf16", "true", "--val_set_size", "0"]  # after RUN: overrides its --bf16 false


@pytest.fixture(scope="module")
def runs(tmp_path_factory, default_model_dir):
    root = tmp_path_factory.mktemp("bf16")
    tiny = make_tiny_llama(root / "tiny", default_model_dir)
    sharded = root / "sharded"
    launch(tiny, sharded, *BF16)
    return tiny, root, sharded


def test_two_bf16_processes_match_one_bf16_process(runs):
    tiny, root, sharded = runs
    single = root / "single"
    args = dict(zip((RUN + BF16)[::2], (RUN + BF16)[1::2]))
    summary = train(make_config(model_name_or_path=str(tiny), output_dir=str(single),
                                **{k.lstrip("-"): v for k, v in args.items()}))
    assert summary["bf16"] and json.loads((sharded / "train_summary.json").read_text())["bf16"]
    one, two = losses(single), losses(sharded)
    assert len(one) == len(two) == 4 and two[-1] < two[0]
    assert max(abs(a - b) for a, b in zip(one, two)) < BF16_LOSS_TOL
    a, b = load_file(single / "model" / "model.safetensors"), load_file(sharded / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < BF16_WEIGHT_TOL


def test_bf16_keeps_fp32_master_weights_and_optimizer_state(runs):
    """The saved folder (save_dtype float32, the default) and the checkpoint's weights and AdamW moments
    are fp32 although the compute is bf16."""
    _, _, sharded = runs
    assert {t.dtype for t in load_file(sharded / "model" / "model.safetensors").values()} == {torch.float32}
    meta = FileSystemReader(str(sharded / "checkpoint-2" / "model_optim")).read_metadata().state_dict_metadata
    tensors = {k: v.properties.dtype for k, v in meta.items() if isinstance(v, TensorStorageMetadata)}
    moments = [k for k in tensors if k.endswith(("exp_avg", "exp_avg_sq"))]
    assert moments and len(tensors) > len(moments)  # weights and moments both there
    assert set(tensors.values()) == {torch.float32}


def test_bf16_checkpoint_resumes_to_the_same_weights(runs):
    tiny, root, sharded = runs
    resumed = root / "resumed"
    resumed.mkdir()
    shutil.copytree(sharded / "checkpoint-2", resumed / "checkpoint-2")
    proc = launch(tiny, resumed, *BF16, "--resume", "true")
    assert "resumed from" in proc.stdout + proc.stderr
    assert [json.loads(x)["step"] for x in (resumed / "train_log.jsonl").read_text().splitlines()] == [3, 4]
    assert losses(resumed) == pytest.approx(losses(sharded)[2:], abs=1e-6)
    a, b = load_file(sharded / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
