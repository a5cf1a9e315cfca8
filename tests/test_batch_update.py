"""pg_batch_update against a real PostgreSQL, through real ansible-playbook runs.

Every backfill is compared row by row with a reference: the plan's SQL expressions
applied by one set-based UPDATE on an identical copy of the database.
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from backfill_helpers import checkpoints, checksum, module_pids, query, snapshot, start_module, wait_for_batches
from conftest import ROOT, conn_args, run_module, run_playbook
from psycopg2 import sql
from validate_helpers import database_state

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())
BACKFILL = PLAN["backfills"][0]
ACCURACY_SQL = BACKFILL["set"]["model_accuracy"]
APP_DIR = str(ROOT / "examples" / "football_prediction")
METRIC_NAMES = ["pgmigrate_backfill_rows_done", "pgmigrate_backfill_rows_expected",
                "pgmigrate_backfill_rows_per_second", "pgmigrate_backfill_eta_seconds",
                "pgmigrate_backfill_progress_ratio",
                "pgmigrate_backfill_batches_total", "pgmigrate_backfill_retries_total",
                "pgmigrate_backfill_holds_total", "pgmigrate_backfill_last_batch_seconds",
                "pgmigrate_backfill_batch_size", "pgmigrate_backfill_last_update_timestamp_seconds"]

# Transforms used only by the tests (written to a temp dir and put on python_path).
TEST_TRANSFORMS = '''
import os
import time
import transforms


def slow_accuracy(rows):
    time.sleep(0.03)
    return transforms.prediction_accuracy(rows)


def bump_confidence(rows):
    return [{"id": r["id"], "confidence": None if r["confidence"] is None else r["confidence"] + 1} for r in rows]


def count_keys(rows):
    return [{"id": r["id"], "n": len(r["body"])} for r in rows]


def fails_at_1500(rows):
    if any(r["id"] >= 1500 for r in rows):
        raise ValueError("cannot score prediction 1500")
    return transforms.prediction_accuracy(rows)
'''


@pytest.fixture
def reference_rows(pg, v2_template):
    """Rows after the plan's expressions applied by one set-based UPDATE."""
    name = pg.create_database(template=v2_template)
    conn = pg.connect(name)
    with conn.cursor() as cur:
        # The plan's expressions are operator SQL by design; the column names are identifiers.
        assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(col), sql.SQL(expr))
                                         for col, expr in BACKFILL["set"].items())
        cur.execute(sql.SQL("UPDATE predictions SET {}").format(assignments))
    conn.close()
    rows = snapshot(pg, name)
    pg.drop_database(name)
    return rows


@pytest.fixture
def helpers(tmp_path):
    d = tmp_path / "helpers"
    d.mkdir()
    (d / "test_only_transforms.py").write_text(TEST_TRANSFORMS)
    return str(d)


def plan_args(pg, db, tmp_path, **extra):
    args = {**conn_args(pg, db), "name": BACKFILL["name"], "table": BACKFILL["table"], "key": BACKFILL["key"],
            "set": BACKFILL["set"], "where": BACKFILL["where"], "batch_size": 400, "min_batch_size": 50,
            "progress_file": str(tmp_path / "progress.jsonl"), "metrics_file": str(tmp_path / "m" / "bf.prom"),
            "progress_interval_s": 0}
    args.update(extra)
    return args


def python_args(pg, db, tmp_path, function="transforms:prediction_accuracy", **extra):
    args = plan_args(pg, db, tmp_path, **extra)
    args.pop("set")
    args.update(python=function, python_path=[APP_DIR, *args.pop("extra_path", [])],
                columns=["model_accuracy", "feature_importance"])
    return args


# ---------------------------------------------------------------------------------------
def test_sql_backfill_equals_single_update_and_reruns_as_noop(pg, v2_db, reference_rows, tmp_path):
    first = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path), tmp_path)
    assert first.get("failed") is not True, first.get("msg")
    assert first["changed"] is True and first["rows_updated"] == 3000 and first["rows_done"] == 3000
    assert first["batches"] >= 3 and first["checkpoint"]["status"] == "done"
    assert snapshot(pg, v2_db) == reference_rows

    lines = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "done"
    assert {"ts", "backfill", "rows_done", "rows_total", "rate", "eta_s", "batch_size", "batch_ms",
            "holds"} <= set(lines[-1])
    assert lines[-1]["rows_done"] == lines[-1]["rows_total"] == 3000
    prom = (tmp_path / "m" / "bf.prom").read_text()
    for name in METRIC_NAMES:
        assert f'{name}{{backfill="predictions_accuracy",table="public.predictions",database="{v2_db}"}} ' in prom, name
    assert ('pgmigrate_backfill_progress_ratio{backfill="predictions_accuracy",table="public.predictions",'
            f'database="{v2_db}"}} 1.0') in prom

    second = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path), tmp_path)
    assert second["changed"] is False and second["rows_updated"] == 0
    assert snapshot(pg, v2_db) == reference_rows


