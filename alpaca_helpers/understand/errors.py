"""The one error of an ablation that cannot run."""

from __future__ import annotations


class AblationError(ValueError):
    """A specification that cannot run; the message (one line) says what to change. Raised before training."""
