"""Promises of the data phase (issue #10): a backfill that ends badly fails the phase and the run
with its own message; a backfill whose playbook died stops by itself and keeps its run alive
until it has; every execution is recorded with its run id; incremental passes lose no row
committed late; the report counts from the ledger only.

Real ansible-playbook runs against the session's PostgreSQL; nothing is mocked."""
from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest
import yaml
from backfill_helpers import checkpoints, module_pids, query, start_module, wait_for_batches
from conftest import ROOT, VENV_BIN, alembic, ansible_env, conn_args, run_module, run_playbook, seed, write_vars
from psycopg2 import sql

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())
BACKFILL = PLAN["backfills"][0]["name"]


def plan_dir(tmp_path: Path, **backfill) -> Path:
    """The reference plan with its backfill changed (test-only input, in the test's own directory)."""
    plan = copy.deepcopy(PLAN)
    plan["backfills"][0].update(backfill)
    plan["backfills"][0] = {k: v for k, v in plan["backfills"][0].items() if v is not None}
    d = tmp_path / "plans"
    d.mkdir(exist_ok=True)
    (d / "2.0.0.yml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return d


def data_vars(pg, db, tmp_path, plans: Path | None = None, **extra) -> dict:
    out = {**pg.conn_vars(db), "version": "2.0.0", "pgmigrate_log_dir": str(tmp_path / "logs"),
           "pgmigrate_report_dir": str(tmp_path / "reports"), "pgmigrate_docs_dir": str(tmp_path / "docs"),
           "data_migrate_poll_interval": 1, **extra}
    if plans is not None:
        out["pgmigrate_plan_dir"] = str(plans)
    return out


def last_run(pg, db) -> tuple:
    return query(pg, db, "SELECT id, status, error, phases FROM migration_ops.runs ORDER BY id DESC LIMIT 1")[0]


def run_sessions(pg, db, run_id: int) -> list:
    return query(pg, db, "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
                         "AND application_name LIKE %s", (f"pgmigrate-ops run {run_id} %",))


def start_playbook(tmp_path: Path, playbook: str, variables: dict, *args: str) -> tuple[subprocess.Popen, Path]:
    """ansible-playbook in a process group of its own (so the test can kill the whole group), and its log."""
    log = tmp_path / f"playbook-{time.monotonic_ns()}.log"
    cmd = [str(VENV_BIN / "ansible-playbook"), str(ROOT / playbook), "-i", str(ROOT / "inventories" / "local"),
           "-e", "@" + str(write_vars(tmp_path, variables)), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def assert_failed_with(pg, db, res, text: str) -> dict:
    """The phase and the run are failed, with ``text`` in the output, the ledger and the report."""
    assert res.rc != 0, res.output[-3000:]
    assert text in res.output, res.output[-3000:]
    run_id, status, error, phases = last_run(pg, db)
    assert status == "failed"
    assert phases["data"]["status"] == "failed"
    assert text in phases["data"]["facts"]["error"], phases["data"]
    assert text in (error or ""), error
    return {"run_id": run_id, "phases": phases}


def report_text(tmp_path: Path) -> str:
    reports = sorted((tmp_path / "reports" / "2.0.0").glob("migration_report_*.md"))
    assert reports, "no report was written"
    return reports[-1].read_text()


# ---------------------------------------------------------------------------------------
# 1. Every way a backfill can end badly fails the phase and the run
# ---------------------------------------------------------------------------------------
def test_error_in_the_expression_midway_fails_phase_run_and_report(pg, v2_db, tmp_path):
    """Division by zero at key 2000 of 3000: batches before it are committed, the run is failed."""
    plans = plan_dir(tmp_path, set={"confidence": "confidence / (CASE WHEN id >= 2000 THEN 0 ELSE 1 END)"},
                     where=None, batch_size=200, min_batch_size=200, max_batch_size=200)
    res = run_playbook("playbooks/data.yml", tmp_path, data_vars(pg, v2_db, tmp_path, plans))
    assert_failed_with(pg, v2_db, res, "division by zero")
    assert "One or more items failed" not in report_text(tmp_path)
    assert "division by zero" in report_text(tmp_path)
    ck = checkpoints(pg, v2_db, BACKFILL)
    assert ck[0][1] == "failed" and 0 < ck[0][2] < 2000


def test_second_copy_refused_fails_the_phase(pg, v2_db, tmp_path):
    slow = {**conn_args(pg, v2_db), "name": BACKFILL, "table": "predictions", "set": {"confidence": "confidence"},
            "batch_size": 20, "min_batch_size": 20, "max_batch_size": 20, "pause_ms": 200}
    other = start_module(pg, v2_db, tmp_path, slow)
    try:
        wait_for_batches(pg, v2_db, BACKFILL, 1)
        res = run_playbook("playbooks/data.yml", tmp_path, data_vars(pg, v2_db, tmp_path))
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()
    assert_failed_with(pg, v2_db, res, "is already running")


def test_timeout_fails_the_phase(pg, v2_db, tmp_path):
    plans = plan_dir(tmp_path, batch_size=20, min_batch_size=20, max_batch_size=20, pause_ms=300)
    res = run_playbook("playbooks/data.yml", tmp_path, data_vars(pg, v2_db, tmp_path, plans,
                                                                 data_migrate_timeout=4))
    assert res.rc != 0
    _, status, error, phases = last_run(pg, v2_db)
    assert status == "failed" and phases["data"]["status"] == "failed"
    said = phases["data"]["facts"]["error"]
    assert "Timeout exceeded" in said or "did not finish within 4 s" in said, phases["data"]
    assert said[:40] in error


@pytest.mark.parametrize("how", ["lost connection", "killed worker"])
def test_lost_connection_or_killed_worker_fails_the_phase(pg, v2_db, tmp_path, how):
    plans = plan_dir(tmp_path, batch_size=20, min_batch_size=20, max_batch_size=20, pause_ms=100)
    proc, log = start_playbook(tmp_path, "playbooks/data.yml", data_vars(pg, v2_db, tmp_path, plans))
    try:
        wait_for_batches(pg, v2_db, BACKFILL, 3, timeout=120)
        if how == "lost connection":
            admin = pg.admin_connect(v2_db)
            with admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE "
                            "'pgmigrate-ops run % backfill %'")
            admin.close()
        else:
            pids = module_pids()
            assert pids, "no backfill process to kill"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert rc != 0, output[-3000:]
    _, status, error, phases = last_run(pg, v2_db)
    assert status == "failed" and phases["data"]["status"] == "failed"
    expected = "database connection was lost" if how == "lost connection" else "ended without a result"
    assert expected in phases["data"]["facts"]["error"], phases["data"]
    assert expected in output and expected in (error or "")


# ---------------------------------------------------------------------------------------
# 2. A run is alive while any of its database sessions is
# ---------------------------------------------------------------------------------------
def test_lock_of_a_dead_playbook_is_not_broken_while_its_sessions_work(pg, reference_db, tmp_path):
    """The playbook that took the lock is gone (so its PID says stale), but a session of the run
    (named after it) is still connected: breaking is refused and names it; once it ends, it breaks."""
    lock_args = {**conn_args(pg, reference_db), "version": "2.0.0"}
    first = run_module("migration_lock", lock_args, tmp_path)
    assert first.get("failed") is not True, first.get("msg")
    run_id = first["run_id"]
    worker = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=reference_db,
                              application_name=f"pgmigrate-ops run {run_id} backfill predictions_accuracy")
    try:
        refused = run_module("migration_lock", {**lock_args, "break_lock": True}, tmp_path)
        assert refused.get("failed") is True
        assert f"pgmigrate-ops run {run_id} backfill predictions_accuracy" in refused["msg"]
        assert "not stale" in refused["msg"]
        looked = run_module("migration_lock", {**lock_args, "state": "query"}, tmp_path)
        assert looked["lock"]["stale"] is False and looked["lock"]["live_sessions"]
    finally:
        worker.close()
    broken = run_module("migration_lock", {**lock_args, "break_lock": True}, tmp_path)
    assert broken.get("failed") is not True, broken.get("msg")
    assert broken["broken"]["run_id"] == run_id and broken["run_id"] != run_id


