# Two commands for a newcomer: `make run` and `make test`. Both set up .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CODE   := gateway tests benchmarks

.PHONY: run test lint typecheck unit bench install clean clean-data lock

# Installs exactly what requirements-dev.lock pins (`make lock` refreshes it).
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

## Re-pin requirements.lock (runtime) and requirements-dev.lock (+ tests and
## linters) to the newest releases pyproject.toml admits; review, test, commit.
lock:
	$(BIN)/pip install --quiet "pip-tools~=7.5"
	$(BIN)/pip-compile --quiet --upgrade --strip-extras --no-emit-index-url --no-emit-find-links \
	  -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --upgrade --strip-extras --no-emit-index-url --no-emit-find-links \
	  --extra dev -o requirements-dev.lock pyproject.toml

install: $(STAMP)

## Start the gateway on an embedded Postgres (./var/pg) with a demo account.
run: $(STAMP)
	$(BIN)/gateway serve --seed-demo

## The whole suite (starts its own Postgres) plus ruff and mypy --strict.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

## Benchmarks: each prints a `result:` line (see README.md, "Benchmarks").
bench: $(STAMP)
	$(BIN)/python benchmarks/index_load.py
	$(BIN)/python benchmarks/routing.py
	$(BIN)/python benchmarks/lead_import.py

## Build and tool caches only: var/ (the embedded database and the durable outbox) stays.
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info

## Deletes var/: the embedded database and any outbox entries not yet applied.
clean-data:
	@echo "clean-data deletes var/ (embedded Postgres and the outbox): texts and call records"
	@echo "acknowledged while the database was away and not yet applied are lost."
	@printf "Type yes to go on: "; read answer; [ "$$answer" = yes ]
	rm -rf var
