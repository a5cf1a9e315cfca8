"""Health holds that cannot see say so (issue #10 item 12), against a real streaming standby.

The module fixture ``standby`` is a replica of the session cluster (pg_basebackup -R) on its own
port, run as the unprivileged OS user, that applies WAL late (recovery_min_apply_delay) while a
writer keeps committing on the primary: a real replay lag, seen by the superuser in
pg_stat_replication.  The owner role ``football`` lacks pg_read_all_stats, so it sees that
standby's lag as NULL: its replication-lag hold must warn (and refuse when the plan requires it),
and with pg_read_all_stats granted the same hold must actually hold.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import OWNER, ROOT, conn_args, pgcluster, query, run_module, run_playbook
from psycopg2 import sql

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())
BACKFILL = PLAN["backfills"][0]
STANDBY_NAME = "pgmigrate_test_standby"
APPLY_DELAY_S = 20
MAX_LAG_S = 5


def superuser_lag(pg) -> float | None:
    """The standby's lag as the superuser sees it (the truth the unprivileged role cannot read)."""
    conn = pg.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM greatest(write_lag, flush_lag, replay_lag))::float8 "
                        "FROM pg_stat_replication WHERE application_name = %s", (STANDBY_NAME,))
            row = cur.fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def write_ticks(pg, stop: threading.Event) -> None:
    """Commit a little on the primary all the time, so the standby's replay lag stays measured."""
    conn = pg.admin_connect()
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO pgmigrate_lag_ticks DEFAULT VALUES")
                stop.wait(0.2)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def standby(pg):
    cluster = pgcluster.Cluster(pg.cluster.base.parent / "standby", pgcluster.free_port())
    for d in (cluster.base, cluster.run):
        d.mkdir(parents=True, exist_ok=True)
        cluster._chown(d)
    os.chmod(cluster.base, 0o700)
    # Streaming replication from the primary's Unix socket as its superuser (initdb's pg_hba trusts it).
    cluster._as_user([str(cluster.bindir / "pg_basebackup"), "-h", str(pg.cluster.run), "-p", str(pg.port),
                      "-U", pg.cluster.os_user, "-D", str(cluster.data), "-R", "-X", "stream", "-c", "fast"],
                     capture_output=True)
    with (cluster.data / "postgresql.auto.conf").open("a") as fh:
        fh.write(f"cluster_name = '{STANDBY_NAME}'\nrecovery_min_apply_delay = '{APPLY_DELAY_S}s'\n"
                 "wal_receiver_status_interval = '1s'\nhot_standby = on\n")
    admin = pg.admin_connect()
    with admin.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS pgmigrate_lag_ticks (id bigserial PRIMARY KEY, "
                    "at timestamptz NOT NULL DEFAULT clock_timestamp())")
    admin.close()
    stop = threading.Event()
    writer = threading.Thread(target=write_ticks, args=(pg, stop), daemon=True)
    cluster.start()
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    try:
        writer.start()
        deadline = time.monotonic() + APPLY_DELAY_S + 40
        while (superuser_lag(pg) or 0) <= MAX_LAG_S + 5:
            assert time.monotonic() < deadline, f"the standby never fell behind; see {cluster.log}"
            time.sleep(0.5)
        yield cluster
    finally:
        stop.set()
        writer.join(timeout=10)
        try:
            os.kill(pid, signal.SIGQUIT)  # the standby's postmaster, by PID: immediate shutdown
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        admin = pg.admin_connect()
        with admin.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS pgmigrate_lag_ticks")
        admin.close()


@pytest.fixture
def stats_reader(pg):
    """The owner role with pg_read_all_stats, for one test."""
    admin = pg.admin_connect()
    with admin.cursor() as cur:
        cur.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(OWNER)))
    try:
        yield OWNER
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("REVOKE pg_read_all_stats FROM {}").format(sql.Identifier(OWNER)))
        admin.close()


