"""migration_lock against a real PostgreSQL, through real ansible-playbook runs."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from conftest import conn_args, run_module


def ledger(pg, db, query, params=()):
    conn = pg.connect(db)
    with conn.cursor() as cur:
        cur.execute(query, params)
        rows = cur.fetchall()
    conn.close()
    return rows


def test_lock_is_exclusive_and_released(pg, tmp_path):
    db = pg.create_database()
    args = conn_args(pg, db)
    first = run_module("migration_lock", {**args, "version": "2.0.0", "from_version": "1.0.0"}, tmp_path)
    assert first["changed"] is True and first["ops_schema_created"] is True
    run_id = first["run_id"]
    # The owning ansible-playbook process of that run has exited: its lock is stale, not silently stolen.
    second = run_module("migration_lock", {**args, "version": "2.0.0"}, tmp_path)
    assert second.get("failed") is True
    assert f"run #{run_id}" in second["msg"] and "break_lock=true" in second["msg"]
    assert ledger(pg, db, "SELECT count(*) FROM migration_ops.runs")[0][0] == 1

    # The owner re-asserting its own lock changes nothing.
    again = run_module("migration_lock", {**args, "version": "2.0.0", "run_id": run_id}, tmp_path)
    assert again["changed"] is False and again["run_id"] == run_id

    released = run_module("migration_lock", {**args, "state": "absent", "run_id": run_id}, tmp_path)
    assert released["changed"] is True
    assert ledger(pg, db, "SELECT status, finished_at IS NOT NULL FROM migration_ops.runs WHERE id = %s",
                  (run_id,)) == [("succeeded", True)]
    assert ledger(pg, db, "SELECT count(*) FROM migration_ops.lock")[0][0] == 0
    twice = run_module("migration_lock", {**args, "state": "absent", "run_id": run_id}, tmp_path)
    assert twice["changed"] is False


def test_live_lock_is_refused_and_stale_lock_breakable(pg, tmp_path):
    db = pg.create_database()
    args = conn_args(pg, db)
    first = run_module("migration_lock", {**args, "version": "2.0.0"}, tmp_path)
    run_id = first["run_id"]
    # Pretend the owner is a live process on this host: point the lock at a sleeping process.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        conn = pg.connect(db)
        with conn.cursor() as cur:
            cur.execute("UPDATE migration_ops.lock SET control_pid = %s, control_pid_start = %s",
                        (sleeper.pid, start))
        conn.close()
        refused = run_module("migration_lock", {**args, "version": "2.0.0", "break_lock": True}, tmp_path)
        assert refused.get("failed") is True
        assert "a second migration is refused" in refused["msg"] and f"run #{run_id}" in refused["msg"]
    finally:
        sleeper.kill()
        sleeper.wait()
    time.sleep(0.1)
    check = run_module("migration_lock", {**args, "version": "2.0.0", "break_lock": True}, tmp_path, check=True)
    assert check["changed"] is True and "would break" in check["msg"]
    assert ledger(pg, db, "SELECT run_id FROM migration_ops.lock") == [(run_id,)]
    broken = run_module("migration_lock", {**args, "version": "2.0.0", "break_lock": True}, tmp_path)
    assert broken["changed"] is True and broken["broken"]["run_id"] == run_id
    assert broken["run_id"] != run_id
    assert ledger(pg, db, "SELECT status FROM migration_ops.runs WHERE id = %s", (run_id,)) == [("failed",)]


def test_check_mode_creates_nothing(pg, tmp_path):
    db = pg.create_database()
    res = run_module("migration_lock", {**conn_args(pg, db), "version": "2.0.0"}, tmp_path, check=True)
    assert res["changed"] is True and "would create schema" in res["msg"]
    assert ledger(pg, db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'migration_ops'")[0][0] == 0


def test_wrong_password_names_the_fix(pg, tmp_path):
    db = pg.create_database()
    bad = "Zq7-not-the-real-secret"
    res = run_module("migration_lock", {**conn_args(pg, db), "login_password": bad, "version": "2.0.0"},
                     tmp_path)
    assert res.get("failed") is True
    assert "password authentication failed" in res["msg"] and "vault" in res["msg"]
    assert bad not in res["_output"] and bad not in str(res.get("invocation"))
    assert ledger(pg, db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'migration_ops'")[0][0] == 0
