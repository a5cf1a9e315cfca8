"""Verify the validate role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import json

from pgverify import psql, state_dir

STATE = state_dir()




def statuses(host) -> dict:
    return json.loads(host.file(f"{STATE}/validation-statuses.json").content_string)


def test_every_data_check_passed(host):
    got = statuses(host)
    for name in ("predictions_count_unchanged", "matches_count_unchanged", "feature_importance_filled",
                 "accuracy_filled_for_results", "accuracy_in_range", "accuracy_null_without_result",
                 "schema_matches_plan"):
        assert got[name] == "passed", (name, got)


def test_functional_checks_are_skipped_not_passed(host):
    got = statuses(host)
    assert got["smoke_health"] == "skipped" and got["smoke_api_matches_database"] == "skipped"


def test_validation_wrote_nothing_to_the_database(host):
    assert psql(host, "SELECT count(*) FROM pg_namespace WHERE nspname = 'migration_ops'") in ("0", "1")
    assert psql(host, "SELECT count(*) FROM predictions WHERE feature_importance IS NULL") == "0"
    assert psql(host, "SELECT count(*) FROM predictions") == "2000"
