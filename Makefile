# Local development and the Docker stack. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NUM_WORKERS ?= 2
PORT ?= 8080
GATEWAY_URL ?= http://127.0.0.1:$(PORT)

.DEFAULT_GOAL := help
.PHONY: help install run test train smoke lint bench

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[worker,dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install the project with the CPU worker and dev tools

run: install ## Start gateway + NUM_WORKERS workers (+ sidecars) locally on PORT, in the foreground
	$(PY) -m launcher --workers $(NUM_WORKERS) --port $(PORT)

test: install ## Run the whole test suite
	$(PY) -m pytest

train: install ## Fit the default model with NUTS and write worker/artifacts/posterior.npz
	$(PY) -m worker.train

smoke: ## Curl a running stack (GATEWAY_URL, default http://127.0.0.1:8080)
	@GATEWAY_URL=$(GATEWAY_URL) bash scripts/smoke.sh

bench: install ## Benchmark the stack (writes bench/results/, docs/benchmarks.md, a PNG plot)
	$(PY) -m bench $(BENCH_ARGS)

lint: install ## Ruff over the code
	$(VENV)/bin/ruff check gateway worker jobs launcher bench tests
