#!/usr/bin/env python3
"""Football Prediction System API, run from the checkout (development and tests).

    python examples/football_prediction/app.py --host 127.0.0.1 --port 8001 --app-version 1.0.0

The release's own server (football_prediction_api.server, what the deploy installs as a wheel),
with three development conveniences: the database connection comes from the libpq environment
(PGHOST, PGPORT, PGUSER, PGPASSWORD or ~/.pgpass, PGDATABASE, PGSSLMODE, PGCONNECT_TIMEOUT),
--app-version sets the version /health reports, and every column the table has is served.
Environment defaults: APP_HOST, APP_PORT, APP_VERSION, APP_POOL_SIZE, APP_STATEMENT_TIMEOUT_MS;
APP_COLOUR (blue/green) is reported by /health.

    GET /health             200 {"status": "ok", "version", "db_revision", "colour"}
                            503 {"status": "error", "error", ...} when the database is unreachable
    GET /predictions/<id>   200 the row (every column the table has), 404 when absent
    anything else           404

One log line per request on stderr; SIGTERM and SIGINT stop it cleanly.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from football_prediction_api.server import ApiServer, Database, serve


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
    # An empty DSN: libpq reads the connection from the environment; nothing connects at start-up,
    # so the API starts (and reports 503) without a database.
    settings = {"connect_timeout_s": int(os.environ.get("PGCONNECT_TIMEOUT", "5")),
                "statement_timeout_ms": args.statement_timeout_ms, "pool_size": args.pool_size}
    db = Database(SimpleNamespace(dsn="", password=None, settings=settings))
    try:
        server = ApiServer((args.host, args.port), db, os.environ.get("APP_COLOUR") or None, log_requests=True,
                           version=args.app_version, all_columns=True)
    except OSError as exc:
        print(f"app: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return serve(server, f"app: version {args.app_version} listening on http://{args.host}:{server.server_port}")


if __name__ == "__main__":
    sys.exit(main())
