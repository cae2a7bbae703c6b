# curvlab's set-up, training and checks. `make train` and `make test` work on a fresh clone:
# each creates .venv and installs what it needs first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.curvlab-installed
# checkov pins versions that clash with curvlab's, so it gets a virtual environment of its own.
OPS_VENV := .venv-ops
CHECKOV := $(OPS_VENV)/bin/checkov
ARGS ?=

.PHONY: install system-packages train test test-slow test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

$(CHECKOV):
	test -x $(OPS_VENV)/bin/python || $(PYTHON) -m venv $(OPS_VENV)
	$(OPS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check checkov==3.3.30

# Tools the tests call that are not Python packages: docker-compose validates the compose file;
# iproute2 and unshare build the simulated pods; PostgreSQL backs the loopback MLflow server;
# a C compiler builds LAMB's CPU kernel.
system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	  command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	  command -v ip >/dev/null || missing="$$missing iproute2"; \
	  command -v unshare >/dev/null || missing="$$missing util-linux"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	else \
	  echo "not root or no apt-get: tests that need docker-compose or iproute2 will skip"; \
	fi

install: $(STAMP)  ## create .venv and install curvlab with its test extras

train: install  ## train the default experiment (MLP on digits), logging to ./mlflow.db
	$(BIN)/curvlab-train $(ARGS)

test: install $(CHECKOV) system-packages  ## the default test suite (excludes tests marked slow)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: install $(CHECKOV) system-packages  ## only the long tests (pytest's "no tests collected", exit 5, is a pass)
	$(BIN)/python -m pytest -m slow $(ARGS) || [ $$? -eq 5 ]

test-all: install $(CHECKOV) system-packages  ## every test
	$(BIN)/python -m pytest $(ARGS)

lint: install  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove the virtual environment and local run outputs
	rm -rf $(VENV) $(OPS_VENV) outputs mlruns mlflow.db .pytest_cache .ruff_cache
