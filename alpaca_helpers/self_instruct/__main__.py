"""`python -m alpaca_helpers.self_instruct`: see `pipeline.main`."""

from .pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