# ---------------------------------------------------------------------------------------
# 2 + 3. kill -9 of the playbook's whole process group during a 1M-row backfill
# ---------------------------------------------------------------------------------------
MILLION = 1_000_000


@pytest.fixture(scope="module")
def million_template(pg):
    name = pg.create_database("tmpl_million_v2")
    alembic(pg, name, "upgrade", "v1_0_0")
    seed(pg, name, MILLION, "--seed", "11")
    alembic(pg, name, "upgrade", "v2_0_0")
    admin = pg.admin_connect(name)
    with admin.cursor() as cur:
        cur.execute("VACUUM ANALYZE predictions")
    admin.close()
    return name


@pytest.fixture(scope="module")
def million_reference(pg, million_template):
    """md5 of the backfilled columns after one set-based UPDATE with the plan's expressions."""
    name = pg.create_database(template=million_template)
    conn = pg.connect(name)
    with conn.cursor() as cur:
        bf = PLAN["backfills"][0]
        cur.execute(sql.SQL("UPDATE predictions SET {}").format(sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(e)) for c, e in bf["set"].items())))
    conn.close()
    digest = columns_md5(pg, name)
    pg.drop_database(name)
    return digest


def columns_md5(pg, db) -> str:
    return query(pg, db, "SELECT md5(string_agg(id::text || ':' || coalesce(model_accuracy::text, '-') || ':' || "
                         "coalesce(feature_importance::text, '-'), ',' ORDER BY id)) FROM predictions")[0][0]


