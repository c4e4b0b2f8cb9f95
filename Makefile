# One entry point for people and CI. `make test` is exactly what CI runs (.ci/run).
# Works on a machine with only python3: uv is bootstrapped into .tools/ when it is not on PATH.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --locked
# uv trusts the system certificate store (works behind TLS-inspecting proxies and on a bare machine).
export UV_SYSTEM_CERTS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: help setup lint types test demo stop bench mlflow-ui clean

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

setup: $(if $(findstring .tools,$(UV)),$(UV)) ## Install uv if missing and sync the locked environment
	$(UV) sync --locked

lint: setup ## ruff (lint + format check) and import contracts
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) lint-imports

types: setup ## mypy, strict on the packages
	$(RUN) mypy

test: lint types ## Every check: lint, types, tests
	$(RUN) pytest

demo: setup ## End to end on a synthetic store: data → train → MLflow → publish → serve → a real request
	$(RUN) bash scripts/demo.sh

stop: setup ## Stop the demo's background service and the embedded Redis
	$(RUN) tailor stop

bench: setup ## Benchmarks; writes benchmarks/RESULTS.md
	$(RUN) python -m benchmarks.run

mlflow-ui: setup ## MLflow UI on the local store (http://127.0.0.1:5000)
	$(RUN) tailor mlflow-ui

clean: ## Remove local state (.tailor) and caches
	rm -rf .tailor .mypy_cache .ruff_cache
