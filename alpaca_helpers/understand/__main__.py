"""`python -m alpaca_helpers.understand` (the same as `python -m alpaca_helpers.understand.ablate`): see
`ablate.main`."""

from .ablate import main

raise SystemExit(main())
