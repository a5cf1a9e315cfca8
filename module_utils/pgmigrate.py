# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared code for the pgmigrate-ops modules.

One connection helper (argument spec + connect), identifier quoting, and the DDL of
the tool's own schema in the target database (the run ledger and the lock).  Every
module imports it as ``ansible.module_utils.pgmigrate``; ansible.cfg points
``module_utils`` at this directory.
"""
from __future__ import annotations

import os
import re
import traceback

PSYCOPG2_IMP_ERR = None
try:
    import psycopg2
    import psycopg2.extras
    from psycopg2 import sql
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - exercised only without the library
    psycopg2 = None
    sql = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMP_ERR = traceback.format_exc()

# The one duration grammar of the tool (plan fields, lock and statement timeouts): an integer with an optional
# unit ms, s, min or h; a bare number is milliseconds, as PostgreSQL reads it, and 0 means no limit.
DURATION_PATTERN = r"^\s*(\d+)\s*(ms|s|min|h)?\s*$"
DURATION_RE = re.compile(DURATION_PATTERN)
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, None: 1}


def parse_duration_ms(value: str) -> int:
    """'2s' -> 2000, '500ms' -> 500, '5min' -> 300000, '0' -> 0.  ValueError when malformed."""
    match = DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use e.g. 500ms, 2s, 5min, 1h or 0")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


DEFAULT_OPS_SCHEMA = "migration_ops"
OPS_SCHEMA_VERSION = 1
# application_name of every database session that works for a run: "pgmigrate-ops run <id> <what>".
# A run is alive while any of them is connected (migration_lock never calls such a lock stale).
RUN_APP_PREFIX = "pgmigrate-ops run "


def connection_argument_spec() -> dict:
    """Options every database module takes; documented by the ``pgmigrate`` doc fragment."""
    return dict(
        login_host=dict(type="str", default=None),
        login_port=dict(type="int", default=None),
        login_user=dict(type="str", default=None),
        login_password=dict(type="str", default=None, no_log=True),
        login_db=dict(type="str", default=None, aliases=["db", "database"]),
        ssl_mode=dict(type="str", default="prefer",
                      choices=["allow", "disable", "prefer", "require", "verify-ca", "verify-full"]),
        ca_cert=dict(type="path", default=None, aliases=["ssl_rootcert"]),
        connect_timeout=dict(type="int", default=10),
        ops_schema=dict(type="str", default=DEFAULT_OPS_SCHEMA),
    )


def connection_kwargs(params: dict, dbname: str | None = None) -> dict:
    """libpq keywords from module params.  Unset values fall back to libpq's own
    environment (PGHOST, PGPASSWORD, PGPASSFILE / ~/.pgpass ...)."""
    kw = {
        "host": params.get("login_host"),
        "port": params.get("login_port"),
        "user": params.get("login_user"),
        "password": params.get("login_password") or None,
        "dbname": dbname or params.get("login_db"),
        "sslmode": params.get("ssl_mode"),
        "sslrootcert": params.get("ca_cert"),
        "connect_timeout": params.get("connect_timeout"),
    }
    return {k: v for k, v in kw.items() if v not in (None, "")}


def libpq_env(params: dict, dbname: str | None = None) -> dict:
    """Environment for libpq command-line tools (pg_dump, psql, alembic via env):
    the password goes through PGPASSWORD, never through argv."""
    mapping = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
               "dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
               "connect_timeout": "PGCONNECT_TIMEOUT"}
    env = dict(os.environ)
    for key, value in connection_kwargs(params, dbname).items():
        env[mapping[key]] = str(value)
    return env


_AUTH_HINT = ("check login_user/login_password (inventory group_vars or ansible-vault), "
              "or PGPASSWORD / ~/.pgpass on the control node")


def explain_connect_error(exc: Exception) -> str:
    text = str(exc).strip()
    if "password authentication failed" in text or "no password supplied" in text:
        return f"{text}; {_AUTH_HINT}"
    if "does not exist" in text and "database" in text:
        return f"{text}; check login_db (pgmigrate_db_name)"
    if "Connection refused" in text or "could not connect" in text or "timeout" in text:
        return f"{text}; check login_host/login_port and that the server is running"
    return text


def connect(module, dbname: str | None = None, autocommit: bool = False,
            application_name: str | None = None):
    """Open a psycopg2 connection or fail the module with a message that says what to do."""
    if not HAS_PSYCOPG2:
        from ansible.module_utils.basic import missing_required_lib
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMP_ERR)
    kw = connection_kwargs(module.params, dbname)
    kw["application_name"] = application_name or f"pgmigrate-ops:{module._name}"
    try:
        conn = psycopg2.connect(**kw)
    except psycopg2.Error as exc:
        module.fail_json(msg=f"unable to connect to database: {explain_connect_error(exc)}")
    conn.autocommit = autocommit
    return conn


def pretty_bytes(num: float) -> str:
    """1536 -> '1.5 kB': sizes as an operator reads them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(num) < 1024 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num} B"


IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def split_qualified(name: str) -> tuple[str | None, str]:
    """'schema.table' -> ('schema', 'table'); 'table' -> (None, 'table').

    Names are taken literally (no unquoting): a dot splits schema from table, and
    whatever else the name holds is quoted by psycopg2.sql.Identifier.  A name with more
    than one dot is rejected rather than guessed at."""
    parts = name.split(".")
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ValueError(f"table name {name!r} must be 'table' or 'schema.table'")


