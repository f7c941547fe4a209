# ocikit: two commands on a fresh Debian machine — `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test-deps serve test lint typecheck unit bench clean

# The virtualenv and the CLI at .venv/bin/ocikit, rebuilt when pyproject.toml changes.
$(BIN)/ocikit: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

install: $(BIN)/ocikit

serve: install
	$(BIN)/ocikit serve

# System packages the tests drive (only when missing, only as root) and Python test tools.
test-deps: install
	bash scripts/install-system-deps.sh
	$(BIN)/python -m pip install -q -e '.[test]'

lint: test-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: test-deps
	$(BIN)/mypy --strict src

unit: test-deps
	$(BIN)/pytest

test: lint typecheck unit

bench: test-deps
	$(BIN)/python bench/registry.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
