"""Experiment tracking for training runs: TensorBoard and Weights & Biases, beside the JSONL log.

`train_log.jsonl` stays the source of truth; a tracker is a view of the same rows. Only rank 0 reports.
W&B honours its own environment (`WANDB_MODE=offline` writes a local run folder that `wandb sync` uploads
later; `WANDB_PROJECT` names the project, default `alpaca`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B puts its own `wandb/` folder inside the directory it is given
# Log-row keys reported as scalars, and their names in the trackers.
SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
           "tokens_per_s": "perf/tokens_per_s", "trained_tokens_per_s": "perf/trained_tokens_per_s",
           "peak_memory_gb": "perf/peak_memory_gb", "peak_reserved_gb": "perf/peak_reserved_gb", "mfu": "perf/mfu",
           "eval_loss": "eval/loss"}


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The tracked numbers of one log row, under their tracker names (absent and None values left out)."""
    return {name: float(row[key]) for key, name in SCALARS.items() if row.get(key) is not None}


class Tracker:
    """Reports log rows to the trackers named (`tensorboard`, `wandb`); does nothing without any."""

    def __init__(self, targets: list[str], output_dir: Path, config: dict[str, Any], run_name: str | None = None):
        self.writers: list[Any] = []
        self.wandb_run: Any = None
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))
            writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)
            self.writers.append(writer)
        if "wandb" in targets:
            import wandb

            self.wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", "alpaca"), dir=str(output_dir),
                                        name=run_name or output_dir.name, config=config, reinit="finish_previous")

    def log(self, row: dict[str, Any], step: int) -> None:
        """Report one row's scalars at `step`."""
        self.log_scalars(scalars(row), step)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Report scalars already under their tracker names (e.g. an ablation's `ablation/val_loss`) at `step`."""
        for writer in self.writers:
            for name, value in values.items():
                writer.add_scalar(name, value, step)
        if self.wandb_run is not None and values:
            self.wandb_run.log(values, step=step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
