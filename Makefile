# tmsops: `make run` sets up and runs the main job; `make test` sets up and runs the whole suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GX_ANALYTICS_ENABLED := false
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install services run up train summary serve mlflow-ui test lint typecheck imports unit integration bench clean

help: ## list the commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv
	# torch 2.13.0 CPU build: pip finds it on local disk; uv would fetch a CUDA build
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/uv pip install -q --python $(PY) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install tmsops with its dependencies (idempotent)

services: ## (root, Debian/Ubuntu) install and configure PostgreSQL's extensions, Prometheus and Chromium
	bash scripts/local-services.sh

run: install train summary ## install, train (dvc repro, skipped when up to date), start the demo platform (tmsops up --demo)
	$(BIN)/tmsops up --demo

train: install ## run the retraining pipeline; stages whose inputs did not change are skipped
	$(BIN)/dvc repro

summary: install ## print the registered models and where to open the MLflow UI
	@$(PY) -m training.summary

up: install ## start the model server, the local fleet, the autoscaler, the optimizer and chaos; Ctrl-C stops them all
	$(BIN)/tmsops up

serve: install ## start the model server (BentoML) on http://127.0.0.1:3000; Ctrl-C stops it
	$(PY) -m serving

mlflow-ui: install ## start the MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

test: install lint typecheck imports ## install, then lint, type-check, check layers and run every test
	$(BIN)/pytest -q -n 2 --dist loadgroup tests/unit tests/integration
	# the end-to-end tests run live loops against the clock: alone, not beside a second worker
	$(BIN)/pytest -q tests/e2e

lint: install ## ruff
	$(BIN)/ruff check .

typecheck: install ## mypy
	$(BIN)/mypy tmsops training serving actuators chaos

imports: install ## the import contract of DESIGN.md
	$(BIN)/lint-imports

unit: install ## unit tests only
	$(BIN)/pytest -q tests/unit

integration: install ## integration tests only (real Prometheus, processes)
	$(BIN)/pytest -q tests/integration

bench: install ## the serving benchmark (needs a champion: make train)
	$(PY) bench/serving.py

clean: ## remove generated data, models, metrics and the MLflow store (keeps .venv)
	rm -rf data models metrics plots mlruns .dvc/cache .dvc/tmp dvc.lock