def test_python_transform_with_workers_equals_single_update(pg, v2_db, reference_rows, tmp_path):
    res = run_module("pg_batch_update", python_args(pg, v2_db, tmp_path, workers=3), tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert res["rows_updated"] == 3000 and res["workers"] == 3
    assert snapshot(pg, v2_db) == reference_rows
    rows = checkpoints(pg, v2_db, BACKFILL["name"])
    assert len(rows) == 3 and all(r[1] == "done" for r in rows) and all(r[2] > 0 for r in rows)
    assert sum(r[2] for r in rows) == 3000 and sum(r[3] for r in rows) == 3000


def test_composite_key_and_incremental_window(pg, v2_db, tmp_path):
    conn = pg.connect(v2_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE scores (season int NOT NULL, team text NOT NULL, points int, label text, "
                    "created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (season, team))")
        cur.execute("INSERT INTO scores (season, team, points, created_at) SELECT s, 'team ' || t, s * t, "
                    "now() - (t || ' hours')::interval FROM generate_series(1, 20) s, generate_series(1, 50) t")
    conn.close()
    args = {**conn_args(pg, v2_db), "name": "scores_label", "table": "scores", "batch_size": 70, "min_batch_size": 70,
            "max_batch_size": 70,
            "set": {"label": "team || '@' || season || ':' || points"}}
    res = run_module("pg_batch_update", args, tmp_path)
    assert res["rows_updated"] == 1000 and res["batches"] >= 14
    assert query(pg, v2_db, "SELECT count(*) FROM scores WHERE label = team || '@' || season || ':' || points")[0][0] \
        == 1000

    # Incremental: only rows created in the last 10.5 hours (t <= 10), on another column.
    inc = dict(args, name="scores_recent", set={"points": "points + 100000"}, incremental={"hours": 10.5})
    res = run_module("pg_batch_update", inc, tmp_path)
    assert res["rows_updated"] == 200
    assert query(pg, v2_db, "SELECT count(*) FROM scores WHERE points >= 100000")[0][0] == 200

    # since_last_run: the first run takes everything, the next only rows created after the first started.
    since = dict(args, name="scores_since", set={"points": "points + 1"}, incremental={"since_last_run": True})
    assert run_module("pg_batch_update", since, tmp_path)["rows_updated"] == 1000
    query(pg, v2_db, "INSERT INTO scores (season, team, points) VALUES (99, 'new', 0)")
    res = run_module("pg_batch_update", since, tmp_path)
    assert res["rows_updated"] == 1
    assert query(pg, v2_db, "SELECT points FROM scores WHERE season = 99")[0][0] == 1


def test_check_mode_counts_and_changes_nothing(pg, v2_db, tmp_path):
    before = checksum(pg, v2_db)
    res = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path), tmp_path, check=True)
    assert res["changed"] is True and res["would_update"] == 3000
    assert 'UPDATE "public"."predictions" SET "model_accuracy"' in res["sql"]
    assert checksum(pg, v2_db) == before
    assert query(pg, v2_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'migration_ops'")[0][0] == 0
    py = run_module("pg_batch_update", python_args(pg, v2_db, tmp_path, where="actual_result IS NOT NULL"),
                    tmp_path, check=True)
    assert py["would_update"] == query(pg, v2_db, "SELECT count(*) FROM predictions WHERE actual_result IS NOT "
                                                  "NULL")[0][0]
    assert checksum(pg, v2_db) == before


ESCAPING_WHERE = "true); COMMIT; CREATE TABLE pwned_by_backfill (x int); SELECT (1"


@pytest.mark.parametrize(("field", "change", "why", "check"), [
    ("where", {"where": ESCAPING_WHERE}, "4 statements", False),
    ("where", {"where": ESCAPING_WHERE}, "4 statements", True),
    ("set.model_accuracy", {"set": {"model_accuracy": "1); COMMIT; CREATE TABLE pwned_by_backfill (x int); "
                                                      "SELECT (1"}}, "4 statements", False),
    ("where", {"where": "true -- \n; COMMIT; CREATE TABLE pwned_by_backfill (x int)"}, "statement separators",
     False),
    ("where", {"where": "id IN (WITH d AS (DELETE FROM teams RETURNING id) SELECT id FROM d)"},
     "data-modifying statement (DELETE)", False),
    ("set.model_accuracy", {"set": {"model_accuracy": "(SELECT 0.5 FROM teams LIMIT 1 FOR UPDATE)"}}, "FOR UPDATE",
     False),
])
def test_backfill_sql_is_refused_before_connecting(pg, v2_db, tmp_path, field, change, why, check):
    """The EXPLAIN pre-check used to send '... AND (true); COMMIT; CREATE TABLE ...' as one string:
    the COMMIT ended its transaction and the rest committed, and the message said nothing was changed."""
    before = database_state(pg, v2_db)
    res = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path, **change), tmp_path, check=check)
    assert database_state(pg, v2_db) == before
    assert res.get("failed") is True
    assert f"backfill {BACKFILL['name']}: {field}:" in res["msg"] and why in res["msg"], res["msg"]
    assert "is refused" in res["msg"] and "Traceback" not in res["msg"]


