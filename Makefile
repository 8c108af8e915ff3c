# Two entry points that work on a fresh machine with Python 3.11 and make:
#   make demo   - set up .venv, then run the whole pipeline on the synthetic demo archive
#   make test   - set up .venv, then lint, type-check and run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlcast-pipes demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check mlcast_pipes tests
	$(BIN)/ruff format --check mlcast_pipes tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/mlcast-pipes bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
