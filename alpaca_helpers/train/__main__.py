"""`python -m alpaca_helpers.train` (and `accelerate launch -m alpaca_helpers.train`): see `recipe.main`."""

import os

from .allocator import allocator_default
from .recipe import main

# Both read later, inside `main` (no package module imports torch or tokenizers at the top): tokenizers' setting
# before the library starts its threads; the allocator's (also for `accelerate launch -m alpaca_helpers.train` by
# hand) when CUDA's allocator starts.
if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.update(allocator_default(os.environ))
    raise SystemExit(main())
