# The two commands of the README:
#   make course   run every notebook top to bottom on the embedded default model (outputs in runs/course)
#   make test     run the test suite (unit tests + papermill run of every notebook); .ci/run calls it
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: course test setup clean
course: setup
	$(PY) -m alpaca_helpers.course

test: setup
	$(PY) -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

clean:
	rm -rf runs
