"""`python -m alpaca_helpers.train` (and `accelerate launch -m alpaca_helpers.train`): see `recipe.main`."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before the tokenizers library starts its threads

from .launch import allocator_default  # noqa: E402

# Also for `accelerate launch -m alpaca_helpers.train` by hand: read when CUDA's allocator starts, after this.
os.environ.update(allocator_default(os.environ))

from .recipe import main  # noqa: E402

raise SystemExit(main())
