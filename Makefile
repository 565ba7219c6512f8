# headrace's front door. `make help` lists the targets.
#
# Everything installs into the project: a virtualenv in .venv/ and the local
# stack's services under .headrace/ (both ignored by git). Downloads are cached
# by the tools themselves (pip, Maven's ~/.m2, Go's module and build caches),
# so a fresh clone on a machine that ran this before is quick.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HEADRACE := $(BIN)/headrace
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install stack-up stack-down stack-status demo test test-unit test-integration \
        check fmt clean distclean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP) ## Create .venv and install headrace with its pinned dependencies

stack-up: install ## Install (if missing) and start Kafka, the registry, MinIO, PostgreSQL and Prometheus
	$(HEADRACE) stack up

stack-down: install ## Stop the local stack (its data stays in .headrace/)
	$(HEADRACE) stack down

stack-status: install ## Show the local stack's services and their health
	$(HEADRACE) stack status

demo: stack-up ## Run the end-to-end demo: this repository ingested, archived, loaded, cached and verified
	$(HEADRACE) stack smoke
	$(HEADRACE) ingest . --project headrace --inline-limit 16384
	$(HEADRACE) consume archive --until-caught-up
	$(HEADRACE) archive verify
	$(HEADRACE) consume load --until-caught-up
	$(HEADRACE) db stats
	$(HEADRACE) consume cache --until-caught-up
	$(HEADRACE) cache stats
	$(HEADRACE) consume verify --until-caught-up
	$(HEADRACE) verify run --project headrace --latest

test: stack-up ## Run the whole test suite (unit and integration) against the local stack
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## Run the unit tests only (no services needed)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: stack-up ## Run the integration tests against the local stack
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

check: install ## Lint, format check and type check (ruff, mypy)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install ## Format the code and fix what ruff can fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## Remove caches and build leftovers (keeps .venv and the stack)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info

distclean: clean ## Stop the stack and remove .venv and .headrace/ entirely
	-test -x $(HEADRACE) && $(HEADRACE) stack down
	rm -rf $(VENV) .headrace
