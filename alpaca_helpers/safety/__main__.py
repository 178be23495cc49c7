"""`python -m alpaca_helpers.safety` (the same as `python -m alpaca_helpers.safety.redteam`): see `redteam.main`."""

from .redteam import main

if __name__ == "__main__":
    raise SystemExit(main())