@pytest.mark.parametrize("seed_", [101, 202])
def test_killed_playbook_group_stops_its_backfill_which_the_next_run_resumes(pg, million_template,
                                                                             million_reference, tmp_path, seed_):
    rng = random.Random(seed_)
    db = pg.create_database(template=million_template)
    try:
        variables = data_vars(pg, db, tmp_path)
        proc, _ = start_playbook(tmp_path, "playbooks/data.yml", variables)
        wait_for_batches(pg, db, BACKFILL, rng.randint(2, 12), timeout=240)
        time.sleep(rng.random())
        killed_run = query(pg, db, "SELECT run_id FROM migration_ops.lock")[0][0]
        os.killpg(proc.pid, signal.SIGKILL)  # ansible-playbook and all it started in its group
        proc.wait()
        killed_at = time.monotonic()

        # The lock cannot be broken while the run's backfill lives; it stops by itself at a batch boundary.
        lock_args = {**conn_args(pg, db), "version": "2.0.0", "break_lock": True}
        attempts = []
        while True:
            res = run_module("migration_lock", lock_args, tmp_path)
            attempts.append(res)
            if res.get("failed") is not True:
                break
            assert f"pgmigrate-ops run {killed_run} backfill {BACKFILL}" in res["msg"], res["msg"]
            assert time.monotonic() - killed_at < 120, "the orphaned backfill did not stop"
        assert res["broken"]["run_id"] == killed_run
        assert run_sessions(pg, db, killed_run) == []  # broken only once no session of the run was left
        release = run_module("migration_lock", {**conn_args(pg, db), "state": "absent", "run_id": res["run_id"],
                                                "run_status": "failed"}, tmp_path)
        assert release.get("failed") is not True, release.get("msg")

        ck = checkpoints(pg, db, BACKFILL)
        assert ck[0][1] != "done", "the kill came after the end: nothing was resumed"
        passes = query(pg, db, "SELECT run_id, status, rows_done, rows_updated FROM migration_ops.batch_passes "
                               "WHERE backfill = %s ORDER BY id", (BACKFILL,))
        assert [(p[0], p[1]) for p in passes] == [(killed_run, "interrupted")]
        filled = query(pg, db, "SELECT count(*) FROM predictions WHERE feature_importance IS NOT NULL")[0][0]
        assert passes[0][3] == ck[0][3] == filled > 0  # every committed row is counted, with its run
        lines = [json.loads(x) for x in (tmp_path / "logs" / f"backfill-{BACKFILL}.jsonl").read_text().splitlines()]
        assert lines[-1]["event"] == "interrupted" and "is gone" in lines[-1]["error"]

        # The next run resumes; rows end as one set-based UPDATE leaves them.
        again = run_playbook("playbooks/data.yml", tmp_path, variables)
        assert again.rc == 0, again.output[-3000:]
        assert columns_md5(pg, db) == million_reference
        resumed_run = last_run(pg, db)[0]
        mine = [json.loads(x) for x in (tmp_path / "logs" / f"backfill-{BACKFILL}.jsonl").read_text().splitlines()]
        mine = [x for x in mine if x["run_id"] == resumed_run]
        assert mine[0]["event"] == "resume" and mine[0]["rows_done"] == ck[0][2]
        assert all(x["rows_done"] <= x["rows_total"] <= MILLION * 1.05 for x in mine), \
            [(x["rows_done"], x["rows_total"]) for x in mine]
        assert mine[-1]["rows_done"] == mine[-1]["rows_total"] == MILLION
        passes = query(pg, db, "SELECT run_id, status, rows_updated FROM migration_ops.batch_passes "
                               "WHERE backfill = %s ORDER BY id", (BACKFILL,))
        assert [p[1] for p in passes] == ["interrupted", "done"] and passes[1][0] == resumed_run
        assert sum(p[2] for p in passes) == MILLION  # no row twice, none left out

        # The report counts the migration as a whole (the killed run's rows included), from the ledger.
        report = run_module("migration_report", {**conn_args(pg, db), "run_id": resumed_run, "version": "2.0.0",
                                                 "plan": PLAN, "report_dir": str(tmp_path / "reports"),
                                                 "log_dir": str(tmp_path / "logs"), "data_model": False}, tmp_path)
        assert report.get("failed") is not True, report.get("msg")
        assert report["summary"]["records_migrated"] == MILLION
        assert report["summary"]["records_migrated_this_run"] == MILLION - filled
        text = (Path(report["files"]["report_md"])).read_text()
        assert f"Records migrated: **{MILLION:,}**" in text and f"#{killed_run}" in text
    finally:
        pg.drop_database(db)


