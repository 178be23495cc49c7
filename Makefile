# The two commands of the README:
#   make course   run every notebook top to bottom on the embedded default model (outputs in runs/course)
#   make test     run the test suite (unit tests + papermill run of every notebook); .ci/run calls it
# and one for contributors:
#   make lint     ruff (configured in pyproject.toml); .ci/run calls it before the tests
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: course test lint setup clean
course: setup
	$(PY) -m alpaca_helpers.course

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

clean:
	rm -rf runs