@pytest.mark.parametrize(("label", "change", "expected"), [
    ("hostile table", {"table": "predictions; DROP TABLE teams"}, "does not exist"),
    ("hostile column", {"set": {'model_accuracy" = 0; --': "1"}}, "does not exist in table public.predictions"),
    ("unknown column", {"set": {"model_acuracy": "1"}}, "'model_acuracy' does not exist"),
    ("syntax error", {"set": {"model_accuracy": "1 + (draw_prob"}}, "is not valid SQL: syntax error"),
    ("unknown column in expression", {"where": "no_such_column IS NULL"}, "no_such_column"),
    ("type mismatch", {"set": {"feature_importance": "draw_prob"}}, "is of type jsonb"),
    ("non-unique key", {"key": ["match_id"]}, "is not unique"),
    ("nullable key", {"key": ["actual_result"]}, "nullable"),
    ("missing function", {"python": "transforms:no_such_function", "columns": ["model_accuracy"], "set": None},
     "has no function 'no_such_function'"),
])
def test_bad_input_fails_clearly_and_changes_nothing(pg, v2_db, tmp_path, label, change, expected):
    before = {t: checksum(pg, v2_db, t) for t in ("predictions", "teams")}
    args = plan_args(pg, v2_db, tmp_path, python_path=[APP_DIR])
    args.update(change)
    args = {k: v for k, v in args.items() if v is not None}
    res = run_module("pg_batch_update", args, tmp_path)
    assert res.get("failed") is True, label
    assert expected in res["msg"], res["msg"]
    assert "Traceback" not in res["msg"]
    assert {t: checksum(pg, v2_db, t) for t in ("predictions", "teams")} == before
    assert query(pg, v2_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'migration_ops'")[0][0] == 0


def test_function_that_raises_keeps_earlier_batches(pg, v2_db, reference_rows, tmp_path, helpers):
    args = python_args(pg, v2_db, tmp_path, function="test_only_transforms:fails_at_1500", extra_path=[helpers],
                       batch_size=200, min_batch_size=200, max_batch_size=200)
    res = run_module("pg_batch_update", args, tmp_path)
    assert res.get("failed") is True
    assert "ValueError: cannot score prediction 1500" in res["msg"] and "rerun" in res["msg"]
    ck = res["checkpoint"]
    assert ck["status"] == "failed" and "cannot score prediction 1500" in ck["last_error"]
    last = int(ck["ranges"][0]["last_key"][0])
    assert last < 1500 and ck["rows_done"] == last == ck["rows_updated"]
    done = query(pg, v2_db, "SELECT max(id), count(*) FROM predictions WHERE feature_importance IS NOT NULL")[0]
    assert done == (last, last)  # every batch before the failing one stayed, the failing one rolled back
    ref = {r[0]: r for r in reference_rows}
    assert all(row == ref[row[0]] for row in snapshot(pg, v2_db) if row[0] <= last)

    # The operator fixes the function (same name, new code): the rerun resumes after the checkpoint.
    (Path(helpers) / "test_only_transforms.py").write_text(
        TEST_TRANSFORMS.replace('raise ValueError("cannot score prediction 1500")', "pass"))
    fixed = run_module("pg_batch_update", args, tmp_path)
    assert fixed["resumed"] is True and fixed["rows_done"] == 3000 - last
    assert snapshot(pg, v2_db) == reference_rows


def test_lock_timeout_halves_the_batch_and_retries(pg, v2_db, reference_rows, tmp_path):
    blocker = pg.connect(v2_db, autocommit=False)
    with blocker.cursor() as cur:
        cur.execute("SELECT id FROM predictions WHERE id = 1700 FOR UPDATE")
    timer = threading.Timer(3.0, blocker.rollback)
    timer.start()
    try:
        res = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path, lock_timeout="200ms"), tmp_path)
    finally:
        timer.join()
        blocker.close()
    assert res.get("failed") is not True, res.get("msg")
    assert res["retries"] >= 1 and res["rows_updated"] == 3000
    assert snapshot(pg, v2_db) == reference_rows
    events = [json.loads(x)["event"] for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert "retry" in events


def test_concurrent_result_updates_never_leave_a_stale_accuracy(pg, v2_db, tmp_path, helpers):
    """A writer (the 2.0.0 app) sets actual_result and its accuracy while the Python backfill runs."""
    stop = threading.Event()
    written: list[int] = []
    # The writer's accuracy is computed from the result it writes (v.r), as the 2.0.0 app does.
    writer_accuracy = ACCURACY_SQL.replace("actual_result", "v.r")
    thread = threading.Thread(target=lambda: writer_loop(pg, v2_db, stop, written, writer_accuracy))
    thread.start()
    try:
        res = run_module("pg_batch_update", python_args(pg, v2_db, tmp_path, function="test_only_transforms:"
                                                        "slow_accuracy", extra_path=[helpers], batch_size=60,
                                                        min_batch_size=60, max_batch_size=60), tmp_path)
    finally:
        stop.set()
        thread.join()
    assert res.get("failed") is not True, res.get("msg")
    assert len(written) > 100
    stale = query(pg, v2_db, f"SELECT count(*) FROM predictions WHERE model_accuracy IS DISTINCT FROM ({ACCURACY_SQL})")
    assert stale[0][0] == 0


def writer_loop(pg, db, stop, written, accuracy_expr):
    conn = pg.connect(db)
    rng = random.Random(5)
    with conn.cursor() as cur:
        while not stop.is_set():
            pid, result = rng.randint(1, 3000), rng.choice("HDA")
            cur.execute(sql.SQL("UPDATE predictions SET actual_result = v.r, model_accuracy = ({}) "
                                "FROM (SELECT %s::text AS r) v WHERE id = %s").format(sql.SQL(accuracy_expr)),
                        (result, pid))
            written.append(pid)
    conn.close()


# ---------------------------------------------------------------------------------------
# kill -9 at random points, then a rerun
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "victim", "transform"), [
    (1, "module", "sql"), (2, "module", "sql"), (3, "module", "sql"), (4, "ansible-playbook", "sql"),
    (5, "postgresql", "sql"), (6, "module", "python"), (7, "module", "python"), (8, "postgresql", "python")])