# ---------------------------------------------------------------------------------------
# 3 + 11. A rerun's figures and the report come from this run and the ledger only
# ---------------------------------------------------------------------------------------
def test_rerun_shows_and_reports_its_own_figures_only(pg, v2_db, tmp_path):
    variables = data_vars(pg, v2_db, tmp_path)
    first = run_playbook("playbooks/data.yml", tmp_path, variables)
    assert first.rc == 0, first.output[-3000:]
    assert "3,000 of ~3,000 rows" in first.output
    # Another backfill's log in the same directory (another plan, another run) is none of this run's business.
    (tmp_path / "logs" / "backfill-someone_else.jsonl").write_text(json.dumps(
        {"ts": "2026-01-01T00:00:00+00:00", "backfill": "someone_else", "event": "done", "rows_done": 1231842,
         "rows_total": 1231842, "rate": 5.0}) + "\n")
    again = run_playbook("playbooks/data.yml", tmp_path, variables)
    assert again.rc == 0, again.output[-3000:]
    assert "3,000 of ~3,000" not in again.output  # the previous run's last line is not shown as this run's
    rerun = last_run(pg, v2_db)[0]
    report = run_module("migration_report", {**conn_args(pg, v2_db), "run_id": rerun, "version": "2.0.0",
                                             "plan": PLAN, "report_dir": str(tmp_path / "reports"),
                                             "log_dir": str(tmp_path / "logs"), "data_model": False}, tmp_path)
    assert report.get("failed") is not True, report.get("msg")
    summary = report["summary"]
    assert summary["records_migrated_this_run"] == 0
    recorded = query(pg, v2_db, "SELECT sum(rows_updated) FROM migration_ops.batch_passes")[0][0]
    assert summary["records_migrated"] == recorded
    assert summary["records_migrated"] == 3000
    assert [b["name"] for b in summary["backfills"]] == [BACKFILL]
    assert "someone_else" not in Path(report["files"]["report_md"]).read_text()
    assert "1,231,842" not in Path(report["files"]["report_md"]).read_text()


