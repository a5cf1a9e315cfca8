"""Verify the plan role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import os

import pytest

PORT = 55501


def psql(host, query: str) -> str:
    state = f"/tmp/pgmigrate-molecule-{os.environ['MOLECULE_SCENARIO_NAME']}"
    # testinfra quotes every argument; the password stays in a file and the environment.
    cmd = host.run(
        "PGPASSWORD=$(cat %s) psql -X -At -h 127.0.0.1 -p %s -U football -d football_prediction -c %s",
        f"{state}/secrets/football.password", str(PORT), query)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


@pytest.mark.parametrize("table", ["runs", "lock"])
def test_ledger_tables_exist(host, table):
    assert psql(host, f"SELECT to_regclass('migration_ops.{table}') IS NOT NULL") == "t"


def test_both_converges_opened_and_closed_a_run(host):
    rows = psql(host, "SELECT kind || ':' || version || ':' || status FROM migration_ops.runs ORDER BY id")
    assert rows.splitlines() == ["migrate:2.0.0:succeeded", "migrate:2.0.0:succeeded"]
    assert psql(host, "SELECT count(*) FROM migration_ops.lock") == "0"


def test_plan_phase_recorded_with_estimate(host):
    backfills = psql(host, "SELECT phases->'plan'->'facts'->'backfills'->0->>'name' FROM migration_ops.runs LIMIT 1")
    assert backfills == "predictions_accuracy"


def test_application_schema_untouched(host):
    assert psql(host, "SELECT version_num FROM alembic_version") == "v1_0_0"
    assert psql(host, "SELECT count(*) FROM predictions") == "2000"