def test_kill_9_then_rerun_resumes_exactly(pg, v2_db, tmp_path, helpers, seed, victim, transform):
    """A non-idempotent backfill (confidence + 1, no where filter) shows any row done twice or skipped.
    The Python transform reads batch N+1 before it writes batch N: the kill must still lose nothing."""
    rng = random.Random(seed)
    original = dict(query(pg, v2_db, "SELECT id, confidence FROM predictions"))
    change = ({"set": {"confidence": "confidence + 1"}} if transform == "sql" else
              {"python": "test_only_transforms:bump_confidence", "python_path": [APP_DIR, helpers],
               "columns": ["confidence"], "read_columns": ["confidence"]})
    args = {**conn_args(pg, v2_db), "name": "bump_confidence", "table": "predictions", **change,
            "batch_size": 40, "min_batch_size": 40, "max_batch_size": 40,
            "pause_ms": 10, "workers": 1 + seed % 2, "progress_file": str(tmp_path / "p.jsonl")}
    proc = start_module(pg, v2_db, tmp_path, args)
    try:
        wait_for_batches(pg, v2_db, "bump_confidence", rng.randint(3, 40))
        time.sleep(rng.random() * 0.05)
        if victim == "module":
            for pid in module_pids():
                os.kill(pid, signal.SIGKILL)
        elif victim == "ansible-playbook":
            # ansible-playbook and everything it started (the module runs in a session of its own;
            # killed alone, ansible-playbook leaves the module to finish its pass).
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in module_pids():
                os.kill(pid, signal.SIGKILL)
        else:
            pg.cluster.stop("immediate")
            pg.cluster.start()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for _ in range(100):  # the killed backend's session (and its advisory lock) goes away
        if not module_pids():
            break
        time.sleep(0.05)
    partial = checkpoints(pg, v2_db, "bump_confidence")
    assert any(r[1] != "done" for r in partial), "the kill came after the end: no resume was tested"
    bumped = query(pg, v2_db, "SELECT count(*) FROM predictions WHERE confidence IS NOT NULL AND confidence > 1")[0][0]
    assert bumped == sum(r[3] for r in partial)  # committed batches and the checkpoint agree

    res = run_module("pg_batch_update", args, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert res["resumed"] is True
    final = dict(query(pg, v2_db, "SELECT id, confidence FROM predictions"))
    assert final == {k: (None if v is None else pytest.approx(v + 1, abs=1e-9)) for k, v in original.items()}
    rows = checkpoints(pg, v2_db, "bump_confidence")
    assert all(r[1] == "done" for r in rows)
    assert sum(r[2] for r in rows) == 3000  # keys walked: every row exactly once over both runs
    assert sum(r[3] for r in rows) == sum(1 for v in original.values() if v is not None)


def test_second_copy_of_a_running_backfill_is_refused(pg, v2_db, tmp_path):
    args = {**conn_args(pg, v2_db), "name": "slow_one", "table": "predictions",
            "set": {"confidence": "confidence"}, "batch_size": 20, "min_batch_size": 20, "max_batch_size": 20,
            "pause_ms": 100}
    proc = start_module(pg, v2_db, tmp_path, args)
    try:
        wait_for_batches(pg, v2_db, "slow_one", 2)
        res = run_module("pg_batch_update", args, tmp_path)
        assert res.get("failed") is True and "already running" in res["msg"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_health_checks_run_and_say_what_they_cannot_check(pg, v2_db, reference_rows, tmp_path):
    """No standby lags and no vacuum runs: no hold.  The archive backlog needs pg_monitor: a warning says so."""
    res = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path, max_replication_lag_s=0,
                                                  hold_on_autovacuum=True, max_archive_backlog=0, hold_poll_s=0.2),
                     tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert res["holds"] == {"count": 0, "seconds": 0.0, "reasons": {}}
    assert any("WAL archive backlog is not checked" in w for w in res.get("warnings", []))
    assert snapshot(pg, v2_db) == reference_rows


def test_vacuum_on_the_table_holds_the_backfill(pg, v2_db, tmp_path):
    """A vacuum running on the table (held up by a lock on a page) makes the backfill wait and say why."""
    blocker = pg.connect(v2_db, autocommit=False)
    with blocker.cursor() as cur:  # an open cursor pins a buffer page: VACUUM waits for its cleanup lock
        cur.execute("DECLARE c CURSOR FOR SELECT id FROM predictions")
        cur.execute("FETCH 1 FROM c")
    vacuum = threading.Thread(target=lambda: query(pg, v2_db, "VACUUM (FREEZE) predictions"))
    vacuum.start()
    time.sleep(1.0)

    def release_once_held() -> None:
        """Free the vacuum once the backfill has said it holds for it (not after a fixed time: on a loaded machine
        ansible-playbook may start the module after a fixed timer has already let the vacuum finish)."""
        progress = tmp_path / "progress.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if progress.exists() and '"event": "hold"' in progress.read_text():
                break
            time.sleep(0.2)
        blocker.rollback()

    timer = threading.Thread(target=release_once_held)
    timer.start()
    try:
        res = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path, hold_on_autovacuum=True,
                                                      hold_poll_s=0.5), tmp_path)
    finally:
        timer.join()
        blocker.close()
        vacuum.join()
    assert res.get("failed") is not True, res.get("msg")
    assert res["holds"]["count"] >= 1 and res["holds"]["reasons"].get("vacuum", 0) >= 1
    holds = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()
             if json.loads(x)["event"] == "hold"]
    assert holds and "is vacuuming public.predictions" in holds[0]["reason"]
    assert res["rows_updated"] == 3000


