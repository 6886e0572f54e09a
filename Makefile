# VisionOps — `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := sample/clothing-mini
export PATH := $(BIN):$(PATH)
# Offline hygiene: no analytics, no update checks, nothing phones home.
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: help install demo test test-fast lint format ui bench serve deploy clean

help: ## list the targets
	@echo "VisionOps — fresh machine: 'make demo' then 'make test'."
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (+ dev tools)

data/: | $(STAMP)
	@echo "data/ is absent: copying the bundled sample ($(SAMPLE), CC0) into data/"
	cp -r $(SAMPLE) data
	$(BIN)/dvc add -q data

demo: $(STAMP) data/ ## set up and run the whole pipeline (dvc repro) on the bundled sample
	$(BIN)/dvc repro
	@$(BIN)/python -m visionops.demo_summary

test: $(STAMP) ## set up and run the test suite
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## unit + data tests only
	$(BIN)/python -m pytest -q -m "unit or data"

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check src flows tests benchmarks tools
	$(BIN)/ruff format --check src flows tests benchmarks tools

format: $(STAMP) ## ruff format + autofix
	$(BIN)/ruff format src flows tests benchmarks tools
	$(BIN)/ruff check --fix src flows tests benchmarks tools

clean: ## remove artifacts/ and caches (never data/ or mlruns/)
	rm -rf artifacts .cache .pytest_cache .ruff_cache
