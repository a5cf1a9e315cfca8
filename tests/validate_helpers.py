"""Shared helpers of the validate/report/monitoring/notify tests: a migrated reference
database, per-table checksums, the reference API on a free loopback port."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from conftest import APP_DIR, ROOT, alembic
from pgcluster import free_port

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())




def query(pg, db, statement, params=()):
    conn = pg.connect(db)
    with conn.cursor() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def execute(pg, db, statement, params=()):
    conn = pg.connect(db)
    with conn.cursor() as cur:
        cur.execute(statement, params)
    conn.close()


def backfill_sql() -> str:
    """The plan's backfill as one UPDATE (the tests' stand-in for pg_batch_update)."""
    bf = PLAN["backfills"][0]
    sets = ", ".join(f"{col} = {expr}" for col, expr in bf["set"].items())
    return f"UPDATE {bf['table']} SET {sets} WHERE {bf['where']}"


def migrate(pg, db) -> None:
    """Schema to v2_0_0 and the plan's backfill: the state after a successful migration."""
    alembic(pg, db, "upgrade", "v2_0_0")
    execute(pg, db, backfill_sql())


def table_checksums(pg, db) -> dict:
    """md5 over every row of every table (ledger included), in key order."""
    tables = query(pg, db, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                           "ORDER BY 1, 2")
    sums = {}
    for schema, name in tables:
        ident = f'"{schema}"."{name}"'
        sums[f"{schema}.{name}"] = query(pg, db, f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY "
                                                 f"t::text), '')) FROM {ident} t")[0]
    return sums


def database_state(pg, db) -> dict:
    """What 'nothing changed' compares: the catalog (every relation with its kind, every column,
    every function, every role) and the checksum of every table, the ledger and lock included."""
    return {
        "relations": query(pg, db, "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                                   "ON n.oid = c.relnamespace WHERE n.nspname !~ '^pg_toast' ORDER BY 1, 2"),
        "columns": query(pg, db, "SELECT attrelid::regclass::text, attname, format_type(atttypid, atttypmod), "
                                 "attnotnull FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped "
                                 "AND attrelid >= 16384 ORDER BY 1, 2"),
        "functions": query(pg, db, "SELECT oid::regprocedure::text FROM pg_proc WHERE oid >= 16384 ORDER BY 1"),
        "roles": query(pg, db, "SELECT rolname FROM pg_roles ORDER BY 1"),
        "tables": table_checksums(pg, db),
    }


def start_app(pg, db, version: str = "2.0.0") -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = pg.env(db)
    proc = subprocess.Popen([sys.executable, str(APP_DIR / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                             "--app-version", version], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the reference API did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    return path
