"""Stage 7 · understanding what in the instruction data matters: controlled ablations (notebook 07)."""
