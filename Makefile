# Two commands matter: `make dev` and `make test`. Both install what is missing first
# (Debian packages as root, then a .venv), so they work on a fresh Debian 12 machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_BIN := /usr/lib/postgresql/15/bin
PG_LIB := /usr/lib/postgresql/15/lib
APT_PACKAGES := postgresql-15 postgresql-15-cron postgresql-plpython3-15 python3-venv

.PHONY: test lint typecheck pytest torture bench bench-quick system-deps browser-deps venv clean schema-snapshot

test: system-deps venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# Two worker processes, each with its own PostgreSQL cluster; a module's tests stay on one
# (--dist loadfile: its module fixtures are made once). PYTEST_WORKERS=0 runs in one.
PYTEST_WORKERS ?= 2
pytest: system-deps browser-deps venv
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# The reliability tests at full size (bounded, loopback only), with a summary table.
torture: system-deps venv
	IMAGEGEN_TORTURE=full $(BIN)/pytest -q -m torture

# Benchmarks (bench/): each script prints its table and writes bench/results/<name>.json
# (the quick mode <name>.quick.json, git-ignored).
# The whole set takes under 15 minutes on 2 cores; the quick mode a few seconds each.
bench: system-deps venv
	$(BIN)/python -m bench.run_all

bench-quick: system-deps venv
	$(BIN)/python -m bench.run_all --quick

# After adding a migration: rewrite tests/schema_snapshot.sql (pg_dump of a migrated
# database) and commit it with the migration; tests/sql/test_schema_snapshot.py compares them.
schema-snapshot: system-deps venv
	$(BIN)/python -m tests.support.schema_snapshot

# Installs the Debian packages only when one of their files is missing.
system-deps:
	@if [ ! -x $(PG_BIN)/initdb ] || [ ! -f $(PG_LIB)/pg_cron.so ] \
	    || [ ! -f $(PG_LIB)/plpython3.so ] || ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	    echo "==> installing Debian packages: $(APT_PACKAGES)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

# The tests' browser only (make dev needs none): the monitor page's browser test
# (tests/integration/test_dashboard.py) drives Debian's /usr/bin/chromium.
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	    echo "==> installing Debian packages: chromium"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
	fi

# Two stamps: the service's own dependencies (make dev), and those plus the test and
# benchmark tools (make test). Either is redone when pyproject.toml changes.
RUN_STAMP := $(VENV)/.installed-run
venv: $(STAMP)

$(VENV)/bin/python:
	@echo "==> creating $(VENV) (Python virtual environment)"
	$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	@echo "==> installing imagegen and what it needs to run (about a minute the first time)"
	$(BIN)/pip install --progress-bar off -e .
	touch $(RUN_STAMP)

# One venv for tests and benchmarks: the smoke test runs the benchmarks' quick mode.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	@echo "==> installing imagegen with its test and benchmark tools (a few minutes the first time)"
	$(BIN)/pip install --progress-bar off -e '.[dev,bench]'
	touch $(STAMP) $(RUN_STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

.PHONY: dev
# The embedded default: PostgreSQL + pg_cron for .local/, the service on 127.0.0.1:8000
# (PORT=N make dev for another port).
dev: system-deps $(RUN_STAMP)
	$(BIN)/imagegen dev
