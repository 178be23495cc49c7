"""Stage 6 (notebook 06): teacher agreement and answer shape, the pairwise judge, and the blind rating widget."""
