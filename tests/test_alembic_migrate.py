"""alembic_migrate against a real PostgreSQL, through real ansible-playbook runs.

Upgrade/downgrade of the reference app (changed, then not), the SQL preview of check mode,
lock retries that name the blocker while other writers wait at most about a lock timeout,
bad inputs that change nothing, and raw SQL files in one transaction.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

from conftest import APP_DIR, ROOT, VENV_BIN, conn_args, run_module

FIXTURES = ROOT / "tests" / "fixtures"


def query(pg, db, text, params=()):
    conn = pg.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall()
    finally:
        conn.close()


def revision(pg, db):
    rows = query(pg, db, "SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


def catalog(pg, db):
    """Columns, indexes and constraints of the public schema: what 'catalog unchanged' compares."""
    return query(pg, db, """
        SELECT 'col', table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
          FROM information_schema.columns WHERE table_schema = 'public'
        UNION ALL SELECT 'idx', indexdef FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL SELECT 'con', conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2""")


def data_digest(pg, db):
    return query(pg, db, """SELECT count(*), md5(string_agg(concat_ws('|', id, match_id, model_version, home_win_prob,
                              draw_prob, away_win_prob, predicted_result, actual_result, confidence, created_at),
                              ',' ORDER BY id)) FROM predictions""")[0]


def app_args(pg, db, **extra):
    return {**conn_args(pg, db), "project_dir": str(APP_DIR), **extra}


def test_upgrade_is_idempotent_and_downgrade_restores(pg, reference_db, tmp_path):
    db = reference_db
    before_catalog, before_data = catalog(pg, db), data_digest(pg, db)

    preview = run_module("alembic_migrate", app_args(pg, db, revision="v2_0_0"), tmp_path, check=True, diff=True)
    assert preview["changed"] is True and preview.get("failed") is not True
    assert "ALTER TABLE predictions ADD COLUMN model_accuracy" in preview["sql"]
    assert "CREATE INDEX idx_predictions_model_accuracy" in preview["diff"]["prepared"]
    assert preview["from_revision"] == "v1_0_0" and preview["to_revision"] == "v2_0_0"
    assert preview["attempts"] == 0
    assert revision(pg, db) == "v1_0_0" and catalog(pg, db) == before_catalog

    up = run_module("alembic_migrate", app_args(pg, db, revision="v2_0_0"), tmp_path)
    assert up["changed"] is True, up.get("msg")
    assert (up["from_revision"], up["to_revision"], up["direction"]) == ("v1_0_0", "v2_0_0", "upgrade")
    assert up["revisions_applied"] == ["v2_0_0"] and up["attempts"] == 1 and up["duration_s"] > 0
    assert revision(pg, db) == "v2_0_0"
    assert {"predictions.model_accuracy", "predictions.feature_importance"} <= {
        r[1].split(" ")[0] for r in catalog(pg, db)}

    again = run_module("alembic_migrate", app_args(pg, db, revision="head"), tmp_path)
    assert again["changed"] is False and again["revisions_applied"] == [] and again["to_revision"] == "v2_0_0"

    refused = run_module("alembic_migrate", app_args(pg, db, revision="v1_0_0"), tmp_path)
    assert refused.get("failed") is True and "allow_downgrade=true" in refused["msg"]
    assert revision(pg, db) == "v2_0_0"

    down = run_module("alembic_migrate", app_args(pg, db, revision="-1", allow_downgrade=True), tmp_path)
    assert down["changed"] is True and down["direction"] == "downgrade" and down["revisions_applied"] == ["v2_0_0"]
    assert revision(pg, db) == "v1_0_0"
    assert catalog(pg, db) == before_catalog  # columns and index gone, nothing else touched
    assert data_digest(pg, db) == before_data
    twice = run_module("alembic_migrate", app_args(pg, db, revision="v1_0_0", allow_downgrade=True), tmp_path)
    assert twice["changed"] is False


def test_lock_timeout_retries_then_names_the_blocker(pg, reference_db, tmp_path):
    db = reference_db
    before = catalog(pg, db)
    holder = pg.connect(db, autocommit=False)
    holder_pid = holder.get_backend_pid()
    with holder.cursor() as cur:  # an open transaction that touched predictions
        cur.execute("UPDATE predictions SET confidence = confidence WHERE id = 1")
    waits: list[float] = []
    stop = threading.Event()

    def writer():
        conn = pg.connect(db)
        with conn.cursor() as cur:
            while not stop.is_set():
                started = time.monotonic()
                cur.execute("UPDATE predictions SET confidence = confidence WHERE id = 2")
                waits.append(time.monotonic() - started)
                time.sleep(0.02)
        conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        res = run_module("alembic_migrate", app_args(pg, db, revision="v2_0_0", lock_timeout="300ms",
                                                     lock_timeout_max="600ms", lock_retries=2,
                                                     lock_retry_pause=0.3), tmp_path)
    finally:
        stop.set()
        thread.join(timeout=10)
        holder.rollback()
        holder.close()
    print(f"\nconcurrent writer: {len(waits)} updates, longest wait {max(waits):.3f}s "
          f"(lock timeouts 300ms, 600ms, 600ms)")
    assert res.get("failed") is True
    assert res["attempts"] == 3
    assert [a["lock_timeout"] for a in res["attempt_log"]] == ["300ms", "600ms", "600ms"]
    assert all(a["sqlstate"] == "55P03" for a in res["attempt_log"])
    assert f"pid {holder_pid}" in res["msg"]
    assert "UPDATE predictions SET confidence = confidence WHERE id = 1" in res["msg"]
    assert "AccessExclusiveLock on predictions" in res["msg"]
    assert "still at v1_0_0" in res["msg"]
    assert res["blocked_by"]["blockers"][0]["pid"] == holder_pid
    assert revision(pg, db) == "v1_0_0" and catalog(pg, db) == before
    assert len(waits) > 3  # the writer kept writing between the attempts


def test_unknown_revision_fails_before_running(pg, reference_db, tmp_path):
    before = catalog(pg, reference_db)
    res = run_module("alembic_migrate", app_args(pg, reference_db, revision="v9_9_9"), tmp_path)
    assert res.get("failed") is True
    assert "unknown revision 'v9_9_9'" in res["msg"]
    assert "v1_0_0 (base)" in res["msg"] and "v2_0_0 (head)" in res["msg"]
    check = run_module("alembic_migrate", app_args(pg, reference_db, revision="v9_9_9"), tmp_path, check=True)
    assert check.get("failed") is True and "unknown revision" in check["msg"]
    assert revision(pg, reference_db) == "v1_0_0" and catalog(pg, reference_db) == before


def test_wrong_directory_and_unloadable_project_fail_clearly(pg, reference_db, tmp_path):
    before = catalog(pg, reference_db)
    res = run_module("alembic_migrate", app_args(pg, reference_db, project_dir=str(ROOT / "examples")), tmp_path)
    assert res.get("failed") is True and "is not an Alembic project" in res["msg"]
    res = run_module("alembic_migrate", app_args(pg, reference_db, project_dir="/nonexistent/alembic"), tmp_path)
    assert res.get("failed") is True and "does not exist" in res["msg"]

    broken = tmp_path / "unloadable"
    shutil.copytree(FIXTURES / "alembic_broken_upgrade", broken)
    (broken / "alembic" / "versions" / "v3_broken.py").write_text(
        '"""Revision ID: v3\nRevises: v2_0_0\n"""\nrevision = "v3"\ndown_revision = "v2_0_0"\ndef upgrade(:\n')
    res = run_module("alembic_migrate", app_args(pg, reference_db, project_dir=str(broken)), tmp_path)
    assert res.get("failed") is True
    assert "cannot load the Alembic project" in res["msg"] and "SyntaxError" in res["msg"]
    assert revision(pg, reference_db) == "v1_0_0" and catalog(pg, reference_db) == before


def test_broken_upgrade_script_changes_nothing(pg, reference_db, tmp_path):
    before, data = catalog(pg, reference_db), data_digest(pg, reference_db)
    res = run_module("alembic_migrate", app_args(pg, reference_db, project_dir=str(FIXTURES / "alembic_broken_upgrade"),
                                                 revision="head"), tmp_path)
    assert res.get("failed") is True
    assert "no_such_column" in res["msg"] and "still at v1_0_0" in res["msg"]
    assert res["attempts"] == 1  # not a lock problem: no retry
    assert revision(pg, reference_db) == "v1_0_0"
    assert catalog(pg, reference_db) == before  # the column added before the error was rolled back
    assert data_digest(pg, reference_db) == data


def test_password_stays_out_of_output(pg, reference_db, tmp_path):
    res = run_module("alembic_migrate", app_args(pg, reference_db, revision="v2_0_0"), tmp_path, check=True,
                     diff=True)
    assert pg.password not in res["_output"]
    assert pg.password not in str({k: v for k, v in res.items() if k != "invocation"})


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_sql_files_apply_in_one_transaction(pg, reference_db, tmp_path):
    db = reference_db
    good = write(tmp_path / "001_view.sql",
                 "CREATE VIEW recent_predictions AS SELECT id, created_at FROM predictions;\n"
                 "COMMENT ON VIEW recent_predictions IS 'raw SQL migration';\n")
    bad = write(tmp_path / "002_broken.sql", "CREATE TABLE audit_note (id int);\nSELECT no_such_function();\n")
    args = {**conn_args(pg, db)}

    failed = run_module("alembic_migrate", {**args, "sql_files": [good, bad]}, tmp_path)
    assert failed.get("failed") is True and "002_broken.sql" in failed["msg"] and "no_such_function" in failed["msg"]
    assert query(pg, db, "SELECT to_regclass('recent_predictions'), to_regclass('audit_note')") == [(None, None)]

    preview = run_module("alembic_migrate", {**args, "sql_files": [good]}, tmp_path, check=True)
    assert preview["changed"] is True and preview["files_applied"] == [good] and "CREATE VIEW" in preview["sql"]
    assert query(pg, db, "SELECT to_regclass('recent_predictions')") == [(None,)]

    applied = run_module("alembic_migrate", {**args, "sql_files": [good], "run_id": 7}, tmp_path)
    assert applied["changed"] is True and applied["files_applied"] == [good]
    assert query(pg, db, "SELECT name, run_id FROM migration_ops.sql_migrations") == [("001_view.sql", 7)]
    again = run_module("alembic_migrate", {**args, "sql_files": [good]}, tmp_path)
    assert again["changed"] is False and again["files_skipped"] == [good]

    write(tmp_path / "001_view.sql", "CREATE VIEW recent_predictions AS SELECT id FROM predictions;\n")
    edited = run_module("alembic_migrate", {**args, "sql_files": [good]}, tmp_path)
    assert edited.get("failed") is True and "another content" in edited["msg"]


def test_sql_file_that_manages_its_transaction_is_refused(pg, reference_db, tmp_path):
    f = write(tmp_path / "003_txn.sql", "BEGIN;\nCREATE TABLE x_note (id int);\nCOMMIT;\n")
    res = run_module("alembic_migrate", {**conn_args(pg, reference_db), "sql_files": [f]}, tmp_path)
    assert res.get("failed") is True and "manages its own transaction" in res["msg"]
    assert query(pg, reference_db, "SELECT to_regclass('x_note')") == [(None,)]


def test_bad_timeout_is_refused(pg, reference_db, tmp_path):
    res = run_module("alembic_migrate", app_args(pg, reference_db, lock_timeout="2 seconds"), tmp_path)
    assert res.get("failed") is True and "bad timeout" in res["msg"] and "2s" in res["msg"]
    assert revision(pg, reference_db) == "v1_0_0"


APP_SETTINGS = FIXTURES / "alembic_app_settings"


def settings_app_db(pg, revision_id: str | None) -> str:
    """A database migrated with the app-settings fixture (its env.py honouring DATABASE_URL here)."""
    db = pg.create_database()
    if revision_id:
        subprocess.run([str(VENV_BIN / "alembic"), "-c", str(APP_SETTINGS / "alembic.ini"), "upgrade", revision_id],
                       env=pg.env(db), check=True, capture_output=True, cwd=ROOT)
    return db


def test_env_py_that_connects_elsewhere_is_refused_before_anything_runs(pg, tmp_path):
    """env.py takes its database from the application's settings (APP_DB_NAME): alembic_migrate is given
    db A while env.py would migrate db B. The connection to B is refused before any statement, both stay."""
    given, other = settings_app_db(pg, "g1"), settings_app_db(pg, "g1")
    before = {db: (revision(pg, db), catalog(pg, db)) for db in (given, other)}
    res = run_module("alembic_migrate", {**conn_args(pg, given), "project_dir": str(APP_SETTINGS), "revision": "head"},
                     tmp_path, env={"APP_DB_NAME": other})
    assert res.get("failed") is True
    msg = " ".join(res["msg"].split())
    assert f"env.py connects elsewhere: to database {other} on 127.0.0.1:{pg.port}, not to login_db {given}" in msg
    assert "DATABASE_URL" in msg and "sqlalchemy.url" in msg and "application's own database settings" in msg
    assert "That connection was refused before any statement ran on it" in msg and "still at g1" in msg
    assert {db: (revision(pg, db), catalog(pg, db)) for db in (given, other)} == before
    for db in (given, other):
        pg.drop_database(db)


def test_env_py_that_honours_the_given_url_migrates_the_given_database(pg, tmp_path):
    given = settings_app_db(pg, "g1")
    res = run_module("alembic_migrate", {**conn_args(pg, given), "project_dir": str(APP_SETTINGS), "revision": "head"},
                     tmp_path, env={"APP_DB_NAME": given})
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True and res["revisions_applied"] == ["g2"] and revision(pg, given) == "g2"
    pg.drop_database(given)
