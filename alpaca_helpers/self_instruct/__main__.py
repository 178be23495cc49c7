"""`python -m alpaca_helpers.self_instruct`: see `pipeline.main`."""

from .pipeline import main

raise SystemExit(main())