def test_metrics_file_keeps_every_backfill_and_passes_promtool(pg, v2_db, tmp_path):
    promtool = "/usr/bin/promtool"
    if not os.path.exists(promtool):
        pytest.fail("promtool is missing: scripts/bootstrap.sh --services installs Debian's prometheus")
    metrics = tmp_path / "m" / "backfill.prom"
    base = {**conn_args(pg, v2_db), "table": "predictions", "metrics_file": str(metrics), "progress_interval_s": 0}
    for name, column in (("fill_confidence", "confidence"), ("fill_accuracy", "model_accuracy")):
        res = run_module("pg_batch_update", {**base, "name": name, "set": {column: column}}, tmp_path)
        assert res.get("failed") is not True, res.get("msg")
    text = metrics.read_text()
    assert 'backfill="fill_confidence"' in text and 'backfill="fill_accuracy"' in text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# ---------------------------------------------------------------------------------------
# 10. Incremental passes lose no row that a long transaction commits late
# ---------------------------------------------------------------------------------------
def test_incremental_watermark_waits_for_transactions_open_at_pass_start(pg, tmp_path):
    db = pg.create_database()
    try:
        conn = pg.connect(db)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL "
                        "DEFAULT now(), val integer NOT NULL, copied integer)")
            cur.execute("INSERT INTO events (val) SELECT g FROM generate_series(1, 300) g")
        conn.close()
        args = {**conn_args(pg, db), "name": "copy_val", "table": "events", "set": {"copied": "val"},
                "where": "copied IS NULL", "incremental": {"column": "created_at", "since_last_run": True},
                "batch_size": 50, "min_batch_size": 50}
        first = run_module("pg_batch_update", args, tmp_path)
        assert first.get("failed") is not True and first["rows_updated"] == 300, first.get("msg")

        # A transaction opens (its rows get created_at = its start), stays open across the next pass,
        # and commits after that pass has finished.
        late = pg.connect(db, autocommit=False)
        with late.cursor() as cur:
            cur.execute("INSERT INTO events (val) SELECT g FROM generate_series(1001, 1007) g")
        time.sleep(1.0)
        fresh = pg.connect(db)
        with fresh.cursor() as cur:
            cur.execute("INSERT INTO events (val) SELECT g FROM generate_series(2001, 2010) g")
        fresh.close()
        second = run_module("pg_batch_update", args, tmp_path)
        assert second.get("failed") is not True and second["rows_updated"] == 10, second.get("msg")
        late.commit()
        late.close()

        third = run_module("pg_batch_update", args, tmp_path)
        assert third.get("failed") is not True, third.get("msg")
        assert query(pg, db, "SELECT count(*) FROM events WHERE copied IS NULL")[0][0] == 0
        assert third["rows_updated"] == 7
    finally:
        pg.drop_database(db)


def test_incremental_overlap_moves_the_watermark_back(pg, tmp_path):
    """Rows stamped by the application before its transaction began are caught by the plan's overlap."""
    db = pg.create_database()
    try:
        conn = pg.connect(db)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, "
                        "val integer NOT NULL, copied integer)")
            cur.execute("INSERT INTO events (created_at, val) SELECT now(), g FROM generate_series(1, 50) g")
        args = {**conn_args(pg, db), "name": "copy_val", "table": "events", "set": {"copied": "val"},
                "where": "copied IS NULL",
                "incremental": {"column": "created_at", "since_last_run": True, "overlap_s": 60}}
        assert run_module("pg_batch_update", args, tmp_path)["rows_updated"] == 50
        with conn.cursor() as cur:  # stamped 30 s before it is written, after the pass
            cur.execute("INSERT INTO events (created_at, val) SELECT now() - interval '30 seconds', 99")
        conn.close()
        again = run_module("pg_batch_update", args, tmp_path)
        assert again.get("failed") is not True, again.get("msg")
        assert again["rows_updated"] == 1
    finally:
        pg.drop_database(db)
