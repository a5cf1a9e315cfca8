"""Verify the schema_migrate role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import pytest
from pgverify import psql


def test_database_is_at_the_plans_revision(host):
    assert psql(host, "SELECT version_num FROM alembic_version") == "v2_0_0"


@pytest.mark.parametrize(("column", "data_type"), [("model_accuracy", "double precision"),
                                                   ("feature_importance", "jsonb")])
def test_new_columns_are_nullable(host, column, data_type):
    row = psql(host, "SELECT data_type || ':' || is_nullable FROM information_schema.columns "
                     f"WHERE table_name = 'predictions' AND column_name = '{column}'")
    assert row == f"{data_type}:YES"


def test_new_index_is_valid(host):
    assert psql(host, "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                      "WHERE c.relname = 'idx_predictions_model_accuracy'") == "t"


def test_existing_data_kept(host):
    assert psql(host, "SELECT count(*) FROM predictions") == "2000"
    assert psql(host, "SELECT count(*) FROM predictions WHERE model_accuracy IS NOT NULL") == "0"
