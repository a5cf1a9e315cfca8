"""The HTTP API of one release.

    GET /health             200 {"status": "ok", "version", "colour", "db_revision"}
                            503 {"status": "error", "error", "version", "colour"} without the database
    GET /predictions/<id>   200 the row (the columns this release knows), 404 when absent
    anything else           404

The columns are an explicit list per release, so 1.0.0 keeps serving unchanged on the
2.0.0 schema (the change is additive).  SIGTERM stops accepting, finishes the requests in
flight, then exits 0.
"""
from __future__ import annotations

import argparse
import json
import math
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

from . import config as app_config
from ._version import __version__

PREDICTION_PATH = re.compile(r"^/predictions/(\d{1,19})$")
BIGINT_MAX = 2**63 - 1
V1_COLUMNS = ("id", "match_id", "model_version", "home_win_prob", "draw_prob", "away_win_prob",
              "predicted_result", "actual_result", "confidence", "created_at", "updated_at")
V2_COLUMNS = V1_COLUMNS + ("model_accuracy", "feature_importance")


def release_columns(version: str) -> tuple[str, ...]:
    """The prediction columns a release serves: 2.x adds model_accuracy and feature_importance."""
    major = int(version.split(".", 1)[0]) if version.split(".", 1)[0].isdigit() else 0
    return V2_COLUMNS if major >= 2 else V1_COLUMNS


class _Reconnect(Exception):
    """The connection could not be made or was lost: worth another try on a fresh one."""


class Database:
    """A bounded psycopg2 pool: callers wait for a free connection instead of failing.

    A connection that cannot be made or is lost (the database briefly refuses connections while a
    restore swaps it in, or a session was terminated) is retried on a fresh one with a short
    backoff for up to `reconnect_s` (2 s, less than a health check's timeout), so such a moment
    delays a request instead of failing it."""

    def __init__(self, cfg: app_config.AppConfig, wait_s: float = 10.0, reconnect_s: float = 2.0) -> None:
        import psycopg2.pool
        settings = cfg.settings
        kwargs = {"connect_timeout": settings["connect_timeout_s"],
                  "options": f"-c statement_timeout={settings['statement_timeout_ms']}",
                  "application_name": f"football-prediction-api {__version__}"}
        if cfg.password is not None:
            kwargs["password"] = cfg.password
        self._pool = psycopg2.pool.ThreadedConnectionPool(0, settings["pool_size"], cfg.dsn, **kwargs)
        self._slots = threading.BoundedSemaphore(settings["pool_size"])
        self._wait_s = wait_s
        self._reconnect_s = reconnect_s
        self._said_at = 0.0
        self._said_lock = threading.Lock()

    @contextmanager
    def _slot(self):
        import psycopg2
        if not self._slots.acquire(timeout=self._wait_s):
            raise psycopg2.OperationalError("no database connection free (pool exhausted)")
        try:
            yield
        finally:
            self._slots.release()

    def _query_once(self, statement, params: tuple) -> tuple[list[str], list[tuple]]:
        import psycopg2
        with self._slot():
            try:
                conn = self._pool.getconn()
            except psycopg2.OperationalError as exc:
                raise _Reconnect(exc) from exc
            lost = False
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(statement, params)
                    return [column.name for column in cur.description], cur.fetchall()
            except psycopg2.Error as exc:
                lost = bool(conn.closed)
                if lost:
                    raise _Reconnect(exc) from exc
                raise
            finally:
                self._pool.putconn(conn, close=lost or bool(conn.closed))

    def query(self, statement, params: tuple = ()) -> tuple[list[str], list[tuple]]:
        """Run a read-only query, on a fresh connection again while the database cannot be reached."""
        deadline = time.monotonic() + self._reconnect_s
        delay = 0.05
        while True:
            try:
                return self._query_once(statement, params)
            except _Reconnect as exc:
                if time.monotonic() + delay > deadline:
                    raise exc.__cause__ from None
                self._say_retrying(exc.__cause__)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _say_retrying(self, cause: BaseException) -> None:
        """One line a second at most while the database cannot be reached (not one per request)."""
        with self._said_lock:
            now = time.monotonic()
            if now - self._said_at < 1.0:
                return
            self._said_at = now
        print(f"app: no database connection ({first_line(cause)}); retrying for up to {self._reconnect_s:g} s",
              file=sys.stderr, flush=True)

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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    server_version = f"FootballPrediction/{__version__}"

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
        import psycopg2
        ident = {"version": self.server.version, "colour": self.server.colour}
        try:
            revision = db_revision(self.server.db)
        except psycopg2.Error as exc:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "error": first_line(exc), **ident})
            return
        self.send_json(HTTPStatus.OK, {"status": "ok", **ident, "db_revision": revision})

    def prediction(self, prediction_id: int) -> None:
        import psycopg2
        from psycopg2 import sql
        columns = sql.SQL("*") if self.server.columns is None else \
            sql.SQL(", ").join(sql.Identifier(c) for c in self.server.columns)
        statement = sql.SQL("SELECT {} FROM predictions WHERE id = %s").format(columns)
        try:
            columns, rows = self.server.db.query(statement, (prediction_id,))
        except psycopg2.Error as exc:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "error": first_line(exc)})
            return
        if not rows:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"prediction {prediction_id} not found"})
            return
        self.send_json(HTTPStatus.OK, {name: json_value(value) for name, value in zip(columns, rows[0])})

    def send_json(self, status: HTTPStatus, body: dict) -> None:
        payload = json.dumps(body, allow_nan=False).encode()
        self._size = len(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-App-Version", self.server.version)
        if self.server.colour:
            self.send_header("X-App-Colour", self.server.colour)
        if self.server.stopping.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code="-", size="-") -> None:
        if not self.server.log_requests:
            return
        elapsed_ms = (time.monotonic() - getattr(self, "_started", time.monotonic())) * 1000
        code = getattr(code, "value", code)
        self.log_message('"%s" %s %s %.1fms', self.requestline, code, getattr(self, "_size", size), elapsed_ms)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {self.address_string()} {format % args}\n")


