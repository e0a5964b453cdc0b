# funnelwatch: `make demo` (pipeline on demo data), `make test`, `make dev` (Dagster UI).
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
RUN := $(UV) run --frozen

# Where things live (absolute, so Dagster, dbt and the CLI agree). Override on the command line.
export FUNNELWATCH_LANDING ?= $(CURDIR)/data/landing
export FUNNELWATCH_WAREHOUSE ?= $(CURDIR)/warehouse/funnelwatch.duckdb
export FUNNELWATCH_PUBLISH_DIR ?= $(CURDIR)/warehouse/published
export FUNNELWATCH_FEEDBACK_DIR ?= $(CURDIR)/data/feedback
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
# Unset -> ingest uses a clearly named DEMO key and says so. Set a real secret in production.
# export FUNNELWATCH_PSEUDONYMIZATION_KEY=...

DEMO_DAYS ?= 14
DEMO_SESSIONS_PER_HOUR ?= 1500
PYTEST_ARGS ?=
# Slow tests (marked `slow`) run in CI (CI=true) and with `make test-all`.
PYTEST_MARK := $(if $(CI),,-m "not slow")

.PHONY: help setup manifest demo dev test test-all bench evaluate clean docs

help:
	@echo "make demo      set up, simulate $(DEMO_DAYS) days, run the pipeline headless, print a summary"
	@echo "make test      set up and run the test suite (slow tests too when CI=true)"
	@echo "make test-all  the whole suite, slow tests included (CI)"
	@echo "make dev       the Dagster UI on the demo warehouse"
	@echo "make bench     the ingest benchmark"
	@echo "make evaluate  simulator scenarios through the pipeline -> docs/evaluation.md (~1 h; --rescore ~12 min)"

setup: .venv/.synced
.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.5"
	$(UV) sync --frozen
	@touch $@

manifest: setup
	cd dbt_project && ../.venv/bin/dbt parse --quiet --profiles-dir . --project-dir .

demo: manifest
	$(RUN) funnelwatch simulate --days $(DEMO_DAYS) --sessions-per-hour $(DEMO_SESSIONS_PER_HOUR)
	$(RUN) funnelwatch run
	$(RUN) funnelwatch summary

# `dg dev` finds the code location from [tool.dg] in pyproject.toml (workspace.yaml stays for
# `dagster dev -w workspace.yaml`). DEV_ARGS="--port 3001" etc. go to dg dev.
DEV_ARGS ?=
dev: manifest
	$(RUN) dg dev $(DEV_ARGS)

test: manifest
	$(RUN) pytest $(PYTEST_MARK) $(PYTEST_ARGS)

test-all: manifest
	$(RUN) pytest $(PYTEST_ARGS)

bench: manifest
	$(RUN) python bench/ingest.py

# Every run of the suite in its own folder under evaluation_runs/ (reused when finished;
# EVALUATE_ARGS=--rescore re-runs only detection over them).
EVALUATE_SUITE ?= default
EVALUATE_ARGS ?=
evaluate: manifest
	$(RUN) funnelwatch evaluate --suite $(EVALUATE_SUITE) --out evaluation_runs $(EVALUATE_ARGS)

docs: setup
	$(RUN) funnelwatch contract > docs/event_contract.md

clean:
	rm -rf data warehouse evaluation_runs dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs dbt_project/target