def table_identifier(name: str):
    schema, table = split_qualified(name)
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def resolve_table(cur, name: str, schema: str | None = None) -> dict | None:
    """The one catalog look-up of a table (ordinary or partitioned), never interpolating the name into SQL.

    Without ``schema``, ``name`` is 'table' (looked up in the search_path schemas, first match wins) or
    'schema.table', taken literally (see split_qualified).  With ``schema``, ``name`` is the table's own name,
    not split (either may hold a dot).  Returns {'schema', 'table', 'oid', 'reltuples'} or None when it does
    not exist."""
    table = name
    if schema is None:
        schema, table = split_qualified(name)
    if schema is None:
        cur.execute(
            "SELECT n.nspname, c.relname, c.oid, c.reltuples FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false)) "
            "ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1", (table,))
    else:
        cur.execute(
            "SELECT n.nspname, c.relname, c.oid, c.reltuples FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND n.nspname = %s AND c.relkind IN ('r', 'p')", (table, schema))
    row = cur.fetchone()
    return None if row is None else {"schema": row[0], "table": row[1], "oid": row[2], "reltuples": float(row[3])}


def primary_key_columns(cur, oid: int) -> list[str]:
    """The primary key's columns of the table ``oid``, in key order ([] when it has none)."""
    cur.execute("SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n", (oid,))
    return [r[0] for r in cur.fetchall()]


def alembic_revision(cur) -> str | None:
    """The Alembic revision(s) of the database (comma-joined heads), or None without an alembic_version table in
    the search_path."""
    found = resolve_table(cur, "alembic_version")
    if found is None:
        return None
    cur.execute(sql.SQL("SELECT string_agg(version_num, ',' ORDER BY version_num) FROM {}").format(
        sql.Identifier(found["schema"], found["table"])))
    return cur.fetchone()[0]


def ops_schema_exists(cur, schema: str) -> bool:
    """Whether the run ledger (schema.runs) exists."""
    return resolve_table(cur, "runs", schema=schema) is not None


# The ledger's columns, as every reader returns them (runs in ensure_ops_schema below).
RUN_COLUMNS = ("id", "kind", "version", "from_version", "to_version", "from_revision", "to_revision", "status",
               "started_at", "finished_at", "operator", "control_host", "backup_path", "backup_verified",
               "phases", "error")


def _select_runs(cur, schema: str, where, params: tuple, limit: int | None, times: bool) -> list[dict]:
    columns = [sql.Identifier(c) for c in RUN_COLUMNS]
    if times:
        columns += [sql.SQL("extract(epoch FROM started_at)"),
                    sql.SQL("extract(epoch FROM clock_timestamp() - started_at)")]
    stmt = sql.SQL("SELECT {} FROM {}.runs WHERE {} ORDER BY id DESC").format(
        sql.SQL(", ").join(columns), sql.Identifier(schema), where)
    if limit is not None:
        stmt += sql.SQL(" LIMIT %s")
        params = tuple(params) + (limit,)
    cur.execute(stmt, params)
    runs = []
    for row in cur.fetchall():
        run = dict(zip(RUN_COLUMNS, row))
        for key in ("started_at", "finished_at"):
            run[key] = run[key].isoformat() if run[key] else None
        run["phases"] = run["phases"] or {}
        if times:
            run["started_epoch"] = float(row[len(RUN_COLUMNS)])
            run["elapsed_s"] = round(float(row[len(RUN_COLUMNS) + 1]), 1)
        runs.append(run)
    return runs


def read_runs(cur, schema: str, where=None, params: tuple = (), limit: int | None = None) -> list[dict]:
    """Runs of the ledger in ``schema``, newest first: {column: value} for RUN_COLUMNS, timestamps as ISO 8601,
    phases {} when empty.  ``where`` is a psycopg2.sql condition with %s placeholders for ``params``.
    The caller checks that the ledger exists (ops_schema_exists)."""
    return _select_runs(cur, schema, where if where is not None else sql.SQL("true"), params, limit, times=False)


def read_run(cur, schema: str, run_id: int | None) -> dict | None:
    """The run ``run_id`` of the ledger (as read_runs gives it, plus ``started_epoch``, its start as Unix time,
    and ``elapsed_s``, its age on the database's clock), or None when there is no such run or no ledger."""
    if not run_id or not ops_schema_exists(cur, schema):
        return None
    found = _select_runs(cur, schema, sql.SQL("id = %s"), (run_id,), 1, times=True)
    return found[0] if found else None


def ensure_ops_schema(cur, schema: str) -> bool:
    """Create the ledger schema (runs, lock) if missing.  Returns True when it created it.

    Callers must not call this in check mode."""
    existed = ops_schema_exists(cur, schema)
    s = sql.Identifier(schema)
    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
        sql.SQL("""CREATE TABLE IF NOT EXISTS {}.runs (
            id bigserial PRIMARY KEY,
            kind text NOT NULL DEFAULT 'migrate',
            version text NOT NULL,
            from_version text,
            to_version text,
            from_revision text,
            to_revision text,
            status text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'succeeded', 'failed', 'rolled_back', 'rollback_failed')),
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at timestamptz,
            operator text NOT NULL,
            control_host text,
            control_pid integer,
            backup_path text,
            backup_verified boolean,
            phases jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            error text
        )""").format(s),
        sql.SQL("""CREATE TABLE IF NOT EXISTS {}.lock (
            lock_name text PRIMARY KEY,
            run_id bigint NOT NULL REFERENCES {}.runs (id),
            operator text NOT NULL,
            control_host text NOT NULL,
            control_pid integer,
            control_pid_start text,
            acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""").format(s, s),
        sql.SQL("CREATE INDEX IF NOT EXISTS runs_version_status_idx ON {}.runs (version, status)").format(s),
    ]
    for stmt in statements:
        cur.execute(stmt)
    return not existed
