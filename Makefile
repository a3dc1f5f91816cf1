# Two commands on a fresh machine: `make run` (the pipeline) and `make test` (the fast tests;
# `make test-all` runs every test, as CI does).
# Each sets up .venv first if needed. `make help` lists every target.

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= local
EXPERIMENT ?= hf-finetune-pipeline
UI_PORT ?= 5000
# torch goes in first, so the project's `torch>=2.4` is already met and pip never pulls a
# multi-GB CUDA build on a CPU machine. On a CUDA box: make setup TORCH_SPEC=torch TORCH_PIP_ARGS=
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# pytest-xdist workers for tests/unit, each test file whole in one worker. tests/e2e runs in one
# process: its tests train on both cores already, and a second worker would build the session's
# smoke pipeline twice.
TEST_WORKERS ?= 2
BIN := $(CURDIR)/$(VENV)/bin
# `mlflow run --env-manager local` starts `python -m steps.<name>` from PATH: make it this venv's.
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE ?= 1

.PHONY: help setup run test test-all lint format mlproject ui server clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv: torch (CPU build) first, then the project and dev tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

run: setup ## run the whole pipeline offline on the embedded default (PROFILE=local)
	$(BIN)/mlflow run . --env-manager local --experiment-name $(EXPERIMENT) -P profile=$(PROFILE)

test: setup lint ## lint, type-check and run every test that trains nothing (tests/unit)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests/unit

test-all: setup lint ## lint, type-check and run every test, whole pipelines included (what CI runs)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests/unit
	$(BIN)/python -m pytest tests/e2e

lint: setup ## ruff and mypy
	$(BIN)/ruff check steps hf_finetune tests data benchmarks deploy
	$(BIN)/ruff format --check steps hf_finetune tests data benchmarks deploy
	$(BIN)/mypy

format: setup ## rewrite the code in the project's format
	$(BIN)/ruff format steps hf_finetune tests data benchmarks deploy
	$(BIN)/ruff check --fix steps hf_finetune tests data benchmarks deploy

mlproject: setup ## write MLproject and deploy/kubernetes/MLproject from the settings in hf_finetune/
	$(BIN)/python -m hf_finetune.mlproject

ui: setup ## browse the local tracking store: prints where the runs, the report and the champion are
	@MLFLOW_TRACKING_URI=sqlite:///mlflow.db $(BIN)/python -m hf_finetune.ui --port $(UI_PORT) --experiment $(EXPERIMENT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port $(UI_PORT)

server: setup ## a shared tracking server with basic-auth on :5000 (see docs/deploy.md)
	$(BIN)/python -m deploy.server init
	$(BIN)/python -m deploy.server start

clean: ## remove the local tracking store and caches (keeps .venv)
	rm -rf mlflow.db mlruns .pytest_cache .mypy_cache .ruff_cache