def test_data_phase_playbook_check_then_run(pg, v2_db, reference_rows, tmp_path):
    """playbooks/data.yml: check mode counts and changes nothing; the real run fills every row and
    records the backfill with the phase in the ledger; a second run changes nothing."""
    extra = {**pg.conn_vars(v2_db), "version": "2.0.0", "pgmigrate_log_dir": str(tmp_path / "logs"),
             "data_migrate_poll_interval": 1}
    before = checksum(pg, v2_db)
    check = run_playbook("playbooks/data.yml", tmp_path, extra, "--check")
    assert check.rc == 0, check.output[-3000:]
    assert "would update 3000 row(s)" in check.output
    assert checksum(pg, v2_db) == before

    real = run_playbook("playbooks/data.yml", tmp_path, extra)
    assert real.rc == 0, real.output[-3000:]
    assert "Follow backfill predictions_accuracy" in real.output and "done: 3,000 of ~3,000 rows" in real.output
    assert snapshot(pg, v2_db) == reference_rows
    facts = query(pg, v2_db, "SELECT phases->'data' FROM migration_ops.runs ORDER BY id DESC LIMIT 1")[0][0]
    assert facts["status"] == "succeeded"
    assert facts["facts"]["backfills"][0]["rows_updated"] == 3000
    assert facts["facts"]["backfills"][0]["checkpoint"] == "done"

    again = run_playbook("playbooks/data.yml", tmp_path, extra)
    assert again.rc == 0
    facts = query(pg, v2_db, "SELECT phases->'data' FROM migration_ops.runs ORDER BY id DESC LIMIT 1")[0][0]
    assert facts["facts"]["rows_updated"] == 0


