"""`python -m alpaca_helpers.train` (and `accelerate launch -m alpaca_helpers.train`): see `recipe.main`."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before the tokenizers library starts its threads

from .recipe import main  # noqa: E402

raise SystemExit(main())
