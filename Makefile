# pgmigrate-ops: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
BIN         := $(VENV)/bin
STATE       := .state
PG_DIR      := $(STATE)/pg
# The port the cluster was created or last started on (.state/pg/cluster.json), else 18432;
# `make demo PG_PORT=N` starts it on N, and the local inventory reads the port from there.
PG_PORT     ?= $(or $(shell sed -n 's/.*"port": *\([0-9][0-9]*\).*/\1/p' $(PG_DIR)/cluster.json 2>/dev/null),18432)
DB_NAME     := football_prediction
DB_OWNER    := football
VERSION     ?= 2.0.0
PREDICTIONS ?= 100000
APP         := examples/football_prediction
PYTEST_ARGS ?=
# pytest-xdist workers (each starts its own PostgreSQL cluster; a file's tests stay on one worker,
# --dist loadfile: xdist_group marks are ignored under pytest 9.2); 1 runs the suite in one process.
TEST_WORKERS ?= auto
# Extra ansible-playbook arguments of `make demo` (e.g. DEMO_ARGS='-e rehearse=full').
DEMO_ARGS   ?=

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help bootstrap up demo down clean test test-py test-molecule lint bench

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

bootstrap:  ## Install the control node's venv (Python >= 3.12) and PostgreSQL if missing
	@bash scripts/bootstrap.sh --services

up: bootstrap  ## Start the embedded default: PostgreSQL on 127.0.0.1:$(PG_PORT), the 1.0.0 reference database
	@bash scripts/state-dir.sh >/dev/null
	@$(BIN)/python tools/pgcluster.py start --dir $(PG_DIR) --port $(PG_PORT) --db $(DB_NAME) --owner $(DB_OWNER)
	@bash scripts/reference-db.sh $(PG_PORT) $(DB_NAME) $(DB_OWNER) $(PREDICTIONS)
	@bash scripts/services.sh start

demo: up  ## Run the whole runbook on the embedded default: migrate.yml -e version=$(VERSION)
	$(BIN)/ansible-playbook migrate.yml -e version=$(VERSION) $(DEMO_ARGS)

down:  ## Stop everything the demo started (the data stays in .state/)
	@-bash scripts/services.sh stop 2>/dev/null || true
	@$(BIN)/python tools/pgcluster.py stop --dir $(PG_DIR) 2>/dev/null || python3 tools/pgcluster.py stop --dir $(PG_DIR)

clean: down  ## Stop everything and remove the local state (database, backups, logs)
	@# .state may link to a directory outside the checkout (scripts/state-dir.sh): remove both.
	@if [[ -L $(STATE) ]]; then rm -rf "$$(readlink -f $(STATE))"; fi
	rm -rf $(STATE) .ansible reports/*/

test: bootstrap  ## Run the whole test suite (pytest against a real PostgreSQL, Molecule, lint); CI runs this
	@mkdir -p $(STATE)/logs
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --junitxml=$(STATE)/logs/pytest.xml $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-molecule
	$(MAKE) --no-print-directory lint

test-molecule:  ## Run every Molecule scenario
	@bash scripts/molecule-all.sh

lint:  ## ansible-lint (production profile), yamllint, ruff, ansible-doc for every module
	$(BIN)/ansible-lint --profile production --offline -q
	$(BIN)/yamllint -s .
	$(BIN)/ruff check .
	@for m in library/*.py; do n=$$(basename $$m .py); $(BIN)/ansible-doc -M library $$n >/dev/null || { echo "ansible-doc failed for $$n"; exit 1; }; done; echo "ansible-doc: every module renders"

bench:  ## Backfill benchmark (1M rows: runbook loop vs one UPDATE vs pg_batch_update, under pgbench load) -> benchmarks/results/latest.json
	$(BIN)/python benchmarks/bench_backfill.py $(BENCH_ARGS)

.PHONY: bench-backup
bench-backup:  ## Backup benchmark (1M predictions: pg_backup + pg_backup_verify vs plain pg_dump -Fc) -> benchmarks/results/backup_latest.json
	$(BIN)/python benchmarks/backup_bench.py $(BENCH_ARGS)

.PHONY: bench-switch
bench-switch:  ## Blue-green switch benchmark (switch time, p50/p99 through nginx before/during/after) -> benchmarks/results/switch_latest.json
	$(BIN)/python benchmarks/bench_switch.py $(BENCH_ARGS)

.PHONY: bench-fleet
bench-fleet:  ## Fleet benchmark (6 databases on 2 clusters: fleet.yml wall time, forks 1 vs forks N) -> benchmarks/results/fleet_latest.json
	$(BIN)/python benchmarks/bench_fleet.py $(BENCH_ARGS)
