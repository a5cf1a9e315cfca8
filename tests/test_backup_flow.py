"""The backup phase through the real playbooks: playbooks/backup.yml (check mode and a real run
recorded in the ledger), the gate in migrate.yml (a damaged backup stops the run before the schema
phase with the database unchanged), and playbooks/restore.yml over a changed database."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, alembic, run_playbook
from test_backup import query, source_tables

# Faults are injected from outside the production code: a test-only callback plugin damages the
# backup the moment pg_backup has written it, before the backup role's verification task starts.
FAULT_CALLBACK_DIR = ROOT / "tests" / "callback_plugins"


def flow_vars(pg, db: str, tmp_path: Path, **extra) -> dict:
    return {**pg.conn_vars(db), "pgmigrate_state_dir": str(tmp_path / "state"),
            "pgmigrate_backup_dir": str(tmp_path / "backups"), "pgmigrate_report_dir": str(tmp_path / "reports"),
            "pgmigrate_db_sslmode": "disable", "version": "2.0.0", **extra}


def catalog(pg, db: str) -> list:
    """Columns, constraints and indexes of the application's tables."""
    return query(pg, db, """
        SELECT 'col', table_name, column_name || ':' || data_type || ':' || is_nullable FROM information_schema.columns
         WHERE table_schema = 'public'
        UNION ALL SELECT 'idx', tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL SELECT 'con', conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2, 3""")


def revision(pg, db: str) -> str:
    return query(pg, db, "SELECT version_num FROM alembic_version")[0][0]


def with_fault(kind: str) -> dict:
    """The environment of one ansible-playbook run that damages its backup (tests/callback_plugins)."""
    return {"ANSIBLE_CALLBACK_PLUGINS": str(FAULT_CALLBACK_DIR),
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks,backup_damage",
            "PGMIGRATE_TEST_BACKUP_FAULT": kind}


def test_backup_playbook_check_mode_then_real_run_recorded_in_the_ledger(pg, reference_db, tmp_path):
    # The production role has no test hook: the variable that used to damage the backup on purpose
    # (issue #10 item 8) is an unknown name now and changes nothing.
    variables = flow_vars(pg, reference_db, tmp_path, backup_fault_injection="truncate")
    preview = run_playbook("playbooks/backup.yml", tmp_path, variables, "--check")
    assert preview.rc == 0, preview.output[-3000:]
    assert f"would dump {reference_db}" in preview.output and "Check mode: would restore" in preview.output
    assert not (tmp_path / "backups").exists()

    res = run_playbook("playbooks/backup.yml", tmp_path, variables)
    assert res.rc == 0, res.output[-4000:]
    assert pg.password not in res.output
    (path, verified, status, phase), = query(
        pg, reference_db, "SELECT backup_path, backup_verified, status, phases->'backup'->>'status' "
                          "FROM migration_ops.runs")
    assert verified is True and status == "succeeded" and phase == "succeeded"
    backup = Path(path)
    assert backup.parent == tmp_path / "backups" and backup.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "backups").stat().st_mode & 0o777 == 0o700
    manifest = json.loads(Path(path + ".manifest.json").read_text())
    assert manifest["verified"] is True and manifest["run_id"] == 1
    assert manifest["tables"] == source_tables(pg, reference_db)


@pytest.mark.parametrize("fault,expected", [
    ("truncate", "the file is truncated"),
    ("flip_byte", "sha256 of backup"),
    ("zero", "is empty (0 bytes)"),
    ("manifest_counts", "table public.predictions: the manifest says 3001 rows, the restore has 3000"),
    ("missing", "is missing"),
])
def test_damaged_backup_stops_migrate_before_the_schema_phase(pg, reference_db, tmp_path, fault, expected):
    before = (catalog(pg, reference_db), source_tables(pg, reference_db), revision(pg, reference_db))
    # The real migrate.yml; the damage comes from outside it (a test-only callback plugin), between
    # the dump and the verification.
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path), env=with_fault(fault))
    assert f"TEST FAULT {fault} injected into" in res.output, res.output[-4000:]
    assert res.rc != 0
    assert "This run's backup is not proven to restore" in res.output and expected in res.output
    assert "before the schema phase" in res.output
    (status, verified, phases), = query(pg, reference_db,
                                        "SELECT status, backup_verified, phases FROM migration_ops.runs")
    assert status == "failed" and verified is False
    assert phases["backup"]["status"] == "failed" and "schema" not in phases
    assert (catalog(pg, reference_db), source_tables(pg, reference_db), revision(pg, reference_db)) == before
    assert query(pg, reference_db, "SELECT count(*) FROM migration_ops.lock")[0][0] == 0


def test_restore_playbook_brings_back_the_exact_content(pg, reference_db, tmp_path):
    variables = flow_vars(pg, reference_db, tmp_path)
    assert run_playbook("playbooks/backup.yml", tmp_path, variables).rc == 0
    original = source_tables(pg, reference_db)
    path = query(pg, reference_db, "SELECT backup_path FROM migration_ops.runs")[0][0]
    # Change the database the way a failed migration would: schema and data.
    alembic(pg, reference_db, "upgrade", "v2_0_0")
    query(pg, reference_db, "DELETE FROM predictions WHERE id % 5 = 0")
    query(pg, reference_db, "UPDATE teams SET name = name || ' FC'")
    changed = source_tables(pg, reference_db)
    assert changed != original and revision(pg, reference_db) == "v2_0_0"

    app = pg.connect(reference_db)  # another session, like the application's
    try:
        refused = run_playbook("playbooks/restore.yml", tmp_path, {**variables, "backup": path})
        assert refused.rc != 0 and "other session(s) are connected" in refused.output
        assert "terminate_sessions=true" in refused.output
        assert source_tables(pg, reference_db) == changed  # nothing was touched
        res = run_playbook("playbooks/restore.yml", tmp_path, {**variables, "backup": path,
                                                               "terminate_sessions": True})
        assert res.rc == 0, res.output[-4000:]
    finally:
        app.close()
    assert pg.password not in res.output
    assert source_tables(pg, reference_db) == original
    assert revision(pg, reference_db) == "v1_0_0"
    runs = query(pg, reference_db, "SELECT kind, status FROM migration_ops.runs ORDER BY id")
    assert runs == [("phase", "succeeded"), ("restore", "failed"), ("restore", "succeeded")]
    conn = pg.admin_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (reference_db + "\\_%",))
        leftovers = [r[0] for r in cur.fetchall()]
    conn.close()
    assert len(leftovers) == 1 and "_replaced_" in leftovers[0]  # the pre-restore database, kept
    pg.drop_database(leftovers[0])