# ---------------------------------------------------------------------------------------
# A row changed between the Python transform's read and its write
# ---------------------------------------------------------------------------------------
WRITER_FIXTURES = str(ROOT / "tests" / "fixtures" / "concurrent_writer")


@pytest.fixture
def write_log(pg, v2_db):
    """Every UPDATE of a prediction, with the session that made it."""
    query(pg, v2_db, "CREATE TABLE write_log (id bigint NOT NULL, pid integer NOT NULL)")
    query(pg, v2_db, "CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$BEGIN INSERT INTO write_log VALUES (NEW.id, pg_backend_pid()); RETURN NEW; END$$")
    query(pg, v2_db, "CREATE TRIGGER log_write AFTER UPDATE ON predictions FOR EACH ROW EXECUTE FUNCTION log_write()")


def writer_env(pg, db, tmp_path) -> dict:
    config = tmp_path / "writer.json"
    config.write_text(json.dumps({"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password,
                                  "dbname": db, "application_name": "concurrent-writer"}))
    config.chmod(0o600)
    return {"PGMIGRATE_TEST_WRITER": str(config)}


def test_row_changed_between_read_and_write_is_retried_never_overwritten(pg, v2_db, write_log, tmp_path):
    """During the transform of the first batch a second session commits: the app's own values for
    101-110 (both written columns), a new result for 111-120 (an input the transform reads).
    The writer's values survive, 111-120 get the transform of their new inputs, and every other
    row is written exactly once by the backfill."""
    before = dict(query(pg, v2_db, "SELECT id, actual_result FROM predictions WHERE id BETWEEN 111 AND 120"))
    args = python_args(pg, v2_db, tmp_path, function="interfering_transforms:writer_during_first_batch",
                       extra_path=[WRITER_FIXTURES], batch_size=400, min_batch_size=400, max_batch_size=400)
    res = run_module("pg_batch_update", args, tmp_path, env=writer_env(pg, v2_db, tmp_path))
    assert res.get("failed") is not True, res.get("msg")

    # The writer committed while the batch was being transformed (its lock_timeout would have failed it
    # if the batch's rows had been locked), so 20 rows of the batch changed between read and write.
    assert res["conflicts"] == 1 and res["rows_retried"] == 20, res
    assert res["rows_done"] == 3000 and res["rows_updated"] == 2990

    app_rows = query(pg, v2_db, "SELECT model_accuracy, feature_importance::text FROM predictions "
                                "WHERE id BETWEEN 101 AND 110")
    assert app_rows == [(0.125, '{"written_by": "app"}')] * 10
    changed = dict(query(pg, v2_db, "SELECT id, actual_result FROM predictions WHERE id BETWEEN 111 AND 120"))
    assert all(changed[i] != before[i] for i in before)
    stale = query(pg, v2_db, f"SELECT count(*) FROM predictions WHERE id NOT BETWEEN 101 AND 110 AND "
                             f"(model_accuracy IS DISTINCT FROM ({ACCURACY_SQL}) OR feature_importance IS NULL)")
    assert stale[0][0] == 0

    # Exactly once: the writer's session wrote 20 rows once each; the backfill wrote every row but the
    # app's ten once (111-120 only after their re-read), and never the app's ten.
    per_row = query(pg, v2_db, "SELECT id, count(*) FROM write_log GROUP BY id HAVING count(*) <> 1 AND "
                               "id NOT BETWEEN 111 AND 120")
    assert per_row == []
    assert query(pg, v2_db, "SELECT id, count(*) FROM write_log WHERE id BETWEEN 111 AND 120 GROUP BY id "
                            "HAVING count(*) <> 2") == []
    assert query(pg, v2_db, "SELECT count(DISTINCT pid) FROM write_log")[0][0] == 2
    events = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [e["rows"] for e in events if e["event"] == "conflict"] == [20]
    assert events[-1]["rows_retried"] == 20


