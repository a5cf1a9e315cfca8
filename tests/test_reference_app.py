"""The reference application (examples/football_prediction) against a real PostgreSQL.

Alembic revisions up and down with the data intact, the seeder's data, the offline SQL,
the lock timeout, and the HTTP API run as a real process.  Uses the session fixture
``pg`` from conftest.py (host, port, user, password, create_database(), env()).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest
from pgcluster import free_port
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "football_prediction"
ALEMBIC_INI = APP_DIR / "alembic.ini"
V1_PREDICTION_COLUMNS = ("id", "match_id", "model_version", "home_win_prob", "draw_prob", "away_win_prob",
                         "predicted_result", "actual_result", "confidence", "created_at", "updated_at")
V2_COLUMNS = {"model_accuracy": "double precision", "feature_importance": "jsonb"}
V2_INDEX = "idx_predictions_model_accuracy"


# --- helpers ----------------------------------------------------------------------------
def db_env(pg, dbname: str, **extra: str) -> dict:
    env = pg.env(dbname)
    for inherited in ("DATABASE_URL", "APP_COLOUR", "APP_VERSION", "APP_HOST", "APP_PORT"):
        env.pop(inherited, None)  # the tools must find the database through libpq's PG* variables alone
    env["PGCONNECT_TIMEOUT"] = "5"
    env.update(extra)
    return env


def alembic(pg, dbname: str, *args: str, check: bool = True, env: dict | None = None):
    proc = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
                          env=env or db_env(pg, dbname), capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"alembic {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def seed(pg, dbname: str, predictions: int, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(APP_DIR / "seed.py"), "--predictions", str(predictions), *extra],
                          env=db_env(pg, dbname), capture_output=True, text=True, cwd=ROOT, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"seed failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@contextmanager
def connect(pg, dbname: str) -> Iterator:
    conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=dbname)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def scalar(conn, query: str, params: tuple = ()):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def drop_database(pg, name: str) -> None:
    if hasattr(pg, "drop_database"):
        pg.drop_database(name)
        return
    with connect(pg, "postgres") as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_db(pg) -> Iterator[str]:
    name = pg.create_database(f"ref_{os.getpid()}_{time.monotonic_ns() % 10**9}")
    yield name
    drop_database(pg, name)


def columns_of(conn, table: str) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute("SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = %s", (table,))
        return dict(cur.fetchall())


def index_exists(conn, name: str) -> bool:
    return scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",))


def revision(conn) -> str | None:
    if not scalar(conn, "SELECT to_regclass('public.alembic_version') IS NOT NULL"):
        return None
    return scalar(conn, "SELECT string_agg(version_num, ',') FROM alembic_version")


def checksum(conn, table: str, columns: tuple[str, ...] | None = None) -> str:
    """md5 over every row (or the given columns) in primary-key order."""
    row = sql.SQL("t") if columns is None else sql.SQL("ROW({})").format(
        sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in columns))
    query = sql.SQL("SELECT md5(coalesce(string_agg({row}::text, '|' ORDER BY t.id), '')) || ':' || count(*)"
                    " FROM {table} t").format(row=row, table=sql.Identifier(table))
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


def data_checksums(conn) -> dict[str, str]:
    return {"teams": checksum(conn, "teams"), "matches": checksum(conn, "matches"),
            "predictions": checksum(conn, "predictions", V1_PREDICTION_COLUMNS)}


# --- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeded(pg) -> Iterator[tuple[str, str]]:
    """A database at v1_0_0 with 5,000 seeded predictions: (name, seed output)."""
    name = pg.create_database(f"ref_seeded_{os.getpid()}")
    try:
        alembic(pg, name, "upgrade", "v1_0_0")
        out = seed(pg, name, 5000, "--seed", "42")
        yield name, out.stdout
    finally:
        drop_database(pg, name)


# --- Alembic ----------------------------------------------------------------------------
def test_revisions_form_one_line_from_v1_to_v2(pg):
    proc = alembic(pg, "unused", "history", env=db_env(pg, "unused"))
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("v1_0_0 -> v2_0_0 (head)")
    assert lines[1].startswith("<base> -> v1_0_0")
    assert len(lines) == 2


def test_offline_sql_prints_the_ddl_without_touching_a_database(pg):
    # Port 1 on loopback: any attempt to connect would fail the command.
    env = db_env(pg, "nowhere", PGHOST="127.0.0.1", PGPORT="1")
    proc = alembic(pg, "nowhere", "-x", "lock_timeout=2s", "-x", "statement_timeout=10min",
                   "upgrade", "v2_0_0", "--sql", env=env)
    ddl = proc.stdout
    for table in ("teams", "matches", "predictions"):
        assert f"CREATE TABLE {table} (" in ddl
    for index in ("idx_predictions_match_id", "idx_predictions_created_at", "idx_matches_kickoff_at", V2_INDEX):
        assert f"CREATE INDEX {index} ON" in ddl
    assert "ALTER TABLE predictions ADD COLUMN model_accuracy FLOAT;" in ddl
    assert "ALTER TABLE predictions ADD COLUMN feature_importance JSONB;" in ddl
    assert "SET lock_timeout = '2s';" in ddl and "SET statement_timeout = '10min';" in ddl
    # One transaction for the whole upgrade, timeouts set inside it before any DDL.
    assert ddl.count("BEGIN;") == 1 and ddl.count("COMMIT;") == 1
    assert ddl.index("BEGIN;") < ddl.index("SET lock_timeout") < ddl.index("CREATE TABLE teams")
    assert ddl.rstrip().endswith("COMMIT;")
    assert "UPDATE alembic_version SET version_num='v2_0_0'" in ddl

    only_v2 = alembic(pg, "nowhere", "upgrade", "v1_0_0:v2_0_0", "--sql", env=env).stdout
    assert "CREATE TABLE" not in only_v2 and f"CREATE INDEX {V2_INDEX}" in only_v2

    down = alembic(pg, "nowhere", "downgrade", "v2_0_0:v1_0_0", "--sql", env=env).stdout
    assert down.index(f"DROP INDEX {V2_INDEX}") < down.index("ALTER TABLE predictions DROP COLUMN")


def test_bad_timeout_value_is_refused_before_connecting(pg, fresh_db):
    proc = alembic(pg, fresh_db, "-x", "lock_timeout=2s; DROP TABLE teams", "upgrade", "v1_0_0", check=False)
    assert proc.returncode != 0
    assert "invalid -x lock_timeout" in proc.stderr
    with connect(pg, fresh_db) as conn:
        assert revision(conn) is None


def test_lock_timeout_aborts_the_whole_upgrade(pg, fresh_db):
    alembic(pg, fresh_db, "upgrade", "v1_0_0")
    with connect(pg, fresh_db) as blocker:
        blocker.autocommit = False
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE predictions IN ACCESS SHARE MODE")  # conflicts with ALTER TABLE
        started = time.monotonic()
        proc = alembic(pg, fresh_db, "-x", "lock_timeout=1s", "upgrade", "v2_0_0", check=False)
        waited = time.monotonic() - started
        blocker.rollback()
    assert proc.returncode != 0
    assert "lock timeout" in proc.stderr
    assert waited < 30
    with connect(pg, fresh_db) as conn:
        assert revision(conn) == "v1_0_0"
        assert not set(V2_COLUMNS) & set(columns_of(conn, "predictions"))
    alembic(pg, fresh_db, "-x", "lock_timeout=1s", "upgrade", "v2_0_0")
    with connect(pg, fresh_db) as conn:
        assert revision(conn) == "v2_0_0"


def test_v1_schema(pg, fresh_db):
    alembic(pg, fresh_db, "upgrade", "v1_0_0")
    with connect(pg, fresh_db) as conn:
        assert revision(conn) == "v1_0_0"
        assert set(columns_of(conn, "predictions")) == set(V1_PREDICTION_COLUMNS)
        assert columns_of(conn, "matches")["status"] == "text"
        for index in ("idx_predictions_match_id", "idx_predictions_created_at", "idx_matches_kickoff_at"):
            assert index_exists(conn, index)
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute("INSERT INTO matches (home_team_id, away_team_id, kickoff_at, status)"
                        " VALUES (1, 2, now(), 'abandoned')")
    alembic(pg, fresh_db, "downgrade", "base")
    with connect(pg, fresh_db) as conn:
        assert revision(conn) is None
        for table in ("teams", "matches", "predictions"):
            assert scalar(conn, "SELECT to_regclass(%s)", (f"public.{table}",)) is None


def test_upgrade_and_downgrade_keep_the_data(pg, fresh_db):
    alembic(pg, fresh_db, "upgrade", "v1_0_0")
    seed(pg, fresh_db, 2000, "--seed", "5")
    with connect(pg, fresh_db) as conn:
        before = data_checksums(conn)
        assert before["predictions"].endswith(":2000")

    alembic(pg, fresh_db, "upgrade", "v2_0_0")
    with connect(pg, fresh_db) as conn:
        assert revision(conn) == "v2_0_0"
        columns = columns_of(conn, "predictions")
        assert {name: columns.get(name) for name in V2_COLUMNS} == V2_COLUMNS
        assert index_exists(conn, V2_INDEX)
        assert scalar(conn, "SELECT count(*) FROM predictions WHERE model_accuracy IS NOT NULL"
                            " OR feature_importance IS NOT NULL") == 0
        assert data_checksums(conn) == before
        # What the 2.0.0 backfill would write must be thrown away by the downgrade.
        with conn.cursor() as cur:
            cur.execute("UPDATE predictions SET model_accuracy = 0.5, feature_importance = '{\"form\": 1}'"
                        " WHERE id <= 100")

    alembic(pg, fresh_db, "downgrade", "v1_0_0")
    with connect(pg, fresh_db) as conn:
        assert revision(conn) == "v1_0_0"
        assert set(columns_of(conn, "predictions")) == set(V1_PREDICTION_COLUMNS)
        assert not index_exists(conn, V2_INDEX)
        assert data_checksums(conn) == before
        # Whole-row checksum too: no column left behind.
        assert checksum(conn, "predictions") == checksum(conn, "predictions", V1_PREDICTION_COLUMNS)

    alembic(pg, fresh_db, "upgrade", "v2_0_0")  # and forward again
    with connect(pg, fresh_db) as conn:
        assert revision(conn) == "v2_0_0" and index_exists(conn, V2_INDEX)


# --- seed -------------------------------------------------------------------------------
def test_seed_inserts_consistent_data(pg, seeded):
    name, output = seeded
    assert "5,000 predictions" in output and "/s" in output
    with connect(pg, name) as conn:
        assert scalar(conn, "SELECT count(*) FROM predictions") == 5000
        assert scalar(conn, "SELECT count(*) FROM teams") == 40
        assert scalar(conn, "SELECT count(*) FROM matches") == math.ceil(5000 / 3)
        # Up to one prediction per model version per match.
        assert scalar(conn, "SELECT max(n) FROM (SELECT count(*) n FROM predictions"
                            " GROUP BY match_id, model_version) s") == 1
        assert scalar(conn, "SELECT count(DISTINCT model_version) FROM predictions") == 3
        assert scalar(conn, "SELECT count(*) FROM matches WHERE home_team_id = away_team_id") == 0
        # Probabilities: each in (0, 1), summing to 1.
        assert scalar(conn, "SELECT max(abs(home_win_prob + draw_prob + away_win_prob - 1)) FROM predictions") < 1e-9
        assert scalar(conn, "SELECT count(*) FROM predictions WHERE least(home_win_prob, draw_prob, away_win_prob) <= 0"
                            " OR greatest(home_win_prob, draw_prob, away_win_prob) >= 1") == 0
        # predicted_result is the argmax, confidence the largest probability.
        assert scalar(conn, """
            SELECT count(*) FROM predictions WHERE predicted_result <> CASE
                WHEN home_win_prob >= draw_prob AND home_win_prob >= away_win_prob THEN 'H'
                WHEN draw_prob >= away_win_prob THEN 'D' ELSE 'A' END
               OR confidence <> greatest(home_win_prob, draw_prob, away_win_prob)""") == 0
        # actual_result exactly on finished matches, consistent with the score.
        assert scalar(conn, """
            SELECT count(*) FROM predictions p JOIN matches m ON m.id = p.match_id
             WHERE (m.status = 'finished') <> (p.actual_result IS NOT NULL)
                OR (p.actual_result IS NOT NULL) <> (p.updated_at IS NOT NULL)
                OR p.actual_result <> CASE WHEN m.home_score > m.away_score THEN 'H'
                                           WHEN m.home_score = m.away_score THEN 'D' ELSE 'A' END""") == 0
        assert scalar(conn, "SELECT count(*) FROM matches WHERE status = 'finished'"
                            " AND (home_score IS NULL OR away_score IS NULL OR kickoff_at > now())") == 0
        finished_share = scalar(conn, "SELECT avg((actual_result IS NOT NULL)::int)::float FROM predictions")
        assert 0.7 <= finished_share <= 0.9
        # created_at: a year of history, some of it in the last 24 hours, none in the future.
        with conn.cursor() as cur:
            cur.execute("SELECT min(created_at), max(created_at),"
                        " count(*) FILTER (WHERE created_at > now() - interval '24 hours'),"
                        " now() - interval '366 days', now() - interval '300 days', now() FROM predictions")
            oldest, newest, last_day, year_ago, long_ago, now = cur.fetchone()
        assert year_ago <= oldest <= long_ago
        assert newest <= now
        assert 0 < last_day < 5000 * 0.2
        assert scalar(conn, "SELECT count(*) FROM predictions p JOIN matches m ON m.id = p.match_id"
                            " WHERE m.status <> 'scheduled' AND p.created_at > m.kickoff_at") == 0
        # The 1.0.0 schema only, ANALYZEd afterwards, sequences past the explicit match ids.
        assert set(columns_of(conn, "predictions")) == set(V1_PREDICTION_COLUMNS)
        assert scalar(conn, "SELECT reltuples FROM pg_class WHERE oid = 'predictions'::regclass") == 5000
        assert scalar(conn, "SELECT last_value FROM matches_id_seq") == scalar(conn, "SELECT max(id) FROM matches")


def test_seed_if_empty_inserts_nothing_the_second_time(pg, seeded):
    name, _ = seeded
    with connect(pg, name) as conn:
        before = data_checksums(conn)
    out = seed(pg, name, 5000, "--seed", "42", "--if-empty")
    assert "nothing inserted" in out.stdout
    with connect(pg, name) as conn:
        assert data_checksums(conn) == before


def test_seed_is_deterministic_for_a_seed_and_anchor(pg):
    names = [pg.create_database(f"ref_det{i}_{os.getpid()}") for i in range(2)]
    try:
        sums = []
        for name in names:
            alembic(pg, name, "upgrade", "v1_0_0")
            seed(pg, name, 1500, "--seed", "3", "--teams", "12", "--anchor", "2024-05-01T12:00:00+00:00")
            with connect(pg, name) as conn:
                sums.append(data_checksums(conn))
                assert scalar(conn, "SELECT max(created_at) FROM predictions") <= datetime.fromisoformat(
                    "2024-05-01T12:00:00+00:00")
        assert sums[0] == sums[1]
        assert sums[0]["teams"].endswith(":12")
    finally:
        for name in names:
            drop_database(pg, name)


def test_seed_appends_and_keeps_ids_consistent_without_if_empty(pg, fresh_db):
    alembic(pg, fresh_db, "upgrade", "v2_0_0")  # also: the seeder works on the 2.0.0 schema
    seed(pg, fresh_db, 300, "--seed", "1")
    seed(pg, fresh_db, 300, "--seed", "2")
    with connect(pg, fresh_db) as conn:
        assert scalar(conn, "SELECT count(*) FROM predictions") == 600
        assert scalar(conn, "SELECT count(*) FROM teams") == 40  # reused, not duplicated
        assert scalar(conn, "SELECT count(*) FROM matches") == 200
        assert scalar(conn, "SELECT count(*) FROM predictions WHERE model_accuracy IS NOT NULL"
                            " OR feature_importance IS NOT NULL") == 0
        with conn.cursor() as cur:  # the sequence still hands out free ids
            cur.execute("INSERT INTO matches (home_team_id, away_team_id, kickoff_at)"
                        " SELECT min(id), max(id), now() FROM teams RETURNING id")
            assert cur.fetchone()[0] == 201


# --- the API ----------------------------------------------------------------------------
def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Api:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def get(self, path: str) -> tuple[int, dict]:
        return get(self.port, path)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_api(pg) -> Iterator:
    started: list[Api] = []
    logdir = Path(tempfile.mkdtemp(prefix="ref-api-"))

    def start(dbname: str, version: str, **env: str) -> Api:
        port = free_port()
        log = logdir / f"api-{port}.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, str(APP_DIR / "app.py"), "--host", "127.0.0.1",
                                     "--port", str(port), "--app-version", version],
                                    env=db_env(pg, dbname, **env), stdout=subprocess.DEVNULL, stderr=stderr)
        api = Api(proc, port, log)
        started.append(api)
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"app exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return api
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"app did not listen within 20s:\n{log.read_text()}") from None
                time.sleep(0.1)

    try:
        yield start
    finally:
        for api in started:
            api.stop()
        subprocess.run(["rm", "-rf", str(logdir)], check=False)


def db_row(conn, prediction_id: int) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM predictions WHERE id = %s", (prediction_id,))
        return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def assert_matches_row(body: dict, row: dict) -> None:
    assert set(body) == set(row)
    for key, value in row.items():
        if isinstance(value, datetime):
            assert datetime.fromisoformat(body[key]) == value, key
        else:
            assert body[key] == value, key


def test_api_serves_health_and_predictions_from_the_database(pg, seeded, start_api):
    name, _ = seeded
    api = start_api(name, "1.0.0", APP_COLOUR="green")
    assert api.get("/health") == (200, {"status": "ok", "version": "1.0.0", "db_revision": "v1_0_0",
                                        "colour": "green"})
    with connect(pg, name) as conn:
        finished = scalar(conn, "SELECT min(id) FROM predictions WHERE actual_result IS NOT NULL")
        pending = scalar(conn, "SELECT min(id) FROM predictions WHERE actual_result IS NULL")
        rows = [db_row(conn, finished), db_row(conn, pending)]
        missing = scalar(conn, "SELECT max(id) + 1000 FROM predictions")
    for row in rows:
        status, body = api.get(f"/predictions/{row['id']}")
        assert status == 200
        assert isinstance(body["home_win_prob"], float)
        assert_matches_row(body, row)
    assert rows[1]["actual_result"] is None and api.get(f"/predictions/{pending}")[1]["actual_result"] is None

    status, body = api.get(f"/predictions/{missing}")
    assert status == 404 and "not found" in body["error"]
    for path in ("/predictions/abc", "/predictions/-1", "/predictions/", "/nothing-here", "/"):
        assert api.get(path)[0] == 404, path

    assert api.stop() == 0  # SIGTERM: clean exit
    log = api.log.read_text()
    assert log.count('"GET ') == 1 + 2 + 1 + 1 + 5  # one line per request made above
    assert '"GET /health HTTP/1.1" 200' in log


def test_api_returns_the_2_0_0_columns(pg, fresh_db, start_api):
    alembic(pg, fresh_db, "upgrade", "v2_0_0")
    seed(pg, fresh_db, 30, "--seed", "9")
    with connect(pg, fresh_db) as conn:
        with conn.cursor() as cur:
            cur.execute("UPDATE predictions SET model_accuracy = 0.6875,"
                        " feature_importance = '{\"form\": 0.42, \"h2h\": [1, 2]}' WHERE id = 7")
        row = db_row(conn, 7)
    api = start_api(fresh_db, "2.0.0", APP_COLOUR="blue")
    assert api.get("/health") == (200, {"status": "ok", "version": "2.0.0", "db_revision": "v2_0_0",
                                        "colour": "blue"})
    status, body = api.get("/predictions/7")
    assert status == 200
    assert body["feature_importance"] == {"form": 0.42, "h2h": [1, 2]}
    assert body["model_accuracy"] == 0.6875
    assert_matches_row(body, row)
    assert api.get("/predictions/8")[1]["feature_importance"] is None


def test_api_reports_503_while_the_database_is_unreachable(pg, start_api):
    api = start_api("football_prediction", "1.0.0", PGPORT=str(free_port()))
    status, body = api.get("/health")
    assert status == 503
    assert body["status"] == "error" and body["error"]
    assert api.get("/predictions/1")[0] == 503
    assert api.proc.poll() is None  # still serving
    assert api.stop() == 0


def test_api_health_reports_no_revision_on_an_unmigrated_database(pg, fresh_db, start_api):
    api = start_api(fresh_db, "1.0.0")
    assert api.get("/health") == (200, {"status": "ok", "version": "1.0.0", "db_revision": None, "colour": None})


def test_api_waits_out_a_database_that_briefly_refuses_connections(pg, seeded, start_api):
    """What a restore's swap does to a serving release: its sessions terminated and, for a moment,
    no new connection accepted. A request in that moment waits for the database and is answered,
    instead of failing."""
    name, _ = seeded
    api = start_api(name, "1.0.0")
    assert api.get("/predictions/1")[0] == 200
    admin = pg.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name LIKE 'football-prediction-api%%'", (name,))

        def allow_again() -> None:
            time.sleep(0.5)
            with admin.cursor() as c:
                c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))

        opener = threading.Thread(target=allow_again)
        opener.start()
        status, body = api.get("/predictions/1")
        opener.join()
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        admin.close()
    assert status == 200 and body["id"] == 1, body
    # It really met the refusal, and said so.
    assert "app: no database connection (" in api.log.read_text(), api.log.read_text()[-2000:]
