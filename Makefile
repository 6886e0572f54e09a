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

.PHONY: help install demo repro test test-fast lint format ui bench bench-serve serve deploy schedule trigger pipeline sweep clean stack stack-down stack-status stack-deps

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
	@$(BIN)/python -m visionops.orchestrate.demo_summary

repro: $(STAMP) ## your images in data/<class>/: a new data version (dvc add data), then dvc repro
	@test -d data || { echo "no data/: put one folder per class under data/ (README: Your own images)"; exit 1; }
	$(BIN)/dvc add -q data
	$(BIN)/dvc repro

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

# Orchestration (docs/ORCHESTRATION.md). The local Prefect server keeps its database in .prefect/.
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
PREFECT_API ?= http://127.0.0.1:$(PREFECT_PORT)/api
PREFECT_UP = $(BIN)/python -c "import urllib.request as u; u.urlopen('$(PREFECT_API)/health', timeout=3)" 2>/dev/null

ui: $(STAMP) ## start the Prefect server + MLflow UI on 127.0.0.1 (Ctrl-C stops both)
	@mkdir -p .prefect mlruns
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (API $(PREFECT_API), database .prefect/)"
	@echo "MLflow UI:  http://127.0.0.1:$(MLFLOW_PORT)  (store sqlite:///mlruns/mlflow.db)"
	@echo "            MLflow 3 opens experiments on its GenAI pages: click 'Model training' at the top of its sidebar once (remembered), or add ?workflowType=machine_learning to an experiment's URL."
	@echo "Both answer within a minute. Then, in another terminal: make deploy (scheduled runs) or make pipeline (one run now)."
	@PREFECT_HOME=$(CURDIR)/.prefect $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) & p1=$$!; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 & p2=$$!; \
	trap 'trap - INT TERM EXIT; kill 0 2>/dev/null' INT TERM EXIT; wait $$p1 $$p2

deploy: $(STAMP) ## serve the flow as deployment training-pipeline/scheduled on schedule.cron (needs make ui)
	@$(PREFECT_UP) || { echo "no Prefect server at $(PREFECT_API): run 'make ui' first (or PREFECT_API=<url>)"; exit 1; }
	PREFECT_API_URL=$(PREFECT_API) VISIONOPS_MLFLOW_UI=http://127.0.0.1:$(MLFLOW_PORT) $(BIN)/python flows/serve_deployment.py

schedule: $(STAMP) ## list the deployment and its cron schedule on the Prefect server
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect deployment ls
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect deployment schedule ls training-pipeline/scheduled

DEPLOYMENT ?= training-pipeline/scheduled
trigger: $(STAMP) ## run the served deployment now (needs make deploy; ARGS="--param force=true --watch")
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect deployment run $(DEPLOYMENT) $(ARGS)

pipeline: $(STAMP) data/ ## run the Prefect flow once now (ARGS="--force --set train.head_epochs=1")
	@if $(PREFECT_UP); then export PREFECT_API_URL=$(PREFECT_API); \
	else echo "no Prefect server at $(PREFECT_API): using a temporary one (start make ui to keep the history)"; fi; \
	VISIONOPS_MLFLOW_UI=http://127.0.0.1:$(MLFLOW_PORT) $(BIN)/python flows/pipeline.py $(ARGS)

sweep: $(STAMP) ## queue the search in sweep.yaml on DVC's experiment queue (ARGS="--run -j 1" runs it; docs/ORCHESTRATION.md)
	$(BIN)/visionops sweep $(ARGS)

serve: $(STAMP) ## serve models:/visionops-classifier@champion on http://127.0.0.1:8000 (upload page at /)
	$(BIN)/visionops serve

BENCH_DATA ?= ../shared/datasets/clothing-small
bench: $(STAMP) ## measured benchmarks, recorded in docs/BENCHMARKS.md (BENCH_DATA=<dataset>)
	$(BIN)/python benchmarks/bench_train.py --data $(BENCH_DATA)/train --images 256

BENCH_MODEL ?= artifacts/export/model.onnx
bench-serve: $(STAMP) ## serving: 100 clients fp32 + int8, 1 client, hostile cases (BENCH_MODEL=<.onnx>)
	$(BIN)/python benchmarks/load_test.py --model $(BENCH_MODEL) --precision fp32
	$(BIN)/python benchmarks/load_test.py --model $(BENCH_MODEL) --precision int8
	$(BIN)/python benchmarks/load_test.py --model $(BENCH_MODEL) --precision int8 --clients 1 --seconds 20
	$(BIN)/python benchmarks/hostile.py --model $(BENCH_MODEL) --precision int8

# The team topology on 127.0.0.1 (docs/DEPLOY.md): PostgreSQL, MLflow and Prefect servers, work
# pools `visionops` (2 workers) and `visionops-gpu` (train), data in .stack/. STACK_ARGS="--dvc-remote NAME".
stack-deps: ## install Debian's postgresql + openssh-server when absent (root + apt-get)
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && test -x /usr/sbin/sshd; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql openssh-server >/dev/null; \
	else echo "warning: install postgresql (and openssh-server for the SSH remote test): sudo apt-get install -y postgresql openssh-server" >&2; fi

stack: $(STAMP) stack-deps ## start the stack (PostgreSQL, MLflow, Prefect, workers) in .stack/; prints the URLs
	$(BIN)/visionops stack up $(STACK_ARGS)

stack-status: $(STAMP) ## every stack URL and process, and whether it answers
	$(BIN)/visionops stack status

stack-down: $(STAMP) ## stop exactly what `make stack` started
	$(BIN)/visionops stack down

clean: ## remove artifacts/ and caches (never data/ or mlruns/)
	rm -rf artifacts .cache .pytest_cache .ruff_cache
