"""`python -m alpaca_helpers.safety` (the same as `python -m alpaca_helpers.safety.redteam`): see `redteam.main`."""

from .redteam import main

raise SystemExit(main())
