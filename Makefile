# curvlab's set-up, training and checks. `make train` and `make test` work on a fresh clone:
# each creates .venv and installs what it needs first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.curvlab-installed
ARGS ?=

.PHONY: install train test test-slow test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install curvlab with its test extras

train: install  ## train the default experiment (MLP on digits), logging to ./mlflow.db
	$(BIN)/curvlab-train $(ARGS)

test: install  ## the default test suite (excludes tests marked slow)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: install  ## only the long tests (pytest's "no tests collected", exit 5, is a pass)
	$(BIN)/python -m pytest -m slow $(ARGS) || [ $$? -eq 5 ]

test-all: install  ## every test
	$(BIN)/python -m pytest $(ARGS)

lint: install  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove the virtual environment and local run outputs
	rm -rf $(VENV) outputs mlruns mlflow.db .pytest_cache .ruff_cache
