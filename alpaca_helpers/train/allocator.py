"""The CUDA caching allocator's setting every training process starts with (standard library only: the GPU proof and
`python -m alpaca_helpers.train` apply it before anything imports torch, and before the GPU proof's import check)."""

from __future__ import annotations

from collections.abc import Mapping

# group_by_length gives every micro-batch a new shape, so CUDA's caching allocator keeps carving blocks of new
# sizes out of its segments: memory reserved but unused grows (fragmentation) until an OOM that
# max_memory_allocated does not foresee. Expandable segments grow one mapping instead of adding fixed-size
# segments; torchtitan's run_train.sh sets the same. torch 2.13 reads both names (the older one first for CUDA).
ALLOCATOR_SETTING = "expandable_segments:True"
ALLOCATOR_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def allocator_default(env: Mapping[str, str]) -> dict[str, str]:
    """`{"PYTORCH_ALLOC_CONF": "expandable_segments:True"}`, or nothing where `env` already has an allocator
    setting under either name (the user's, kept as it is)."""
    return {} if any(name in env for name in ALLOCATOR_VARIABLES) else {"PYTORCH_ALLOC_CONF": ALLOCATOR_SETTING}