class ApiServer(ThreadingHTTPServer):
    # Request threads are joined on shutdown: a stopping colour finishes what it accepted.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], db: Database, colour: str | None, log_requests: bool,
                 version: str = __version__, all_columns: bool = False) -> None:
        """`version` is what /health reports (the release's own unless a development run sets it);
        all_columns serves every column the table has (development) instead of the release's list."""
        super().__init__(address, Handler)
        self.db = db
        self.colour = colour
        self.version = version
        self.columns = None if all_columns else release_columns(version)
        self.log_requests = log_requests
        self.stopping = threading.Event()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="football_prediction_api",
                                     description=f"Football Prediction System API, release {__version__}.")
    parser.add_argument("--config-dir", required=True, help="directory holding .env and config/app_config.json")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration and exit (0 valid, 1 with the problems on stderr)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    parser.add_argument("--colour", default=None, help="the colour or instance name /health reports")
    parser.add_argument("--version", action="version", version=__version__)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = app_config.load(args.config_dir)
    except app_config.ConfigError as exc:
        print(f"football_prediction_api {__version__}: the configuration in {args.config_dir} is invalid:",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    if args.check_config:
        print(f"football_prediction_api {__version__}: the configuration in {args.config_dir} is valid")
        return 0
    db = Database(cfg)
    try:
        server = ApiServer((args.host, args.port), db, args.colour, cfg.settings["log_requests"])
    except OSError as exc:
        print(f"app: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return serve(server, f"app: release {__version__} colour {args.colour} listening on "
                         f"http://{args.host}:{server.server_port}")


def serve(server: ApiServer, banner: str) -> int:
    """Serve until SIGTERM or SIGINT, which stop accepting and finish the requests in flight."""
    def stop(signum: int, _frame) -> None:
        print(f"app: {signal.Signals(signum).name} received, finishing the requests in flight",
              file=sys.stderr, flush=True)
        server.stopping.set()
        # shutdown() waits for serve_forever() to return, so it cannot run on the serving thread.
        threading.Thread(target=server.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(banner, file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.db.close()
    print("app: stopped", file=sys.stderr, flush=True)
    return 0
