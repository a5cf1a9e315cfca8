"""Verify the full flow: migrate.yml converged twice on the scenario's embedded default (testinfra)."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from pgverify import psql, state_dir


def test_schema_is_at_the_plans_revision_with_every_row(host):
    assert psql(host, "SELECT version_num FROM alembic_version") == "v2_0_0"
    assert psql(host, "SELECT count(*) FROM predictions") == "2000"
    # The backfill reached every row (model_accuracy stays NULL until a match has a result).
    assert psql(host, "SELECT count(*) FROM predictions WHERE feature_importance IS NULL "
                      "OR (model_accuracy IS NULL AND actual_result IS NOT NULL)") == "0"


def test_ledger_has_the_migration_and_a_second_run_that_found_nothing_to_do(host):
    runs = psql(host, "SELECT version || ':' || status FROM migration_ops.runs WHERE kind = 'migrate' ORDER BY id")
    assert runs.splitlines() == ["2.0.0:succeeded", "2.0.0:succeeded"], runs
    first, second = (json.loads(p) for p in psql(
        host, "SELECT phases FROM migration_ops.runs WHERE kind = 'migrate' ORDER BY id").splitlines())
    assert first["schema"]["status"] == "succeeded"
    assert psql(host, "SELECT from_revision || '>' || to_revision FROM migration_ops.runs ORDER BY id LIMIT 1") \
        == "v1_0_0>v2_0_0"
    assert psql(host, "SELECT count(*) FROM migration_ops.lock") == "0"
    # The rerun found the plan applied: no backup, no row, the same release (its deploy changed nothing).
    assert second["backup"]["status"] == "skipped", second["backup"]
    assert "nothing to change" in second["backup"]["facts"]["reason"], second["backup"]
    verified = str(first["backup"]["facts"]["backup_verified"]).lower()
    assert first["backup"]["status"] == "succeeded" and verified == "true", first["backup"]


def test_nginx_serves_release_2_0_0(host):
    url = host.ansible.get_variables()["pgmigrate_app_url"]
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        health = json.load(response)
    assert health["version"] == "2.0.0"
    assert health["db_revision"] == "v2_0_0"


def test_report_files_are_written(host):
    reports = Path(state_dir()) / "reports"
    names = sorted(p.name for p in reports.rglob("*") if p.is_file())
    assert any(n.endswith(".md") for n in names), names
    assert any(n.endswith(".json") for n in names), names
