"""`python -m alpaca_helpers.train` (and `accelerate launch -m alpaca_helpers.train`): see `recipe.main`."""

from .recipe import main

raise SystemExit(main())
