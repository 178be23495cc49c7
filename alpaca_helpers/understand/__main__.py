"""`python -m alpaca_helpers.understand` (the same as `python -m alpaca_helpers.understand.ablate`): see
`ablate.main`."""

from .ablate import main

if __name__ == "__main__":
    raise SystemExit(main())
