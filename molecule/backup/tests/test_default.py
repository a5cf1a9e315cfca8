"""Verify the backup role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import json

from pgverify import psql, state_dir

STATE = state_dir()
BACKUPS = f"{STATE}/backups"




def test_backup_directory_is_private_and_holds_one_backup(host):
    d = host.file(BACKUPS)
    assert d.is_directory and d.mode == 0o700
    dumps = host.run("ls %s", BACKUPS).stdout.split()
    assert len([n for n in dumps if n.endswith(".dump")]) == 1, dumps
    assert len([n for n in dumps if n.endswith(".manifest.json")]) == 1, dumps
    for name in dumps:
        assert host.file(f"{BACKUPS}/{name}").mode == 0o600


def test_manifest_is_verified_and_matches_the_database(host):
    name = next(n for n in host.run("ls %s", BACKUPS).stdout.split() if n.endswith(".manifest.json"))
    manifest = json.loads(host.file(f"{BACKUPS}/{name}").content_string)
    assert manifest["verified"] is True and manifest["verification"]["ok"] is True
    assert manifest["alembic_revision"] == "v1_0_0" and manifest["version"] == "2.0.0"
    assert manifest["tables"]["public.predictions"]["rows"] == int(psql(host, "SELECT count(*) FROM predictions"))
    assert "-run1-" in manifest["backup_path"]


def test_ledger_records_the_proven_backup(host):
    row = psql(host, "SELECT backup_verified, backup_path FROM migration_ops.runs WHERE id = 1")
    verified, path = row.split("|")
    assert verified == "t" and path.startswith(BACKUPS)


def test_no_scratch_database_is_left(host):
    assert psql(host, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgmigrate_verify%'", "postgres") == "0"


def test_rehearsal_migrated_only_the_copy(host):
    """The rehearsal migrated the restored copy to v2_0_0; the target stays at v1_0_0 without the new columns."""
    assert psql(host, "SELECT version_num FROM alembic_version") == "v1_0_0"
    assert psql(host, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'predictions' "
                      "AND column_name IN ('model_accuracy', 'feature_importance')") == "0"