def state(pg, db):
    """Every row of the backfilled table and whether the tool's schema exists."""
    return (query(pg, db, "SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM predictions p")[0][0],
            query(pg, db, "SELECT to_regnamespace('migration_ops') IS NOT NULL")[0][0])


def backfill_args(pg, db, tmp_path, **extra):
    args = {**conn_args(pg, db), "name": BACKFILL["name"], "table": BACKFILL["table"], "key": BACKFILL["key"],
            "set": BACKFILL["set"], "where": BACKFILL["where"], "batch_size": 500,
            "progress_file": str(tmp_path / "progress.jsonl"), "progress_interval_s": 0, "hold_poll_s": 0.2}
    args.update(extra)
    return args


def progress(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]


def test_lag_hold_without_pg_read_all_stats_warns_that_it_cannot_see(pg, standby, v2_db, tmp_path):
    assert superuser_lag(pg) > MAX_LAG_S  # the standby really is behind while the backfill runs
    res = run_module("pg_batch_update", backfill_args(pg, v2_db, tmp_path, max_replication_lag_s=MAX_LAG_S), tmp_path)
    lag_after = superuser_lag(pg)
    assert res.get("failed") is not True, res.get("msg")
    assert lag_after > MAX_LAG_S
    # Blind: it could not hold; it must say so, with the privilege to grant.
    assert res["rows_updated"] == 3000 and res["holds"]["count"] == 0
    warning = next(w for w in res.get("warnings", []) if "replication lag is not checked" in w)
    assert f"role {OWNER} lacks the privileges of pg_read_all_stats" in warning
    assert f"GRANT pg_read_all_stats TO {OWNER}" in warning and "required_holds" in warning
    assert set(res["blind_holds"]) == {"replication_lag"}
    said = [line for line in progress(tmp_path) if line["event"] == "warning"]
    assert [line["hold"] for line in said] == ["replication_lag"]
    assert "replication lag is not checked" in said[0]["warning"]


def test_required_lag_hold_without_pg_read_all_stats_refuses_before_the_first_batch(pg, standby, v2_db, tmp_path):
    before = state(pg, v2_db)
    args = backfill_args(pg, v2_db, tmp_path, max_replication_lag_s=MAX_LAG_S, required_holds=["replication_lag"])
    for check in (True, False):  # check mode tells the same truth
        res = run_module("pg_batch_update", args, tmp_path, check=check)
        assert res.get("failed") is True, res
        assert "requires the hold(s) replication_lag (required_holds)" in res["msg"], res["msg"]
        assert f"GRANT pg_read_all_stats TO {OWNER} (or GRANT pg_monitor TO {OWNER})" in res["msg"]
        assert "nothing was changed" in res["msg"] and res["changed"] is False
        assert state(pg, v2_db) == before  # no row, no checkpoint table, no schema
    assert not (tmp_path / "progress.jsonl").exists()


def test_lag_hold_with_pg_read_all_stats_holds_and_names_the_standby(pg, standby, stats_reader, v2_db, tmp_path):
    """The control: the same standby, the same hold, a role that can see: it holds (then gives up)."""
    before = state(pg, v2_db)
    res = run_module("pg_batch_update", backfill_args(pg, v2_db, tmp_path, max_replication_lag_s=MAX_LAG_S,
                                                      max_hold_s=1.5), tmp_path)
    assert res.get("failed") is True, res
    assert "held for more than max_hold_s=1.5 s: replication_lag: standby " + STANDBY_NAME in res["msg"], res["msg"]
    assert res["holds"]["count"] >= 1 and res["holds"]["reasons"] == {"replication_lag": 1}
    assert res.get("blind_holds", {}) == {} and not any("not checked" in w for w in res.get("warnings", []))
    holds = [line for line in progress(tmp_path) if line["event"] == "hold"]
    assert holds and holds[0]["holds"] == 1
    assert holds[0]["reason"].startswith(f"replication_lag: standby {STANDBY_NAME} is ")
    assert state(pg, v2_db)[0] == before[0]  # it held before the first batch: no row was written


