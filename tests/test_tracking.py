"""Experiment tracking: a real run reports to TensorBoard and to W&B (offline), read back from their files."""

from __future__ import annotations

import json
import struct

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import make_tiny_llama
from wandb.proto import wandb_internal_pb2

from alpaca_helpers.train.config import make_config
from alpaca_helpers.train.recipe import train


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, default_model_dir):
    root = tmp_path_factory.mktemp("tracked")
    tiny = make_tiny_llama(root / "tiny", default_model_dir)
    out = root / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")  # W&B's own offline mode: a local run folder, nothing sent
    mp.setenv("WANDB_SILENT", "true")
    try:
        train(make_config(model_name_or_path=str(tiny), output_dir=str(out), max_examples=24, val_set_size=4,
                          global_batch_size=4, per_device_train_batch_size=2, max_steps=3, eval_steps=2,
                          model_max_length=256, report_to="tensorboard,wandb"))
    finally:
        mp.undo()
    return out


def test_tensorboard_event_files_hold_every_step_and_the_config(tracked_run):
    events = EventAccumulator(str(tracked_run / "tensorboard")).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/peak_memory_gb",
            "eval/loss"} <= set(tags["scalars"])
    log = [json.loads(line) for line in (tracked_run / "train_log.jsonl").read_text().splitlines()]
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert loss == pytest.approx({row["step"]: row["loss"] for row in log}, rel=1e-6)
    evals = {e.step: e.value for e in events.Scalars("eval/loss")}
    assert set(evals) == {0, 2, 3}  # before training, eval_steps, the run's end
    assert evals[3] == pytest.approx(log[-1]["eval_loss"], rel=1e-6)
    assert "config/text_summary" in tags["tensors"]


def wandb_records(path) -> list[bytes]:
    """The protobuf records of a `.wandb` file. This wandb (0.31) writes it from its Go core and ships no
    Python reader: a 7-byte header (`:W&B`, magic, version), then LevelDB's log format, 32 KiB blocks of
    records with a 7-byte header (CRC-32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data, pos, records, pending = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def test_wandb_offline_run_folder_holds_the_history(tracked_run):
    runs = list((tracked_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history, config = [], {}
    for data in wandb_records(runs[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "run":  # the run's config, once
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    log = [json.loads(line) for line in (tracked_run / "train_log.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([row["loss"] for row in log], rel=1e-6)
    assert sum("eval/loss" in h for h in history) == 3
    assert config["max_steps"] == 3 and config["report_to"] == "tensorboard,wandb"
