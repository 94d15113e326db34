# Two commands from a fresh clone:  `make demo` (solve a problem on the embedded CPU model)
# and `make test` (lint, type-check and run the whole test suite with a real redis-server).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROBLEM ?= What is 9+8?
# The demo is the smoke preset with room to finish: at the preset's β=96 most of SmolLM2's candidates
# are cut before they answer, at 256 most finish (docs/benchmarks.md, *The first run*).
DEMO_FLAGS ?= --budget 256
EXTRAS ?= local,dev,eval,triton
# llama.cpp builds with -march=native by default, which can emit instructions a virtual machine's
# CPU advertises but does not allow (AMX: the embedded server dies with SIGILL on its first
# request). Build a portable library instead: AVX2 on x86-64, the baseline elsewhere.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif

.PHONY: setup lock demo test test-latest checks system-deps lint typecheck redis-server ha-tools chromium bundled-envs deploy-validators clean

# The environment the demo and the tests run in is locked: requirements/lock.txt pins every package
# (every extra) with its hashes, compiled by uv from pyproject.toml's open ranges (`make lock`), and
# pip installs exactly that set (--no-deps, hash-checked), so a machine with other releases cached
# gets the versions the suite passed with. pip, not uv, installs: its wheel cache keeps the
# llama-cpp-python it compiled (6 minutes) keyed by the sdist's hash, where uv's revalidates the
# sdist over HTTP and, behind a proxy that answers with unusable 304s, compiles it again per venv.
LOCK := requirements/lock.txt

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q --disable-pip-version-check \
	  --no-deps --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(BIN)/.installed

# Refresh every lock: $(LOCK) (newest releases within pyproject.toml's ranges, resolved by uv from
# the dev extra), the bundled servers' and checkov's private environments (rebuilt from their
# unpinned steps and frozen: minutes, ~3 GB for vLLM), and the npm validators' package-lock.json.
lock: setup
	$(BIN)/uv pip compile --universal --python-version 3.11 --all-extras --generate-hashes --upgrade \
	  --custom-compile-command "make lock" pyproject.toml -o $(LOCK)
	$(MAKE) --no-print-directory setup
	$(BIN)/python -m mrsa.servers.env_locks --refresh
	$(BIN)/python -m tests.deploy_tools --relock

# The newest releases of every dependency (not the lock) in a venv of their own, through lint, types
# and the whole suite (less the check that the venv is the lock): an upgrade such as a newly typed
# redis is met on purpose, never by surprise.
LATEST_VENV ?= .venv-latest
test-latest: system-deps
	$(PYTHON) -m venv $(LATEST_VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(LATEST_VENV)/bin/python -m pip install -q --disable-pip-version-check \
	  --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"
	$(MAKE) --no-print-directory VENV=$(LATEST_VENV) \
	  PYTEST_ARGS="--deselect tests/deploy/test_locks.py::test_the_environment_holds_exactly_the_locked_versions" checks

demo: setup
	$(BIN)/mrsa solve --preset smoke $(DEMO_FLAGS) "$(PROBLEM)"

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# The Sentinel failover tests and the multi-host test (tests/deploy/test_netns_multihost.py): redis-sentinel
# and iproute2's `ip` (network namespaces), Debian packages, installed when missing.
ha-tools:
	@missing=""; \
	  command -v redis-sentinel >/dev/null || missing="$$missing redis-sentinel"; \
	  command -v ip >/dev/null || missing="$$missing iproute2"; \
	  [ -z "$$missing" ] || { \
	    echo "installing$$missing (Debian packages)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; }

# The console's browser tests drive Debian's Chromium (Playwright's own browser download needs the
# network); the fonts make the screenshots readable.
chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium and fonts (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium fonts-dejavu-core fonts-liberation >/dev/null; }

# lint-imports: the architecture contract of pyproject.toml's [tool.importlinter] (no module imports
# upward or across the layers of docs/architecture.md); --no-cache leaves no cache folder behind.
lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck:
	$(BIN)/mypy

# The bundled servers' private environments (under $MRSA_CACHE_DIR or ~/.cache/mrsa), built once
# before pytest so no test's timeout covers a first build; the test fixtures find them there.
# vLLM's (~3.4 GB, ~3 min) also dequantises the embedded model to a Hugging Face folder (~20 s).
bundled-envs:
	$(BIN)/python -m mrsa.servers.bundled_triton
	$(BIN)/python -m mrsa.servers.bundled_vllm

# The validators of deploy/ (tests/deploy/test_deploy_manifests.py), built once under the same cache:
# checkov in a private env (its pins clash with mrsa's) and the npm @kubernetes-models CRD
# validators (Node.js from Debian when it is missing). Reruns find them and take a second.
deploy-validators:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	$(BIN)/python -m tests.deploy_tools

system-deps: redis-server ha-tools chromium

# Everything after setup, on the venv $(VENV) (the locked one, or test-latest's).
checks: lint typecheck bundled-envs deploy-validators
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: setup system-deps checks

clean:
	rm -rf $(VENV) $(LATEST_VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