def test_row_that_keeps_changing_fails_the_batch_clearly(pg, v2_db, tmp_path):
    """A row changed before every guarded write: after max_retries rounds the batch is rolled back and
    the module says which key, instead of overwriting it or dropping it."""
    args = python_args(pg, v2_db, tmp_path, function="interfering_transforms:writer_that_never_stops",
                       extra_path=[WRITER_FIXTURES], max_retries=2)
    res = run_module("pg_batch_update", args, tmp_path, env=writer_env(pg, v2_db, tmp_path))
    assert res.get("failed") is True
    assert "1 row(s) changed between the read and the guarded write in 3 rounds in a row (max_retries=2); " \
           "keys ['50']" in res["msg"], res["msg"]
    assert query(pg, v2_db, "SELECT count(*) FROM predictions WHERE feature_importance IS NOT NULL")[0][0] == 0
    rows = checkpoints(pg, v2_db, BACKFILL["name"])
    assert rows[0][1] == "failed" and rows[0][2] == 0


def test_guard_compares_types_without_equality_as_text(pg, v2_db, tmp_path, helpers):
    """json has no '=' operator: the guarded write compares such a column in its text form."""
    query(pg, v2_db, "CREATE TABLE docs (id int PRIMARY KEY, body json NOT NULL, n int)")
    query(pg, v2_db, "INSERT INTO docs SELECT i, json_build_object('a', i, 'b', repeat('x', mod(i, 7))) "
                     "FROM generate_series(1, 500) i")
    args = {**conn_args(pg, v2_db), "name": "docs_n", "table": "docs", "python": "test_only_transforms:count_keys",
            "python_path": [APP_DIR, helpers], "columns": ["n"], "batch_size": 120, "min_batch_size": 120,
            "max_batch_size": 120}
    res = run_module("pg_batch_update", args, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert res["rows_updated"] == 500 and res["rows_retried"] == 0
    assert query(pg, v2_db, "SELECT count(*) FROM docs WHERE n = 2")[0][0] == 500


# --- the foreground latency budget (max_foreground_p99_ms) ------------------------------
def probe_processes() -> list[int]:
    """Pids of pace probe processes (python -c PROBE_PROCESS) still running (other tests' too: ask for one pid)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"QueryCanceled" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def pace_lines(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]


def test_budget_it_cannot_keep_slows_it_down_step_by_step_and_says_so(pg, v2_db, reference_rows, tmp_path, helpers):
    """A budget no server can keep (1 us): every decision finds the probes over it, so the pace takes
    one step slower each time, in order (a worker fewer, shorter batches, longer pauses up to
    max_pause_ms), then says the latency is not the backfill's alone. The rows are the same."""
    args = python_args(pg, v2_db, tmp_path, function="test_only_transforms:slow_accuracy", extra_path=[helpers],
                       batch_size=5, min_batch_size=5, max_batch_size=5, workers=2,
                       max_foreground_p99_ms=0.001, max_pause_ms=20)
    res = run_module("pg_batch_update", args, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert snapshot(pg, v2_db) == reference_rows
    pace = res["pace"]
    assert pace["enabled"] is True and pace["budget_ms"] == 0.001 and pace["probes"] >= 100 * 6, pace
    # The probe ran as a process of its own (a thread of the module would time its wait for the GIL), and ended.
    assert pace["probe"] == "process", pace
    assert pace["probe_pid"] not in probe_processes()
    assert pace["foreground_p99_ms"] > 0.001
    steps = [(d["workers"], d["target_batch_ms"], d["pause_ms"]) for d in pace["last_decisions"]]
    assert all(d["why"] == "over the budget" for d in pace["last_decisions"])
    assert steps == [(1, 100.0, 0.0), (1, 50.0, 0.0), (1, 25.0, 0.0), (1, 20.0, 0.0), (1, 20.0, 20.0)], steps
    assert pace["workers_used"] == [1, 2] and pace["pause_ms_used"] == [0.0, 20.0]
    assert pace["over_budget_at_slowest"] >= 1
    assert any("stayed over max_foreground_p99_ms=0.001 ms at the slowest pace (1 worker, 20 ms batches, 20 ms "
               "pauses)" in w for w in res.get("warnings", [])), res.get("warnings")
    # Each decision is a line of its own, and every line carries the pace's current figures.
    lines = pace_lines(tmp_path)
    decided = [(x["workers_active"], x["target_batch_ms"], x["pause_ms"]) for x in lines if x["event"] == "pace"]
    assert decided == steps
    assert all({"workers_active", "target_batch_ms", "pause_ms", "foreground_p99_ms", "foreground_budget_ms"}
               <= set(x) for x in lines)
    prom = (tmp_path / "m" / "bf.prom").read_text()
    labels = f'{{backfill="predictions_accuracy",table="public.predictions",database="{v2_db}"}}'
    assert f"pgmigrate_backfill_workers_active{labels} 1" in prom
    assert f"pgmigrate_backfill_pause_seconds{labels} 0.02" in prom
    assert f"pgmigrate_backfill_foreground_budget_seconds{labels} 1e-06" in prom
    assert f"pgmigrate_backfill_foreground_p99_seconds{labels} " in prom


def test_budget_with_room_raises_the_workers_up_to_max_workers(pg, v2_db, reference_rows, tmp_path, helpers):
    """A budget far above what the probes measure: the pace adds a worker per decision up to max_workers
    (the key space is cut into max_workers ranges, each with its own checkpoint)."""
    args = python_args(pg, v2_db, tmp_path, function="test_only_transforms:slow_accuracy", extra_path=[helpers],
                       batch_size=10, min_batch_size=10, max_batch_size=10, workers=1, max_workers=3,
                       max_foreground_p99_ms=60_000)
    res = run_module("pg_batch_update", args, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert snapshot(pg, v2_db) == reference_rows
    pace = res["pace"]
    assert [(d["workers"], d["why"]) for d in pace["last_decisions"]] == [(2, "under half the budget"),
                                                                          (3, "under half the budget")], pace
    assert pace["workers_used"] == [1, 2, 3] and pace["max_workers"] == 3 and pace["pause_ms_used"] == [0.0]
    rows = checkpoints(pg, v2_db, BACKFILL["name"])
    assert len(rows) == 3 and all(r[1] == "done" for r in rows) and sum(r[2] for r in rows) == 3000


def test_budget_zero_turns_the_pace_off(pg, v2_db, reference_rows, tmp_path):
    res = run_module("pg_batch_update", plan_args(pg, v2_db, tmp_path, max_foreground_p99_ms=0, workers=2),
                     tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert snapshot(pg, v2_db) == reference_rows
    assert res["pace"]["enabled"] is False and res["pace"]["probes"] == 0 and res["pace"]["decisions"] == 0
    assert res["pace"]["workers_used"] == [2]
    assert not any("workers_active" in x for x in pace_lines(tmp_path))
    assert "pgmigrate_backfill_workers_active" not in (tmp_path / "m" / "bf.prom").read_text()
