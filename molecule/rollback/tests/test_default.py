"""Verify the rollback role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

from pgverify import psql


def test_schema_is_back_at_the_runs_from_revision(host):
    assert psql(host, "SELECT version_num FROM alembic_version") == "v1_0_0"
    assert psql(host, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'predictions' "
                      "AND column_name IN ('model_accuracy', 'feature_importance')") == "0"


def test_data_kept(host):
    assert psql(host, "SELECT count(*) FROM predictions") == "2000"


def test_ledger_says_rolled_back_with_what_was_undone(host):
    assert psql(host, "SELECT kind || ':' || status FROM migration_ops.runs ORDER BY id") == \
        "migrate:rolled_back\nrollback:succeeded"
    assert psql(host, "SELECT phases->'rollback'->'facts'->>'strategy' FROM migration_ops.runs WHERE id = 1") == \
        "downgrade"
    assert "schema downgraded from v2_0_0 to v1_0_0" in psql(
        host, "SELECT phases->'rollback'->'facts'->>'undone' FROM migration_ops.runs WHERE id = 1")
    assert psql(host, "SELECT count(*) FROM migration_ops.lock") == "0"
