#!/usr/bin/env python3
"""Football Prediction System: the small HTTP API the migration runbook deploys.

    python examples/football_prediction/app.py --host 127.0.0.1 --port 8001 --app-version 1.0.0

The database connection comes from the libpq environment (PGHOST, PGPORT, PGUSER,
PGPASSWORD or ~/.pgpass, PGDATABASE, PGSSLMODE).  Environment defaults: APP_HOST,
APP_PORT, APP_VERSION; APP_COLOUR (blue/green) is reported by /health.

    GET /health             200 {"status": "ok", "version", "db_revision", "colour"}
                            503 {"status": "error", "error"} when the database is unreachable
    GET /predictions/<id>   200 the row (every column the table has), 404 when absent
    anything else           404

One log line per request on stderr; SIGTERM and SIGINT stop it cleanly.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import psycopg2.pool

PREDICTION_PATH = re.compile(r"^/predictions/(\d{1,19})$")
BIGINT_MAX = 2**63 - 1


class Database:
    """A bounded psycopg2 pool: callers wait for a free connection instead of failing."""

    def __init__(self, max_connections: int, statement_timeout_ms: int, wait_s: float = 10.0) -> None:
        options = f"{os.environ.get('PGOPTIONS', '')} -c statement_timeout={statement_timeout_ms}".strip()
        connect_timeout = os.environ.get("PGCONNECT_TIMEOUT", "5")
        # minconn=0: nothing connects at start-up, so the API starts (and reports 503) without a database.
        self._pool = psycopg2.pool.ThreadedConnectionPool(
            0, max_connections, "", options=options, connect_timeout=connect_timeout,
            application_name=os.environ.get("PGAPPNAME", "football-prediction-api"))
        self._slots = threading.BoundedSemaphore(max_connections)
        self._wait_s = wait_s

    @contextmanager
    def _slot(self):
        if not self._slots.acquire(timeout=self._wait_s):
            raise psycopg2.OperationalError("no database connection free (pool exhausted)")
        try:
            yield
        finally:
            self._slots.release()

    def query(self, statement: str, params: tuple = ()) -> tuple[list[str], list[tuple]]:
        """Run a read-only query; one retry on a fresh connection when a pooled one turns out dead."""
        for attempt in (1, 2):
            with self._slot():
                conn = self._pool.getconn()
                lost = False
                try:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(statement, params)
                        return [column.name for column in cur.description], cur.fetchall()
                except psycopg2.Error:
                    lost = bool(conn.closed)  # e.g. the server restarted since this connection was made
                    if lost and attempt == 1:
                        continue
                    raise
                finally:
                    self._pool.putconn(conn, close=lost or bool(conn.closed))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.closeall()


def json_value(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, memoryview):
        return value.tobytes().hex()
    return value


def db_revision(db: Database) -> str | None:
    _, rows = db.query("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not rows[0][0]:
        return None
    _, rows = db.query("SELECT version_num FROM alembic_version ORDER BY version_num")
    return ",".join(row[0] for row in rows) or None


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    server_version = "FootballPrediction"

    def do_GET(self) -> None:
        self._started = time.monotonic()
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.health()
            return
        match = PREDICTION_PATH.match(path)
        if match and 0 < int(match.group(1)) <= BIGINT_MAX:
            self.prediction(int(match.group(1)))
            return
        self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found", "path": path})

    def health(self) -> None:
        try:
            revision = db_revision(self.server.db)
        except psycopg2.Error as exc:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "error": first_line(exc)})
            return
        self.send_json(HTTPStatus.OK, {"status": "ok", "version": self.server.app_version,
                                       "db_revision": revision, "colour": self.server.colour})

    def prediction(self, prediction_id: int) -> None:
        try:
            columns, rows = self.server.db.query("SELECT * FROM predictions WHERE id = %s", (prediction_id,))
        except psycopg2.Error as exc:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "error": first_line(exc)})
            return
        if not rows:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"prediction {prediction_id} not found"})
            return
        self.send_json(HTTPStatus.OK, {name: json_value(value) for name, value in zip(columns, rows[0])})

    def send_json(self, status: HTTPStatus, body: dict) -> None:
        payload = json.dumps(body, allow_nan=False).encode()
        self._size = len(payload)  # for the log line, which send_response writes
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code="-", size="-") -> None:
        elapsed_ms = (time.monotonic() - getattr(self, "_started", time.monotonic())) * 1000
        code = getattr(code, "value", code)
        self.log_message('"%s" %s %s %.1fms', self.requestline, code, getattr(self, "_size", size), elapsed_ms)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {self.address_string()} {format % args}\n")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], db: Database, app_version: str, colour: str | None) -> None:
        super().__init__(address, Handler)
        self.db = db
        self.app_version = app_version
        self.colour = colour


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Football Prediction System API (libpq env vars for the database).")
    parser.add_argument("--host", default=env.get("APP_HOST", "127.0.0.1"), help="listen address (APP_HOST)")
    parser.add_argument("--port", type=int, default=int(env.get("APP_PORT", "8000")), help="listen port (APP_PORT)")
    parser.add_argument("--app-version", default=env.get("APP_VERSION", "unknown"),
                        help="version reported by /health (APP_VERSION)")
    parser.add_argument("--pool-size", type=int, default=int(env.get("APP_POOL_SIZE", "8")),
                        help="maximum database connections (APP_POOL_SIZE, default 8)")
    parser.add_argument("--statement-timeout-ms", type=int, default=int(env.get("APP_STATEMENT_TIMEOUT_MS", "5000")),
                        help="per-query statement_timeout (APP_STATEMENT_TIMEOUT_MS, default 5000)")
    args = parser.parse_args(argv)
    if args.pool_size < 1:
        parser.error("--pool-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    db = Database(args.pool_size, args.statement_timeout_ms)
    try:
        server = ApiServer((args.host, args.port), db, args.app_version, os.environ.get("APP_COLOUR") or None)
    except OSError as exc:
        print(f"app: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, _frame) -> None:
        print(f"app: {signal.Signals(signum).name} received, shutting down", file=sys.stderr, flush=True)
        # shutdown() waits for serve_forever() to return, so it cannot run on the serving thread.
        threading.Thread(target=server.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"app: version {args.app_version} listening on http://{args.host}:{server.server_port}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        db.close()
    print("app: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
