"""Verify the plan role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import pytest
from pgverify import psql


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