def test_other_holds_that_cannot_see_warn_or_refuse_alike(pg, v2_db, tmp_path):
    """The same rule for the vacuum hold (other roles' vacuums are hidden) and the WAL-archive hold."""
    warned = run_module("pg_batch_update", backfill_args(pg, v2_db, tmp_path, hold_on_autovacuum=True,
                                                         max_archive_backlog=0), tmp_path)
    assert warned.get("failed") is not True, warned.get("msg")
    assert set(warned["blind_holds"]) == {"vacuum", "archive_backlog"}
    assert any(f"vacuum on the table is checked only for role {OWNER}'s own sessions" in w for w in warned["warnings"])
    assert any("WAL archive backlog is not checked" in w and f"GRANT pg_monitor TO {OWNER}" in w
               for w in warned["warnings"])
    refused = run_module("pg_batch_update", backfill_args(pg, v2_db, tmp_path, name="other", restart=True,
                                                          max_archive_backlog=0, required_holds=["archive_backlog"]),
                         tmp_path)
    assert refused.get("failed") is True and "requires the hold(s) archive_backlog" in refused["msg"]
    assert f"GRANT pg_monitor TO {OWNER}" in refused["msg"] and "nothing was changed" in refused["msg"]


def plan_dir(tmp_path: Path, **backfill_extra) -> Path:
    plan = json.loads(json.dumps(PLAN))
    plan["backfills"][0].update(backfill_extra)
    d = tmp_path / "plans"
    d.mkdir(exist_ok=True)
    (d / "2.0.0.yml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return d


def flow_vars(pg, db, tmp_path, plans: Path) -> dict:
    return {**pg.conn_vars(db), "pgmigrate_state_dir": str(tmp_path / "state"),
            "pgmigrate_backup_dir": str(tmp_path / "backups"), "pgmigrate_report_dir": str(tmp_path / "reports"),
            "pgmigrate_log_dir": str(tmp_path / "logs"), "pgmigrate_db_sslmode": "disable", "version": "2.0.0",
            "pgmigrate_plan_dir": str(plans)}


def test_plan_phase_says_it_and_refuses_a_required_blind_hold_before_the_backup(pg, reference_db, tmp_path):
    revision = query(pg, reference_db, "SELECT version_num FROM alembic_version")
    warned = run_playbook("playbooks/plan.yml", tmp_path,
                          flow_vars(pg, reference_db, tmp_path, plan_dir(tmp_path, max_replication_lag_s=30)))
    assert warned.rc == 0, warned.output[-3000:]
    assert f"backfill {BACKFILL['name']}: replication lag is not checked" in " ".join(warned.output.split())

    before = state(pg, reference_db)
    refused = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, plan_dir(
        tmp_path, max_replication_lag_s=30, required_holds=["replication_lag"])))
    out = " ".join(refused.output.split())
    assert refused.rc != 0
    assert "The plan requires health holds this login cannot see" in out, out[-3000:]
    assert f"GRANT pg_read_all_stats TO {OWNER}" in out and "before the backup and the schema change" in out
    assert not (tmp_path / "backups").exists()
    assert query(pg, reference_db, "SELECT version_num FROM alembic_version") == revision
    assert state(pg, reference_db)[0] == before[0]
    # Only the ledger of the first (plan-only) run: the refused run opened none.
    assert query(pg, reference_db, "SELECT count(*) FROM migration_ops.runs")[0][0] == 1

    bad = run_module("migration_plan", {"version": "2.0.0", "plan_dir": str(plan_dir(
        tmp_path, required_holds=["vacuum"]))}, tmp_path)
    assert bad.get("failed") is True
    assert "required_holds: vacuum is required but hold_on_autovacuum is not set" in bad["msg"], bad["msg"]
