"""Verify the backup role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import json
import os

PORT = 55544
STATE = f"/tmp/pgmigrate-molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'backup')}"
BACKUPS = f"{STATE}/backups"


def psql(host, query: str, db: str = "football_prediction") -> str:
    # testinfra quotes every argument; the password stays in a file and the environment.
    cmd = host.run("PGPASSWORD=$(cat %s) psql -X -At -h 127.0.0.1 -p %s -U football -d %s -c %s",
                   f"{STATE}/secrets/football.password", str(PORT), db, query)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


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
