# Two commands from a fresh clone:  `make demo` (solve a problem on the embedded CPU model)
# and `make test` (lint, type-check and run the whole test suite with a real redis-server).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROBLEM ?= What is 7*6?
EXTRAS ?= local,dev,eval,triton
# llama.cpp builds with -march=native by default, which can emit instructions a virtual machine's
# CPU advertises but does not allow (AMX: the embedded server dies with SIGILL on its first
# request). Build a portable library instead: AVX2 on x86-64, the baseline elsewhere.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif

.PHONY: setup demo test lint typecheck redis-server ha-tools chromium bundled-envs deploy-validators clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/mrsa solve --preset smoke "$(PROBLEM)"

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# The Sentinel failover tests and the multi-host test (tests/test_netns_multihost.py): redis-sentinel
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

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# The bundled servers' private environments (under $MRSA_CACHE_DIR or ~/.cache/mrsa), built once
# before pytest so no test's timeout covers a first build; the test fixtures find them there.
# vLLM's (~3.4 GB, ~3 min) also dequantises the embedded model to a Hugging Face folder (~20 s).
bundled-envs: setup
	$(BIN)/python -m mrsa.backends.bundled_triton
	$(BIN)/python -m mrsa.backends.bundled_vllm

# The validators of deploy/ (tests/test_deploy_manifests.py), built once under the same cache:
# checkov in a private env (its pins clash with mrsa's) and the npm @kubernetes-models CRD
# validators (Node.js from Debian when it is missing). Reruns find them and take a second.
deploy-validators: setup
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	$(BIN)/python -m tests.deploy_tools

test: setup redis-server ha-tools chromium lint typecheck bundled-envs deploy-validators
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
