# Two commands from a fresh clone:  `make demo` (solve a problem on the embedded CPU model)
# and `make test` (lint, type-check and run the whole test suite with a real redis-server).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROBLEM ?= What is 7*6?
EXTRAS ?= local,dev,eval,triton

.PHONY: setup demo test lint typecheck redis-server clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/mrsa solve --preset smoke "$(PROBLEM)"

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: setup redis-server lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
