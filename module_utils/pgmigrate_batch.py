# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The batched backfill engine behind the ``pg_batch_update`` module.

How a backfill runs:

* The key space of the table (its primary key or another unique, not-null key, composite
  keys included) is walked in order.  Each batch is a key range ``(lo, hi]``: ``hi`` is found
  by an index-only scan of the next ``batch_size`` keys, and the UPDATE is bounded by that
  range, so every batch is an index range scan however big the table is (no OFFSET, no list
  of ids).
* One transaction per batch, with ``lock_timeout``/``statement_timeout`` set locally.  The
  checkpoint row (``<ops_schema>.batch_checkpoints``) is updated in the same transaction, so
  a batch and its checkpoint commit together: after ``kill -9`` of anything the next run
  resumes after the last committed batch, skipping nothing and doing nothing twice.
* SQL transforms are computed by the server from the current row.  A Python transform
  reads the batch's rows without locks (one statement that also keeps the values it read in
  a temporary table), calls the function, COPYs the results into a second temporary table
  and writes them back with one UPDATE ... FROM bounded by the same range and guarded by
  the values that were read: a row whose read or written columns changed meanwhile is
  skipped, re-read and transformed again (at most ``max_retries`` rounds), never
  overwritten.  Row locks are held only from that UPDATE to the commit.  The transaction that
  writes batch N first reads batch N+1, whose transform then runs while the server writes N.
* The batch size adapts toward ``target_batch_ms`` (shrink fast when a batch is slow, grow
  by at most 20 % when it is fast), a lock timeout halves the batch and retries, and health
  holds (replication lag, vacuum on the table, WAL archive backlog) wait and say why.
* A foreground latency budget (``max_foreground_p99_ms``): a probe process times a cheap
  query on the target (a key the backfill has just written) every 20 ms, and about once a
  second the p99 of the latest probes steers the pace: over 80 % of the budget, one worker fewer, then
  shorter batches, then longer pauses; under half of it, the same steps back up to the plan's
  batch time and ``max_workers``.  The decisions show in the progress lines and metrics.
* Optional workers split the key space into disjoint ranges, each with its own
  connection, thread and checkpoint row (psycopg2 releases the GIL while it waits).
* Progress goes to a JSON-lines file (``tail -f``) and to a Prometheus textfile.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

try:
    import psycopg2
    import psycopg2.errors
    from psycopg2 import sql
except ImportError:  # pragma: no cover - the module reports missing_required_lib first
    psycopg2 = None
    sql = None

from ansible.module_utils.pgmigrate import primary_key_columns, resolve_table
from ansible.module_utils.pgmigrate_holds import (
    blind_holds,
    configured_holds,
    hint_for_warning,
    read_privileges,
    refusal,
    required_holds_problems,
)
from ansible.module_utils.pgmigrate_metrics import merge_textfile
from ansible.module_utils.pgmigrate_owner import hostname, pid_alive
from ansible.module_utils.pgmigrate_sql import PlanSqlError, backfill_fragments, parse_expression, wrap

CHECKPOINT_TABLE = "batch_checkpoints"
PASSES_TABLE = "batch_passes"
ADVISORY_CLASS = "pgmigrate-ops:backfill"
READ_TABLE = "pgmigrate_backfill_read"  # per connection: the key and the guarded values of the rows read
TEMP_TABLE = "pgmigrate_backfill_rows"  # per connection: the key and the new values from the Python transform
TMP_PREFIX = "pgmigrate_"  # the temp tables' column names, apart from any target column a filter may name
WATCH_INTERVAL_S = 1.0  # how often a running backfill checks that its controlling playbook lives
PROBE_INTERVAL_S = 0.02  # the pace's foreground probe: one cheap query on the target every 20 ms

# The pace's probe as a process of its own (``python -c``): a thread of the module's process would
# wait for the GIL whenever a transform thread (reniced, so often preempted while it holds it) has
# it, and time that wait as the foreground's.  Its first stdin line is its configuration (the
# connection's keywords, the password among them: never argv or environment); the next ones are
# keys a batch has just written.  It writes one line per probe: "ok <ms>", "slow <ms>" (cancelled
# by its statement timeout) or "error <why>"; it ends when its stdin closes.
PROBE_PROCESS = r"""
import collections, json, os, random, sys, threading, time
import psycopg2
import psycopg2.errors
cfg = json.loads(sys.stdin.readline())
keys = collections.deque(maxlen=256)
def feed():
    for line in sys.stdin:
        try:
            keys.append(json.loads(line))
        except ValueError:
            pass
    os._exit(0)
out = sys.stdout
try:
    conn = psycopg2.connect(**cfg["conn"])
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET statement_timeout = %s", (cfg["timeout"],))
except Exception as exc:
    out.write("error " + " ".join(str(exc).split())[:300] + "\n")
    out.flush()
    sys.exit(1)
threading.Thread(target=feed, daemon=True).start()
interval, by_key, rng = cfg["interval"], cfg["sql"], random.Random()
due = time.perf_counter()
while True:
    due += interval
    wait = due - time.perf_counter()
    if wait > 0:
        time.sleep(wait)
    key = rng.choice(keys) if keys else None
    status = "ok"
    try:
        if key is None:
            cur.execute("SELECT 1")
        else:
            cur.execute(by_key, key)
        cur.fetchall()
    except psycopg2.errors.QueryCanceled:
        status = "slow"
    except Exception as exc:
        out.write("error " + type(exc).__name__ + ": " + " ".join(str(exc).split())[:300] + "\n")
        out.flush()
        sys.exit(1)
    now = time.perf_counter()
    out.write("%s %.3f\n" % (status, (now - due) * 1000.0))
    out.flush()
    if now - due > interval:
        due = now
"""
PACE_MIN_SAMPLES = 100  # probes behind each pace decision (two seconds of them; their p99 is the 2nd highest)
PACE_FLOOR_BATCH_MS = 20  # the shortest batch the pace asks for (per-batch overhead dominates below)
# The pace slows down once the probes' p99 passes this share of the budget, not the budget itself: 100 probes
# sample the foreground thinly (their p99 is the second highest), and the application's own p99 over thousands
# of requests ran above them beside a CPU-hungry neighbour (12.9 ms against the probes' 9.7 ms, budget 10).
PACE_HEADROOM = 0.8
RETRYABLE_SQLSTATES = {"55P03": "lock timeout", "40P01": "deadlock", "40001": "serialization failure",
                       "57014": "statement timeout"}


class BackfillError(Exception):
    """A failure with a message for the operator (what happened, what to do)."""

    def __init__(self, msg: str, **facts: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.facts = facts


# ---------------------------------------------------------------------------------------
# The backfill's definition
# ---------------------------------------------------------------------------------------
@dataclass
class Spec:
    """A backfill and its defaults: the one definition pg_batch_update's argument spec, the plan's preflight and
    the benchmarks take them from."""

    name: str
    table: str
    key: list[str] | None = None
    set: dict[str, str] | None = None
    python: str | None = None
    python_path: list[str] = field(default_factory=list)
    columns: list[str] | None = None
    read_columns: list[str] | None = None
    where: str | None = None
    incremental: dict | None = None
    batch_size: int = 10000
    min_batch_size: int = 100
    max_batch_size: int = 100000
    target_batch_ms: int = 100
    pause_ms: int = 0
    lock_timeout: str = "2s"
    statement_timeout: str = "1min"
    max_retries: int = 10
    workers: int = 1
    max_workers: int | None = None
    max_foreground_p99_ms: float = 100.0
    max_pause_ms: int = 1000
    nice: int = 10
    max_replication_lag_s: float | None = None
    hold_on_autovacuum: bool = False
    max_archive_backlog: int | None = None
    required_holds: list[str] = field(default_factory=list)
    hold_poll_s: float = 5.0
    max_hold_s: float = 1800.0
    progress_file: str | None = None
    metrics_file: str | None = None
    progress_interval_s: float = 1.0
    run_id: int | None = None
    controller_pid: int | None = None
    controller_pid_start: str | None = None
    controller_host: str | None = None
    progress_token: str | None = None
    restart: bool = False
    ops_schema: str = "migration_ops"
    check_count_limit: int = 5_000_000

    def definition_hash(self) -> str:
        """What makes two runs the same backfill: a resumed pass must not change meaning."""
        body = {"table": self.table, "key": self.key, "set": self.set, "python": self.python,
                "columns": self.columns, "where": self.where, "incremental": self.incremental}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Column:
    name: str
    type: str  # format_type(): a type name as SQL spells it
    notnull: bool


@dataclass
class Target:
    schema: str
    table: str
    oid: int
    columns: dict[str, Column]
    key: list[str]
    reltuples: float

    @property
    def ident(self):
        return sql.Identifier(self.schema, self.table)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}"


def fragment(text: str):
    """Operator-owned SQL from the plan (expressions, filters): composed as SQL by design,
    parsed as exactly one expression (pgmigrate_sql, in prepare()) before anything runs, and
    planned with EXPLAIN before the first batch.  ``%`` is doubled because every statement
    here runs with bound parameters."""
    return sql.SQL(wrap(text.replace("%", "%%")))


# ---------------------------------------------------------------------------------------
# Catalog look-ups and validation
# ---------------------------------------------------------------------------------------
def resolve_target(cur, spec: Spec) -> Target:
    try:
        found = resolve_table(cur, spec.table)
    except ValueError:  # more than one dot: no such table
        found = None
    if found is None:
        raise BackfillError(f"backfill {spec.name}: table {spec.table!r} does not exist (looked up as a literal "
                            "name in the search_path schemas); check the 'table' of the backfill, and that the "
                            "schema phase ran first", missing="table")
    nsp, rel, oid = found["schema"], found["table"], found["oid"]
    cur.execute("SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,))
    columns = {r[0]: Column(r[0], r[1], r[2]) for r in cur.fetchall()}
    key = spec.key or primary_key_columns(cur, oid)
    if not key:
        raise BackfillError(f"backfill {spec.name}: table {nsp}.{rel} has no primary key; give 'key' (columns of "
                            "a unique, not-null index)")
    return Target(nsp, rel, oid, columns, list(key), found["reltuples"])


def require_columns(spec: Spec, target: Target, names: list[str], what: str) -> None:
    missing = [n for n in names if n not in target.columns]
    if missing:
        known = ", ".join(target.columns)
        raise BackfillError(f"backfill {spec.name}: {what} {', '.join(repr(m) for m in missing)} "
                            f"{'does' if len(missing) == 1 else 'do'} not exist in table {target.label} "
                            f"(its columns: {known})", missing="column")


def check_key(cur, spec: Spec, target: Target) -> None:
    """The key must be unique and not null, or keyset batches could skip or repeat rows."""
    require_columns(spec, target, target.key, "key column")
    nullable = [k for k in target.key if not target.columns[k].notnull]
    if nullable:
        raise BackfillError(f"backfill {spec.name}: key column(s) {', '.join(nullable)} of {target.label} are "
                            "nullable; the key must be NOT NULL and unique (use the primary key, or add NOT NULL)")
    cur.execute("SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indpred IS NULL "
                "AND i.indexprs IS NULL GROUP BY i.indexrelid", (target.oid,))
    unique_sets = [list(r[0]) for r in cur.fetchall()]
    if target.key in unique_sets:
        return
    same_columns = [u for u in unique_sets if sorted(u) == sorted(target.key)]
    if same_columns:
        raise BackfillError(f"backfill {spec.name}: the unique index on {target.label} orders the key as "
                            f"{same_columns[0]}; give key: {same_columns[0]} so batches follow the index")
    raise BackfillError(f"backfill {spec.name}: key {target.key} of {target.label} is not unique (no valid, "
                        "non-partial unique index on exactly these columns); batching on it could skip or "
                        "repeat rows. Use the primary key or create a unique index first")


def load_function(spec: Spec) -> Callable:
    module_name, _, func_name = (spec.python or "").partition(":")
    if not module_name or not func_name:
        raise BackfillError(f"backfill {spec.name}: python must be 'module.path:function', got {spec.python!r}")
    for entry in reversed(spec.python_path or []):
        path = os.path.abspath(os.path.expanduser(entry))
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise BackfillError(f"backfill {spec.name}: cannot import {module_name!r} for the python transform: "
                            f"{type(exc).__name__}: {exc} (python_path: {spec.python_path or 'none'})") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise BackfillError(f"backfill {spec.name}: {module_name} has no function {func_name!r}")
    return func


# ---------------------------------------------------------------------------------------
# SQL building (identifiers quoted, values bound, plan fragments via fragment())
# ---------------------------------------------------------------------------------------
def qualified(alias: str | tuple | None, name: str):
    """A column name, bare, after a table alias, or after a (schema, table) pair."""
    if alias is None:
        return sql.Identifier(name)
    if isinstance(alias, tuple):
        return sql.Identifier(*alias, name)
    return sql.Identifier(alias, name)


class Statements:
    def __init__(self, spec: Spec, target: Target) -> None:
        self.spec = spec
        self.target = target
        self.key = target.key
        self.composite = len(self.key) > 1
        self.text_guard: set[str] = set()  # guarded columns whose type has no '=' (json, xml, point): compared as text

    def key_expr(self, alias: str | tuple | None = None):
        idents = [qualified(alias, k) for k in self.key]
        return idents[0] if not self.composite else sql.SQL("({})").format(sql.SQL(", ").join(idents))

    def key_param(self):
        casts = [sql.SQL("%s::") + sql.SQL(self.target.columns[k].type) for k in self.key]
        return casts[0] if not self.composite else sql.SQL("({})").format(sql.SQL(", ").join(casts))

    def key_list(self, alias: str | tuple | None = None, suffix: str = ""):
        return sql.SQL(", ").join(qualified(alias, k) + sql.SQL(suffix) for k in self.key)

    def range_cond(self, lo: list | None, hi: list | None, alias: str | tuple | None = None) -> tuple[Any, list]:
        parts, params = [], []
        if lo is not None:
            parts.append(sql.SQL("{} > {}").format(self.key_expr(alias), self.key_param()))
            params += lo
        if hi is not None:
            parts.append(sql.SQL("{} <= {}").format(self.key_expr(alias), self.key_param()))
            params += hi
        if not parts:
            return sql.SQL("true"), params
        return sql.SQL(" AND ").join(parts), params

    def filter_cond(self, since: datetime.datetime | None) -> tuple[Any, list]:
        """The where filter and the incremental window (both optional)."""
        parts, params = [], []
        if self.spec.where:
            parts.append(fragment(self.spec.where))
        if since is not None:
            parts.append(sql.SQL("{} >= %s").format(sql.Identifier(self.spec.incremental["column"])))
            params.append(since)
        if not parts:
            return None, params
        return sql.SQL(" AND ").join(parts), params

    def key_texts(self):
        """Key values as text for the checkpoint.  Aliased: an output column named like the key
        would make ORDER BY sort by the text (where '999' > '1000')."""
        return sql.SQL(", ").join(sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"_k{i}"))
                                  for i, k in enumerate(self.key))

    def boundary(self, cond) -> Any:
        """The upper key of the next batch and the number of keys in it: an index-only scan."""
        texts = self.key_texts()
        return sql.SQL("SELECT {texts}, count(*) OVER () FROM (SELECT {keys} FROM {t} WHERE {cond} "
                       "ORDER BY {keys} LIMIT %s) s ORDER BY {desc} LIMIT 1").format(
            texts=texts, keys=self.key_list(), t=self.target.ident, cond=cond,
            desc=self.key_list(alias="s", suffix=" DESC"))

    def sql_update(self, cond, filt) -> Any:
        assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(col), fragment(expr))
                                         for col, expr in self.spec.set.items())
        where = cond if filt is None else sql.SQL("{} AND {}").format(cond, filt)
        return sql.SQL("UPDATE {t} SET {a} WHERE {w}").format(t=self.target.ident, a=assignments, w=where)

    def read_columns(self) -> list[str]:
        cols = self.spec.read_columns or list(self.target.columns)
        return list(dict.fromkeys(self.key + cols))

    def plain_select(self, cond, filt) -> Any:
        """What a batch of the Python transform reads (planned before the first batch; shown as ``sql``)."""
        where = cond if filt is None else sql.SQL("{} AND {}").format(cond, filt)
        return sql.SQL("SELECT {cols} FROM {t} WHERE {w} ORDER BY {keys}").format(
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in self.read_columns()), t=self.target.ident,
            w=where, keys=self.key_list())

    def guard_columns(self) -> list[str]:
        """Every non-key column the transform reads or writes: the write is guarded by all of them."""
        return [c for c in dict.fromkeys(self.read_columns() + list(self.spec.columns or [])) if c not in self.key]

    def write_columns(self) -> list[str]:
        return list(dict.fromkeys(self.key + list(self.spec.columns or [])))

    @staticmethod
    def tmp_names(prefix: str, names: list[str]) -> list[str]:
        return [f"{TMP_PREFIX}{prefix}{i}" for i in range(len(names))]

    @staticmethod
    def read_table(pair: int):
        return sql.Identifier(f"{READ_TABLE}_{pair}")

    @staticmethod
    def new_table(pair: int):
        return sql.Identifier(f"{TEMP_TABLE}_{pair}")

    def create_temps(self) -> list:
        """Two pairs of temp tables per connection, typed like the target's columns: a batch is read into
        one pair in the transaction that writes the batch before it from the other."""
        def create(ident, pairs: list[tuple[str, str]]):
            return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {tmp} AS SELECT {cols} FROM {t} WITH NO DATA").format(
                tmp=ident, t=self.target.ident,
                cols=sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.Identifier(c), sql.Identifier(a))
                                        for c, a in pairs))
        keys = list(zip(self.key, self.tmp_names("k", self.key)))
        guard = self.guard_columns()
        written = list(self.spec.columns)
        return [statement for pair in (0, 1) for statement in (
            create(self.read_table(pair), keys + list(zip(guard, self.tmp_names("o", guard)))),
            create(self.new_table(pair), keys + list(zip(written, self.tmp_names("n", written)))))]

    def read_rows(self, where, pair: int) -> Any:
        """One statement, one snapshot: the rows the transform gets are exactly the values kept
        in the read table for the write's guard.  No row lock is taken."""
        guard = self.guard_columns()
        knames, onames = self.tmp_names("k", self.key), self.tmp_names("o", guard)
        source = dict(zip(self.key, knames)) | dict(zip(guard, onames))
        returned = sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.Identifier(source[c]), sql.Identifier(c))
                                      for c in self.read_columns())
        return sql.SQL("WITH r AS (INSERT INTO {tmp} ({tcols}) SELECT {cols} FROM {t} WHERE {w} RETURNING {ret}) "
                       "SELECT * FROM r ORDER BY {keys}").format(
            tmp=self.read_table(pair), tcols=sql.SQL(", ").join(map(sql.Identifier, knames + onames)),
            cols=sql.SQL(", ").join(map(sql.Identifier, self.key + guard)), t=self.target.ident, w=where,
            ret=returned, keys=self.key_list())

    def batch_rows(self, cond, filt, pair: int) -> Any:
        return self.read_rows(cond if filt is None else sql.SQL("{} AND {}").format(cond, filt), pair)

    def retried_rows(self, cond, filt, pair: int) -> Any:
        """The rows of the batch the guarded write skipped, again: their keys come as text arrays."""
        knames = [sql.Identifier(f"u{i}") for i in range(len(self.key))]
        picked = sql.SQL("{} IN (SELECT {} FROM unnest({}) AS u({}))").format(
            self.key_expr(),
            sql.SQL(", ").join(sql.SQL("{}::").format(n) + sql.SQL(self.target.columns[k].type)
                               for n, k in zip(knames, self.key)),
            sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in self.key), sql.SQL(", ").join(knames))
        parts = [cond, picked] + ([] if filt is None else [filt])
        return self.read_rows(sql.SQL(" AND ").join(parts), pair)

    def copy_in(self, pair: int) -> Any:
        names = self.tmp_names("k", self.key) + self.tmp_names("n", list(self.spec.columns))
        return sql.SQL("COPY {tmp} ({cols}) FROM STDIN").format(
            tmp=self.new_table(pair), cols=sql.SQL(", ").join(map(sql.Identifier, names)))

    def guarded_update(self, cond, filt, pair: int) -> Any:
        """Write the new values where every guarded column still holds the value that was read
        (NULL-safe); its row count says whether every row was written."""
        t = (self.target.schema, self.target.table)
        written = list(self.spec.columns)
        assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("n", n))
                                         for c, n in zip(written, self.tmp_names("n", written)))
        unchanged = [self.same(qualified(t, c), sql.Identifier("o", o), c)
                     for c, o in zip(self.guard_columns(), self.tmp_names("o", self.guard_columns()))]
        where = sql.SQL(" AND ").join([self.pair_join(t), cond] + ([] if filt is None else [filt]) + unchanged)
        return sql.SQL("UPDATE {t} SET {a} FROM {new} AS n JOIN {old} AS o ON {on} WHERE {w}").format(
            t=self.target.ident, a=assignments, new=self.new_table(pair), old=self.read_table(pair),
            on=self.pair_join(None), w=where)

    def skipped_rows(self, cond, pair: int) -> Any:
        """After a guarded write that wrote fewer rows than it was given: the keys (as text) of the rows
        it skipped, i.e. rows of the batch that hold neither the value read nor the value written."""
        t = (self.target.schema, self.target.table)
        written = list(self.spec.columns)
        as_written = dict(zip(written, self.tmp_names("n", written)))
        now = [self.same(qualified(t, c), sql.Identifier("n", as_written[c]), c) if c in as_written else
               self.same(qualified(t, c), sql.Identifier("o", o), c)
               for c, o in zip(self.guard_columns(), self.tmp_names("o", self.guard_columns()))]
        keys = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("n", k))
                                  for k in self.tmp_names("k", self.key))
        return sql.SQL("SELECT {keys} FROM {new} AS n JOIN {old} AS o ON {on} JOIN {t} ON {tj} "
                       "WHERE {cond} AND NOT ({now})").format(
            keys=keys, new=self.new_table(pair), old=self.read_table(pair), on=self.pair_join(None),
            t=self.target.ident, tj=self.pair_join(t), cond=cond, now=sql.SQL(" AND ").join(now))

    def same(self, left, right, column: str) -> Any:
        """NULL-safe equality; a type without '=' (json, xml, point) is compared in its text form."""
        text = "{}::text IS NOT DISTINCT FROM {}::text" if column in self.text_guard else "{} IS NOT DISTINCT FROM {}"
        return sql.SQL(text).format(left, right)

    def pair_join(self, target: tuple | None) -> Any:
        """The key join of the new values (n) with the values read (o), or of n with the target table."""
        knames = self.tmp_names("k", self.key)
        return sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(qualified(target, k) if target else sql.Identifier("o", kn),
                                      sql.Identifier("n", kn))
            for k, kn in zip(self.key, knames))

    def empty_temps(self, *pairs: int) -> Any:
        return sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(
            t for pair in pairs for t in (self.read_table(pair), self.new_table(pair))))

    def key_bounds_by_offset(self, cond) -> Any:
        texts = self.key_texts()
        return sql.SQL("SELECT {texts} FROM {t} WHERE {cond} ORDER BY {keys} OFFSET %s LIMIT 1").format(
            texts=texts, t=self.target.ident, cond=cond, keys=self.key_list())


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
def ensure_checkpoint_table(cur, schema: str) -> None:
    s = sql.Identifier(schema)
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
    cur.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {}.{} (
        backfill text NOT NULL,
        worker integer NOT NULL,
        table_name text NOT NULL,
        key_columns text[] NOT NULL,
        definition_hash text NOT NULL,
        range_lo text[],
        range_hi text[],
        last_key text[],
        rows_done bigint NOT NULL DEFAULT 0,
        rows_updated bigint NOT NULL DEFAULT 0,
        batches bigint NOT NULL DEFAULT 0,
        batch_size integer,
        status text NOT NULL CHECK (status IN ('running', 'done', 'failed')),
        run_id bigint,
        since timestamptz,
        pass_started_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at timestamptz,
        last_success_at timestamptz,
        last_error text,
        PRIMARY KEY (backfill, worker)
    )""").format(s, sql.Identifier(CHECKPOINT_TABLE)))
    # The safe watermark of an incremental pass (item: rows committed late); older tables gain it.
    cur.execute(sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS watermark timestamptz").format(
        s, sql.Identifier(CHECKPOINT_TABLE)))
    # Every execution of a backfill, one row per worker, updated in each batch's own transaction:
    # the rows that a killed run committed are counted here exactly, with its run id.
    cur.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {}.{} (
        id bigserial PRIMARY KEY,
        backfill text NOT NULL,
        worker integer NOT NULL,
        table_name text NOT NULL,
        pass_started_at timestamptz NOT NULL,
        resumed boolean NOT NULL DEFAULT false,
        run_id bigint,
        pid integer,
        control_host text,
        started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at timestamptz,
        status text NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
        rows_done bigint NOT NULL DEFAULT 0,
        rows_updated bigint NOT NULL DEFAULT 0,
        batches bigint NOT NULL DEFAULT 0,
        last_error text
    )""").format(s, sql.Identifier(PASSES_TABLE)))
    cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {}.{} (backfill, run_id)").format(
        sql.Identifier(PASSES_TABLE + "_backfill_run"), s, sql.Identifier(PASSES_TABLE)))


def checkpoint_ident(schema: str):
    return sql.Identifier(schema, CHECKPOINT_TABLE)


def passes_ident(schema: str):
    return sql.Identifier(schema, PASSES_TABLE)


PASS_COLUMNS = ("backfill", "worker", "pass_started_at", "resumed", "run_id", "pid", "control_host", "started_at",
                "finished_at", "status", "rows_done", "rows_updated", "batches", "last_error")


def read_passes(cur, schema: str, names: list[str] | None = None, run_ids: list[int] | None = None) -> list[dict]:
    """The recorded executions of backfills (all, or of these names / runs), oldest first."""
    if resolve_table(cur, PASSES_TABLE, schema=schema) is None:
        return []
    conds, params = [sql.SQL("true")], []
    if names is not None:
        conds.append(sql.SQL("backfill = ANY(%s)"))
        params.append(list(names))
    if run_ids is not None:
        conds.append(sql.SQL("run_id = ANY(%s)"))
        params.append([int(r) for r in run_ids])
    cur.execute(sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in PASS_COLUMNS), passes_ident(schema),
        sql.SQL(" AND ").join(conds)), params)
    return [jsonable(dict(zip(PASS_COLUMNS, row))) for row in cur.fetchall()]


CHECKPOINT_COLUMNS = ("worker", "range_lo", "range_hi", "last_key", "rows_done", "rows_updated", "batches",
                      "batch_size", "status", "run_id", "since", "pass_started_at", "updated_at", "finished_at",
                      "last_success_at", "last_error", "definition_hash", "table_name", "watermark")


def read_checkpoints(cur, schema: str, name: str) -> list[dict]:
    found = resolve_table(cur, CHECKPOINT_TABLE, schema=schema)
    if found is None:
        return []
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
                (found["oid"],))
    present = {r[0] for r in cur.fetchall()}
    # A table made by an older release lacks the newer columns until a run adds them: read them as NULL.
    cur.execute(sql.SQL("SELECT {} FROM {} WHERE backfill = %s ORDER BY worker").format(
        sql.SQL(", ").join(sql.Identifier(c) if c in present else sql.SQL("NULL") for c in CHECKPOINT_COLUMNS),
        checkpoint_ident(schema)), (name,))
    return [dict(zip(CHECKPOINT_COLUMNS, row)) for row in cur.fetchall()]


def jsonable(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def summarise_checkpoints(rows: list[dict]) -> dict | None:
    if not rows:
        return None
    statuses = {r["status"] for r in rows}
    status = "failed" if "failed" in statuses else ("running" if "running" in statuses else "done")
    return jsonable({
        "status": status,
        "workers": len(rows),
        "rows_done": sum(r["rows_done"] for r in rows),
        "rows_updated": sum(r["rows_updated"] for r in rows),
        "batches": sum(r["batches"] for r in rows),
        "pass_started_at": rows[0]["pass_started_at"],
        "last_success_at": rows[0]["last_success_at"],
        "since": rows[0]["since"],
        "last_error": next((r["last_error"] for r in rows if r["last_error"]), None),
        "ranges": [{"worker": r["worker"], "after": r["range_lo"], "through": r["range_hi"],
                    "last_key": r["last_key"], "status": r["status"], "rows_done": r["rows_done"],
                    "rows_updated": r["rows_updated"], "batches": r["batches"]} for r in rows],
    })


# ---------------------------------------------------------------------------------------
# COPY text for the Python transform's results
# ---------------------------------------------------------------------------------------
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_value(value: Any) -> str:
    """One value in COPY text format: None is NULL, dict/list are JSON, str is the column's text input."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
    elif isinstance(value, (datetime.datetime, datetime.date)):
        text = value.isoformat()
    else:
        text = str(value)
    return text.translate(_COPY_ESCAPES) if ("\\" in text or "\t" in text or "\n" in text or "\r" in text) \
        else text


# ---------------------------------------------------------------------------------------
# Progress: JSON lines + Prometheus textfile
# ---------------------------------------------------------------------------------------
METRIC_HELP = {
    "pgmigrate_backfill_rows_done": ("gauge", "Rows (keys) the backfill has processed in its current pass."),
    "pgmigrate_backfill_rows_expected": ("gauge", "Rows the current pass covers (estimate, corrected as it goes)."),
    "pgmigrate_backfill_rows_per_second": ("gauge", "Rows processed per second in this run."),
    "pgmigrate_backfill_eta_seconds": ("gauge", "Estimated seconds until the pass completes."),
    "pgmigrate_backfill_progress_ratio": ("gauge", "rows_done / rows_expected (1 when the pass is complete)."),
    "pgmigrate_backfill_batches_total": ("counter", "Batches committed in the current pass."),
    "pgmigrate_backfill_retries_total": ("counter", "Batches retried (lock timeout, deadlock) in this run."),
    "pgmigrate_backfill_holds_total": ("counter", "Health holds (replication lag, vacuum, archive backlog)."),
    "pgmigrate_backfill_last_batch_seconds": ("gauge", "Duration of the last batch transaction."),
    "pgmigrate_backfill_batch_size": ("gauge", "Current (adaptive) batch size."),
    "pgmigrate_backfill_last_update_timestamp_seconds": ("gauge", "Unix time of the last progress update."),
    "pgmigrate_backfill_workers_active": ("gauge", "Batches the pace lets run at once (max_foreground_p99_ms)."),
    "pgmigrate_backfill_target_batch_seconds": ("gauge", "Batch duration the pace aims at now."),
    "pgmigrate_backfill_pause_seconds": ("gauge", "Pause between a worker's batches the pace sets now."),
    "pgmigrate_backfill_foreground_p99_seconds": ("gauge", "p99 of the pace's latest foreground probes."),
    "pgmigrate_backfill_foreground_budget_seconds": ("gauge", "The foreground p99 budget (max_foreground_p99_ms)."),
}


class Progress:
    """Thread-safe counters of one run, reported as JSON lines and Prometheus metrics."""

    def __init__(self, spec: Spec, table: str, done_before: int, updated_before: int, batches_before: int,
                 remaining_estimates: dict[int, int], database: str = "") -> None:
        self.spec = spec
        self.table = table
        self.database = database
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.done_before = done_before
        self.updated_before = updated_before
        self.batches_before = batches_before
        self.remaining = dict(remaining_estimates)  # per worker: estimate of keys left at the start
        self.done_w = dict.fromkeys(remaining_estimates, 0)
        self.finished_w: set[int] = set()
        self.rows_done = 0
        self.rows_updated = 0
        self.batches = 0
        self.retries = 0
        self.rows_retried = 0
        self.conflicts = 0
        self.holds = 0
        self.hold_seconds = 0.0
        self.hold_reasons: dict[str, int] = {}
        self.batch_size = spec.batch_size
        self.last_batch_ms = 0.0
        self.max_batch_ms = 0.0
        self.max_lock_ms = 0.0
        self.last_emit = 0.0
        self.finished = False
        self.pace: Pace | None = None  # the foreground latency budget's decisions, in every line
        if spec.progress_file:
            os.makedirs(os.path.dirname(os.path.abspath(spec.progress_file)), exist_ok=True)

    # -- counters ------------------------------------------------------------------
    def batch(self, worker: int, scanned: int, updated: int, batch_ms: float, lock_ms: float, size: int,
              exhausted: bool, retried: int = 0) -> None:
        with self.lock:
            self.rows_retried += retried
            self.rows_done += scanned
            self.rows_updated += updated
            self.batches += 1
            self.done_w[worker] = self.done_w.get(worker, 0) + scanned
            if exhausted:
                self.finished_w.add(worker)
            self.batch_size = size
            self.last_batch_ms = batch_ms
            self.max_batch_ms = max(self.max_batch_ms, batch_ms)
            self.max_lock_ms = max(self.max_lock_ms, lock_ms)
        self.emit("batch")

    def worker_finished(self, worker: int) -> None:
        with self.lock:
            self.finished_w.add(worker)

    def retry(self, reason: str) -> None:
        with self.lock:
            self.retries += 1
        self.emit("retry", force=True, reason=reason)

    def conflict(self, rows: int) -> None:
        """A guarded write skipped rows changed since they were read (they are read again)."""
        with self.lock:
            self.conflicts += 1
        self.emit("conflict", force=True, rows=rows)

    def hold(self, reason: str, new_episode: bool, waited: float) -> None:
        with self.lock:
            if new_episode:
                self.holds += 1
                kind = reason.split(":", 1)[0]
                self.hold_reasons[kind] = self.hold_reasons.get(kind, 0) + 1
            self.hold_seconds += waited
        self.emit("hold", force=new_episode, reason=reason)

    # -- derived figures -----------------------------------------------------------
    def totals(self) -> dict:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = self.done_before + self.rows_done
        left = sum(0 if w in self.finished_w else max(est - self.done_w.get(w, 0), 0)
                   for w, est in self.remaining.items())
        total = done + left
        if self.finished:
            total, left = done, 0
        rate = self.rows_done / elapsed
        eta = (left / rate) if rate > 0 else None
        return {"rows_done": done, "rows_total": total, "rows_updated": self.updated_before + self.rows_updated,
                "rate": round(rate, 1), "eta_s": None if eta is None else round(eta, 1),
                "progress": round(done / total, 4) if total else 1.0, "elapsed_s": round(elapsed, 2)}

    def emit(self, event: str, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last_emit < self.spec.progress_interval_s:
                return
            self.last_emit = now
            figures = self.totals()
            line = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                    "backfill": self.spec.name, "table": self.table, "event": event, "run_id": self.spec.run_id,
                    "token": self.spec.progress_token, "pid": os.getpid(), **figures,
                    "batches": self.batches_before + self.batches, "batch_size": self.batch_size,
                    "batch_ms": round(self.last_batch_ms, 1), "retries": self.retries,
                    "rows_retried": self.rows_retried, "holds": self.holds,
                    **(self.pace.snapshot() if self.pace is not None else {}), **extra}
            if self.spec.progress_file:
                with open(self.spec.progress_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(line, default=str) + "\n")
            if self.spec.metrics_file:
                self._write_metrics(figures)

    def _write_metrics(self, figures: dict) -> None:
        labels = {"backfill": self.spec.name, "table": self.table, "database": self.database}
        values = {
            "pgmigrate_backfill_rows_done": figures["rows_done"],
            "pgmigrate_backfill_rows_expected": figures["rows_total"],
            "pgmigrate_backfill_rows_per_second": figures["rate"],
            "pgmigrate_backfill_eta_seconds": figures["eta_s"] if figures["eta_s"] is not None else float("nan"),
            "pgmigrate_backfill_progress_ratio": figures["progress"],
            "pgmigrate_backfill_batches_total": self.batches_before + self.batches,
            "pgmigrate_backfill_retries_total": self.retries,
            "pgmigrate_backfill_holds_total": self.holds,
            "pgmigrate_backfill_last_batch_seconds": round(self.last_batch_ms / 1000.0, 4),
            "pgmigrate_backfill_batch_size": self.batch_size,
            "pgmigrate_backfill_last_update_timestamp_seconds": round(time.time(), 3),
        }
        pace = self.pace.snapshot() if self.pace is not None else {}
        if pace:
            values.update({
                "pgmigrate_backfill_workers_active": pace["workers_active"],
                "pgmigrate_backfill_target_batch_seconds": pace["target_batch_ms"] / 1000.0,
                "pgmigrate_backfill_pause_seconds": pace["pause_ms"] / 1000.0,
                "pgmigrate_backfill_foreground_p99_seconds":
                    float("nan") if pace["foreground_p99_ms"] is None else pace["foreground_p99_ms"] / 1000.0,
                "pgmigrate_backfill_foreground_budget_seconds": pace["foreground_budget_ms"] / 1000.0,
            })
        metrics = [{"name": name, "type": METRIC_HELP[name][0], "help": METRIC_HELP[name][1],
                    "samples": [(labels, value)]} for name, value in values.items()]
        try:  # one file for every backfill (and database): this backfill's series replace only its own
            merge_textfile(self.spec.metrics_file, metrics, {"backfill": self.spec.name, "database": self.database})
        except OSError:
            pass  # metrics are best effort; the JSON lines and the result still report progress


# ---------------------------------------------------------------------------------------
# Adaptive batch size
# ---------------------------------------------------------------------------------------
class BatchSizer:
    """Toward ``target_batch_ms``: an exponential moving average of the time per row sets the
    next size; shrink at once when a batch was slow (locks were held too long), grow by at
    most 20 % per batch when it was fast, always within [min, max]."""

    def __init__(self, spec: Spec, start: int | None = None) -> None:
        self.min = spec.min_batch_size
        self.max = max(spec.max_batch_size, self.min)
        self.target = float(spec.target_batch_ms)
        self.size = min(max(start or spec.batch_size, self.min), self.max)
        self.ms_per_row: float | None = None

    def observe(self, rows: int, ms: float) -> int:
        if rows <= 0:
            return self.size
        sample = ms / rows
        self.ms_per_row = sample if self.ms_per_row is None else 0.7 * self.ms_per_row + 0.3 * sample
        ideal = self.target / max(self.ms_per_row, 1e-6)
        if ms > self.target * 1.1 or ideal < self.size * 0.9:
            new = max(ideal, self.size * 0.5)
            new = min(new, self.size)
        elif ideal > self.size * 1.1 and rows >= self.size:
            new = min(ideal, self.size * 1.2)
        else:
            new = self.size
        self.size = int(min(max(new, self.min), self.max))
        return self.size

    def halve(self) -> int:
        self.size = max(self.min, self.size // 2)
        return self.size


# ---------------------------------------------------------------------------------------
# Health holds
# ---------------------------------------------------------------------------------------
class HealthGate:
    """Reasons to wait before the next batch; checked at most once per ``hold_poll_s``."""

    def __init__(self, spec: Spec, target: Target, blind: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.target = target
        self.lock = threading.Lock()
        self.checked_at = 0.0
        self.reason: str | None = None
        self.notes: list[str] = []
        # A hold that cannot see (Backfill.check_holds said so before the first batch) is not probed:
        # its view would only return NULLs.  The vacuum hold still sees the role's own vacuums.
        blind = blind or {}
        self.lag_check = spec.max_replication_lag_s is not None and "replication_lag" not in blind
        self.archive_check = spec.max_archive_backlog is not None and "archive_backlog" not in blind
        # Set when a required hold stops seeing during the run: the worker stops at the batch boundary.
        self.fatal: str | None = None

    @property
    def enabled(self) -> bool:
        return self.lag_check or self.spec.hold_on_autovacuum or self.archive_check

    def check(self, conn) -> str | None:
        if not self.enabled:
            return None
        with self.lock:
            if time.monotonic() - self.checked_at < min(self.spec.hold_poll_s, 1.0):
                return self.reason
            self.reason = self._probe(conn)
            self.checked_at = time.monotonic()
            return self.reason

    def _probe(self, conn) -> str | None:
        spec = self.spec
        with conn.cursor() as cur:
            try:
                if self.lag_check:
                    cur.execute("SELECT application_name, extract(epoch FROM greatest(write_lag, flush_lag, "
                                "replay_lag))::float8 AS lag FROM pg_stat_replication "
                                "ORDER BY lag DESC NULLS LAST LIMIT 1")
                    row = cur.fetchone()
                    if row and row[1] is not None and row[1] > spec.max_replication_lag_s:
                        return (f"replication_lag: standby {row[0] or '?'} is {row[1]:.1f} s behind "
                                f"(max_replication_lag_s={spec.max_replication_lag_s})")
                if spec.hold_on_autovacuum:
                    cur.execute("SELECT v.pid, coalesce(a.backend_type, '?'), v.phase FROM pg_stat_progress_vacuum v "
                                "LEFT JOIN pg_stat_activity a ON a.pid = v.pid WHERE v.relid = %s LIMIT 1",
                                (self.target.oid,))
                    row = cur.fetchone()
                    if row:
                        return (f"vacuum: {row[1]} (pid {row[0]}) is vacuuming {self.target.label} "
                                f"(phase {row[2]})")
                if self.archive_check:
                    cur.execute("SAVEPOINT archive_probe")
                    try:
                        cur.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE %s",
                                    ("%.ready",))
                        ready = cur.fetchone()[0]
                        cur.execute("RELEASE SAVEPOINT archive_probe")
                        if ready > spec.max_archive_backlog:
                            return (f"archive_backlog: {ready} WAL segments wait to be archived "
                                    f"(max_archive_backlog={spec.max_archive_backlog})")
                    except psycopg2.Error as exc:
                        cur.execute("ROLLBACK TO SAVEPOINT archive_probe")
                        self.archive_check = False
                        note = ("WAL archive backlog is not checked (max_archive_backlog): pg_ls_archive_statusdir() "
                                f"failed: {str(exc).strip().splitlines()[0]}. It needs superuser or pg_monitor")
                        if "archive_backlog" in spec.required_holds:
                            self.fatal = f"the required hold archive_backlog (required_holds) stopped seeing: {note}"
                        else:
                            self.notes.append(note + hint_for_warning("archive_backlog"))
                return None
            finally:
                conn.rollback()


# ---------------------------------------------------------------------------------------
# The foreground latency budget
# ---------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of the values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(q * 1000) * len(ordered) // 1000))  # ceil(q * n) without float rounding
    return ordered[min(rank, len(ordered)) - 1]


class Pace:
    """Keeps the application's latency within ``max_foreground_p99_ms`` while the backfill runs.

    A probe process (PROBE_PROCESS) with its own connection times a cheap, indexed read of the target (a key a
    batch has just written, where the backfill's work is; ``SELECT 1`` before the first batch)
    every PROBE_INTERVAL_S, each timed from the moment it was due.  Once PACE_MIN_SAMPLES probes have come in since
    the last decision, their p99 decides:

    * over PACE_HEADROOM (80 %) of the budget: one worker fewer; at one worker, shorter batches (half, down to
      PACE_FLOOR_BATCH_MS); at the shortest batch, longer pauses (doubled, up to ``max_pause_ms``);
    * under half the budget: the same steps back: shorter pauses, longer batches (up to the
      plan's ``target_batch_ms``); under a quarter of it, one worker more (up to ``max_workers``:
      a worker more about doubles the pressure);
    * in between: no change.

    The probes after a decision are the ones the next decision reads, so each step is judged by
    its own effect; a step up that the next decision has to take back is not tried again for a
    while (twice as long each time), so the pace settles below the budget instead of swinging
    across it.  Workers take a slot per batch: at most ``workers`` batches run at once, the
    key ranges of the others wait at their batch boundary.  With the budget at 0 nothing is probed
    and the plan's settings hold."""

    def __init__(self, spec: Spec, target: Target, stmts: Statements, connect: Callable[[], Any],
                 ranges: int, probe_conn: dict | None = None) -> None:
        self.spec = spec
        self.probe_conn = probe_conn  # libpq keywords: the probe runs as a process of its own (PROBE_PROCESS)
        self.proc: subprocess.Popen | None = None
        self.proc_lock = threading.Lock()
        self.stmts = stmts
        self.target = target
        self.connect = connect
        self.budget = float(spec.max_foreground_p99_ms or 0)
        self.enabled = self.budget > 0
        self.most = max(1, ranges)
        self.workers = max(1, min(spec.workers, self.most))
        self.ceiling_ms = float(spec.target_batch_ms)
        self.floor_ms = float(min(spec.target_batch_ms, PACE_FLOOR_BATCH_MS))
        self.batch_ms = self.ceiling_ms
        self.min_pause = float(spec.pause_ms)
        self.max_pause = float(max(spec.max_pause_ms, spec.pause_ms))
        self.pause_ms = self.min_pause
        self.cond = threading.Condition()
        self.running = 0
        self.window: list[float] = []
        self.samples: list[float] = []  # every probe of the run (for the result's p99), at most 200,000
        self.probes = 0
        self.failed_probes = 0
        self.p99: float | None = None
        self.decisions: list[dict] = []
        self.used = {"workers": {self.workers}, "batch_ms": {self.batch_ms}, "pause_ms": {self.pause_ms}}
        self.at_floor_over = 0  # decisions that found the budget exceeded with nothing left to slow down
        # Hysteresis: a step up that the next window reverts is not tried again for `hold` windows, doubled each
        # time it is reverted again (halved when a step up holds), so the pace does not swing across the budget.
        self.last_step: str | None = None
        self.hold = 0
        self.backoff = 1
        self.note: str | None = None
        self.progress: Progress | None = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    # -- the workers' side -----------------------------------------------------------
    @contextmanager
    def slot(self, stop: threading.Event):
        """Wait for a free batch slot (True) or for stop (False); the slot is given back on exit."""
        with self.cond:
            while self.running >= self.workers and not stop.is_set():
                self.cond.wait(0.2)
            if stop.is_set():
                taken = False
            else:
                self.running += 1
                taken = True
        try:
            yield taken
        finally:
            if taken:
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()

    def wrote(self, key: list | None) -> None:
        if key is not None and self.enabled and self.proc is not None:
            line = json.dumps(list(key), default=str) + "\n"
            with self.proc_lock:
                try:
                    self.proc.stdin.write(line)
                    self.proc.stdin.flush()
                except (OSError, ValueError):
                    pass  # the probe process has ended: its reader says why

    def pause_s(self) -> float:
        return max(self.pause_ms, self.min_pause) / 1000.0

    # -- the probe process ------------------------------------------------------------
    def start(self, progress: Progress) -> None:
        self.progress = progress
        if not self.enabled:
            return
        problem = self.start_process()
        if problem:  # the backfill goes on at the plan's settings and says why
            self.disable(problem)

    def stop(self) -> None:
        self.done.set()
        if self.proc is not None:
            with self.proc_lock:
                try:
                    self.proc.stdin.close()  # the probe process ends when its stdin does
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def probe_sql(self, conn) -> str:
        return sql.SQL("SELECT 1 FROM {} WHERE {} = {}").format(
            self.target.ident, self.stmts.key_expr(), self.stmts.key_param()).as_string(conn)

    def start_process(self) -> str | None:
        """Start the probe (PROBE_PROCESS) and the thread that reads its timings; why it could not, or None."""
        if self.probe_conn is None:
            return "no connection for its probe"
        try:
            conn = self.connect()
            try:
                by_key = self.probe_sql(conn)
            finally:
                conn.close()
            cfg = {"conn": self.probe_conn, "sql": by_key, "interval": PROBE_INTERVAL_S,
                   "timeout": f"{max(int(self.budget * 20), 1000)}ms"}
            self.proc = subprocess.Popen([sys.executable, "-c", PROBE_PROCESS], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                         close_fds=True)
            with self.proc_lock:
                self.proc.stdin.write(json.dumps(cfg, default=str) + "\n")
                self.proc.stdin.flush()
        except Exception as exc:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
            return f"its probe could not start ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        self.thread = threading.Thread(target=self.read_process, name="backfill-pace", daemon=True)
        self.thread.start()
        return None

    def read_process(self) -> None:
        """The probe process's timings, a line each, into the decisions."""
        proc = self.proc
        for line in proc.stdout:
            status, _, rest = line.strip().partition(" ")
            if status in ("ok", "slow"):
                try:
                    ms = float(rest)
                except ValueError:
                    continue
                if status == "slow":
                    self.failed_probes += 1
                self.observe(ms)
            elif status == "error":
                self.disable(f"its probe stopped ({rest})")
                return
        if not self.done.is_set():
            self.disable(f"its probe process ended (exit status {proc.wait()})")

    def disable(self, why: str) -> None:
        with self.cond:
            self.enabled = False
            self.note = (f"backfill {self.spec.name}: the foreground latency budget (max_foreground_p99_ms="
                         f"{self.budget:g}) is not kept: {why}; the backfill goes on at the pace it had")
        if self.progress is not None:
            self.progress.emit("warning", force=True, warning=self.note)

    def observe(self, ms: float) -> None:
        self.probes += 1
        self.window.append(ms)
        if len(self.samples) < 200_000:
            self.samples.append(ms)
        if len(self.window) >= PACE_MIN_SAMPLES:
            p99 = percentile(self.window, 0.99)
            self.window = []
            self.decide(p99)

    def decide(self, p99: float) -> None:
        with self.cond:
            self.p99 = p99
            before = (self.workers, self.batch_ms, self.pause_ms)
            if self.hold:
                self.hold -= 1
            if p99 > self.budget * PACE_HEADROOM:
                if self.last_step == "up":  # the last step up was one too many
                    self.backoff = min(self.backoff * 2, 64)
                    self.hold = self.backoff
                self.last_step = "down"
                if self.workers > 1:
                    self.workers -= 1
                elif self.batch_ms > self.floor_ms:
                    self.batch_ms = max(self.floor_ms, self.batch_ms / 2)
                elif self.pause_ms < self.max_pause:
                    self.pause_ms = min(self.max_pause, max(self.pause_ms * 2, self.floor_ms))
                elif p99 > self.budget:
                    self.at_floor_over += 1
            elif p99 < self.budget / 2 and not self.hold:
                if self.last_step == "up":  # the last step up held
                    self.backoff = max(1, self.backoff // 2)
                self.last_step = "up"
                if self.pause_ms > self.min_pause:
                    self.pause_ms = self.pause_ms / 2 if self.pause_ms / 2 >= 5 else self.min_pause
                    self.pause_ms = max(self.pause_ms, self.min_pause)
                elif self.batch_ms < self.ceiling_ms:
                    self.batch_ms = min(self.ceiling_ms, self.batch_ms * 1.5)
                elif self.workers < self.most and p99 < self.budget / 4:
                    # A worker more about doubles the backfill's pressure on the server: it needs more room.
                    self.workers += 1
            after = (self.workers, self.batch_ms, self.pause_ms)
            if after == before:
                if self.last_step == "up":
                    self.last_step = None  # nothing left to raise: not a step
                return
            self.used["workers"].add(self.workers)
            self.used["batch_ms"].add(self.batch_ms)
            self.used["pause_ms"].add(self.pause_ms)
            decision = {"foreground_p99_ms": round(p99, 2), "workers": self.workers,
                        "target_batch_ms": round(self.batch_ms, 1), "pause_ms": round(self.pause_ms, 1),
                        "why": ("over the budget" if p99 > self.budget else "near the budget")
                        if p99 > self.budget * PACE_HEADROOM else "under half the budget"}
            if len(self.decisions) < 1000:
                self.decisions.append(decision)
            self.cond.notify_all()
        if self.progress is not None:
            self.progress.emit("pace", force=True, decision=decision["why"])

    # -- reporting ------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The pace's figures for a progress line."""
        if not self.spec.max_foreground_p99_ms:
            return {}
        return {"workers_active": self.workers, "target_batch_ms": round(self.batch_ms, 1),
                "pause_ms": round(self.pause_ms, 1),
                "foreground_p99_ms": None if self.p99 is None else round(self.p99, 2),
                "foreground_budget_ms": self.budget}

    def result(self) -> dict:
        return {"budget_ms": self.budget, "enabled": bool(self.spec.max_foreground_p99_ms) and self.note is None,
                "probes": self.probes, "probes_timed_out": self.failed_probes,
                "probe": "process" if self.proc is not None else None,
                "probe_pid": self.proc.pid if self.proc is not None else None,
                "foreground_p99_ms": None if not self.samples else round(percentile(self.samples, 0.99), 2),
                "foreground_p50_ms": None if not self.samples else round(percentile(self.samples, 0.5), 2),
                "workers": self.workers, "max_workers": self.most, "target_batch_ms": round(self.batch_ms, 1),
                "pause_ms": round(self.pause_ms, 1),
                "workers_used": sorted(self.used["workers"]),
                "batch_ms_used": sorted(round(v, 1) for v in self.used["batch_ms"]),
                "pause_ms_used": sorted(round(v, 1) for v in self.used["pause_ms"]),
                "decisions": len(self.decisions), "last_decisions": self.decisions[-20:],
                "over_budget_at_slowest": self.at_floor_over, "note": self.note}


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------
@dataclass
class WorkerState:
    worker: int
    range_lo: list | None
    range_hi: list | None
    last_key: list | None
    status: str
    batch_size: int | None
    history_id: int | None = None


class Backfill:
    def __init__(self, spec: Spec, connect: Callable[[], Any], probe_conn: dict | None = None) -> None:
        self.spec = spec
        self.connect = connect
        self.probe_conn = probe_conn  # libpq keywords for the pace's probe process (None: the budget is not kept)
        self.conn = connect()
        self.target: Target | None = None
        self.stmts: Statements | None = None
        self.func: Callable | None = None
        self.warnings: list[str] = []
        self.stop_reason: str | None = None
        self.blind: dict[str, str] = {}
        self.pace: Pace | None = None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    # -- validation ----------------------------------------------------------------
    def prepare(self) -> None:
        spec = self.spec
        if bool(spec.set) == bool(spec.python):
            raise BackfillError(f"backfill {spec.name}: give exactly one of 'set' (SQL expressions per column) or "
                                "'python' (module:function)")
        if spec.python and not spec.columns:
            raise BackfillError(f"backfill {spec.name}: a python transform needs 'columns' (the columns it writes)")
        if spec.incremental and not (spec.incremental.get("hours") or spec.incremental.get("since_last_run")):
            raise BackfillError(f"backfill {spec.name}: incremental needs 'hours' or 'since_last_run: true'")
        if spec.min_batch_size > spec.max_batch_size:
            raise BackfillError(f"backfill {spec.name}: min_batch_size ({spec.min_batch_size}) is larger than "
                                f"max_batch_size ({spec.max_batch_size})")
        for field_path, text, _kind in backfill_fragments({"set": spec.set, "where": spec.where}, spec.name):
            try:
                parse_expression(text, field_path)
            except PlanSqlError as exc:
                raise BackfillError(f"backfill {exc}") from None
        with self.conn.cursor() as cur:
            self.check_holds(cur)
            self.target = resolve_target(cur, spec)
            check_key(cur, spec, self.target)
            if spec.set:
                require_columns(spec, self.target, list(spec.set), "column to set")
            else:
                require_columns(spec, self.target, list(spec.columns), "column to write")
                if spec.read_columns:
                    require_columns(spec, self.target, list(spec.read_columns), "column to read")
            if spec.incremental:
                spec.incremental.setdefault("column", "created_at")
                require_columns(spec, self.target, [spec.incremental["column"]], "incremental column")
            self.stmts = Statements(spec, self.target)
            self.explain(cur)
            if spec.python:
                self.find_text_guards(cur)
        self.conn.rollback()
        if spec.python:
            self.func = load_function(spec)

    def check_holds(self, cur) -> None:
        """Before the first batch: a hold that cannot see with this role's privileges is a warning, or,
        when the backfill lists it in required_holds, a refusal (nothing has been written yet)."""
        spec = self.spec
        options = {"max_replication_lag_s": spec.max_replication_lag_s, "hold_on_autovacuum": spec.hold_on_autovacuum,
                   "max_archive_backlog": spec.max_archive_backlog, "required_holds": spec.required_holds}
        problems = required_holds_problems(options, f"backfill {spec.name}")
        if problems:
            raise BackfillError("; ".join(problems) + "; nothing was changed")
        kinds = configured_holds(options)
        if not kinds:
            return
        self.blind = blind_holds(kinds, read_privileges(cur))
        refused = refusal(spec.name, spec.required_holds, self.blind)
        if refused:
            self.conn.rollback()
            raise BackfillError(refused, blind_holds=dict(self.blind))
        self.warnings.extend(text + hint_for_warning(kind) for kind, text in self.blind.items())

    def explain(self, cur) -> None:
        """Plan the statements once: a syntax error, an unknown column or a type mismatch in the
        plan's SQL fails here, before anything is written (EXPLAIN does not execute)."""
        cond, params = self.stmts.range_cond(None, None)
        filt, fparams = self.stmts.filter_cond(self.now_param())
        stmt = (self.stmts.sql_update(cond, filt) if self.spec.set
                else self.stmts.plain_select(cond, filt))
        try:
            cur.execute(sql.SQL("EXPLAIN ") + stmt, params + fparams)
        except psycopg2.Error as exc:
            self.conn.rollback()
            text = str(exc).strip().rstrip(".")
            missing = "column" if getattr(exc, "pgcode", None) == "42703" else None
            field = self.failing_field(cur)
            where = (f"The problem is in {field}: fix it in the plan" if field
                     else "Fix 'set'/'where' in the plan")
            raise BackfillError(f"backfill {self.spec.name}: the SQL of the backfill does not plan: {text}. "
                                f"{where}; nothing was changed", missing=missing, field=field,
                                sql=stmt.as_string(self.conn)) from exc

    def find_text_guards(self, cur) -> None:
        """A guarded column whose type has no equality operator (json, xml, point) is compared in
        its text form: the value read and the value in the table print alike when unchanged."""
        for col in self.stmts.guard_columns():
            try:
                cur.execute(sql.SQL("EXPLAIN SELECT 1 FROM {t} WHERE {c} IS NOT DISTINCT FROM {c}").format(
                    t=self.target.ident, c=sql.Identifier(col)))
            except psycopg2.Error as exc:
                self.conn.rollback()
                if getattr(exc, "pgcode", None) != "42883":  # undefined_function: no '=' for the type
                    raise
                self.stmts.text_guard.add(col)

    def failing_field(self, cur) -> str | None:
        """Which plan field a statement that does not plan comes from: each SQL fragment is
        planned alone (EXPLAIN, nothing runs), so the message can name set.<column> or where."""
        probes = [(f"set.{col}", sql.SQL("UPDATE {t} SET {c} = {e} WHERE false").format(
                      t=self.target.ident, c=sql.Identifier(col), e=fragment(expr)))
                  for col, expr in (self.spec.set or {}).items()]
        if self.spec.where:
            probes.append(("where", sql.SQL("SELECT 1 FROM {t} WHERE {w}").format(
                t=self.target.ident, w=fragment(self.spec.where))))
        for name, probe in probes:
            try:
                cur.execute(sql.SQL("EXPLAIN ") + probe)
            except psycopg2.Error:
                self.conn.rollback()
                return name
            self.conn.rollback()
        return None

    def now_param(self) -> datetime.datetime | None:
        return datetime.datetime.now(datetime.timezone.utc) if self.spec.incremental else None

    def statement_text(self) -> str:
        lo = [f"<after {k}>" for k in self.target.key]
        cond, _ = self.stmts.range_cond(lo, lo)
        filt, _ = self.stmts.filter_cond(self.now_param())
        stmt = self.stmts.sql_update(cond, filt) if self.spec.set else self.stmts.plain_select(cond, filt)
        text = stmt.as_string(self.conn)
        return text.replace("%%", "%")

    # -- check mode ------------------------------------------------------------------
    def preview(self) -> dict:
        spec = self.spec
        with self.conn.cursor() as cur:
            rows = read_checkpoints(cur, spec.ops_schema, spec.name)
            since = self.incremental_since(cur, rows, preview=True)
            filt, fparams = self.stmts.filter_cond(since)
            where = filt if filt is not None else sql.SQL("true")
            if self.target.reltuples > spec.check_count_limit:
                cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(
                    self.target.ident, where), fparams)
                count, method = int(cur.fetchone()[0][0]["Plan"]["Plan Rows"]), "planner estimate"
            else:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.target.ident, where), fparams)
                count, method = cur.fetchone()[0], "count"
        self.conn.rollback()
        return {"changed": count > 0, "would_update": count, "count_method": method,
                "sql": self.statement_text(), "since": jsonable(since), "checkpoint": summarise_checkpoints(rows),
                "msg": f"would update {count} row(s) of {self.target.label} in batches of {spec.batch_size} "
                       f"({method})"}

    # -- the run ---------------------------------------------------------------------
    def incremental_since(self, cur, rows: list[dict], preview: bool = False) -> datetime.datetime | None:
        inc = self.spec.incremental
        if not inc:
            return None
        unfinished = [r for r in rows if r["status"] != "done"]
        if unfinished and not self.spec.restart:
            return unfinished[0]["since"]
        if inc.get("since_last_run"):
            last = rows[0]["last_success_at"] if rows else None
            if last is not None:
                return last
            if not inc.get("hours"):
                return None if preview else datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        cur.execute("SELECT now() - make_interval(secs => %s)", (float(inc["hours"]) * 3600.0,))
        return cur.fetchone()[0]

    def take_advisory_lock(self, cur) -> None:
        cur.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", (ADVISORY_CLASS, self.spec.name))
        if cur.fetchone()[0]:
            return
        cur.execute("SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.classid = hashtext(%s)::oid AND l.objid = hashtext(%s)::oid AND l.granted",
                    (ADVISORY_CLASS, self.spec.name))
        holder = cur.fetchone()
        who = (f"server pid {holder[0]} ({holder[1]}, since {holder[3]:%Y-%m-%d %H:%M:%S})" if holder
               else "another session")
        raise BackfillError(f"backfill {self.spec.name} is already running in {who}; a second copy is refused so "
                            "no batch is done twice. Wait for it to finish (tail its progress file), or end it "
                            "(pg_terminate_backend) and rerun to resume from the checkpoint")

    def start_pass(self, cur, rows: list[dict]) -> tuple[list[WorkerState], bool, datetime.datetime | None]:
        """Resume the unfinished pass of this backfill, or start a new one."""
        spec, ck = self.spec, checkpoint_ident(self.spec.ops_schema)
        unfinished = [r for r in rows if r["status"] != "done"]
        if unfinished and not spec.restart:
            if rows[0]["definition_hash"] != spec.definition_hash():
                raise BackfillError(f"backfill {spec.name}: an unfinished pass exists (checkpoint at "
                                    f"{[r['last_key'] for r in unfinished]}) but the backfill's definition changed "
                                    "since (table, key, set, python, where or incremental). Rerun with restart=true "
                                    "to start a new pass (safe when 'where' skips migrated rows)",
                                    checkpoint=summarise_checkpoints(rows))
            cur.execute(sql.SQL("UPDATE {} SET status = 'running', run_id = coalesce(%s, run_id), last_error = NULL, "
                                "updated_at = clock_timestamp() WHERE backfill = %s AND status = 'failed'").format(ck),
                        (spec.run_id, spec.name))
            states = [WorkerState(r["worker"], r["range_lo"], r["range_hi"], r["last_key"], "running",
                                  r["batch_size"]) for r in unfinished]
            return states, True, unfinished[0]["since"]
        since = self.incremental_since(cur, rows)
        last_success = rows[0]["last_success_at"] if rows else None
        lo = self.incremental_start(cur, since) if since is not None else None
        bounds = self.split(cur, lo, max(spec.workers, spec.max_workers or spec.workers))
        ranges = list(zip([lo, *bounds], [*bounds, None]))
        cur.execute(sql.SQL("DELETE FROM {} WHERE backfill = %s").format(ck), (spec.name,))
        cur.execute("SELECT now()")
        started = cur.fetchone()[0]
        watermark = self.safe_watermark(cur) if spec.incremental else None
        for worker, (rlo, rhi) in enumerate(ranges):
            cur.execute(sql.SQL("INSERT INTO {} (backfill, worker, table_name, key_columns, definition_hash, "
                                "range_lo, range_hi, status, run_id, since, pass_started_at, last_success_at, "
                                "batch_size, watermark) VALUES (%s, %s, %s, %s, %s, %s, %s, 'running', %s, %s, %s, %s, "
                                "%s, %s)")
                        .format(ck), (spec.name, worker, self.target.label, self.target.key, spec.definition_hash(),
                                      rlo, rhi, spec.run_id, since, started, last_success, spec.batch_size,
                                      watermark))
        states = [WorkerState(w, rlo, rhi, None, "running", spec.batch_size) for w, (rlo, rhi) in enumerate(ranges)]
        return states, False, since

    def safe_watermark(self, cur) -> datetime.datetime:
        """Where the next incremental pass may start: rows a transaction still open now inserts are
        invisible to this pass's batches, yet their timestamps lie before its start; so never past the
        start of the oldest transaction open now (or a prepared one), and back by the plan's overlap."""
        overlap = float((self.spec.incremental or {}).get("overlap_s") or 0.0)
        cur.execute(
            "SELECT least(now(), (SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()), (SELECT min(prepared) FROM pg_prepared_xacts WHERE database = "
            "current_database())) - make_interval(secs => %s), "
            "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' AND state IS NULL), "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role('pg_read_all_stats', 'USAGE')",
            (overlap,))
        watermark, hidden, privileged = cur.fetchone()
        if hidden and not privileged:
            self.warnings.append(
                f"backfill {self.spec.name}: {hidden} session(s) of other users are hidden from this user, so a "
                "transaction of theirs that is open now and commits late may insert rows older than the next "
                "pass's watermark; GRANT pg_read_all_stats TO the migration user, or set incremental.overlap_s "
                "to the longest such transaction")
        return watermark

    def incremental_start(self, cur, since) -> list | None:
        """With a single-column key, start the pass just before the first key in the window."""
        if self.stmts.composite:
            return None
        k = sql.Identifier(self.target.key[0])
        cur.execute(sql.SQL("SELECT min({k}) FROM {t} WHERE {c} >= %s").format(
            k=k, t=self.target.ident, c=sql.Identifier(self.spec.incremental["column"])), (since,))
        first = cur.fetchone()[0]
        if first is None:
            return None
        cur.execute(sql.SQL("SELECT max({k})::text FROM {t} WHERE {k} < %s").format(k=k, t=self.target.ident),
                    (first,))
        before = cur.fetchone()[0]
        return None if before is None else [before]

    def split(self, cur, lo: list | None, workers: int) -> list[list]:
        """N-1 boundary keys that cut the remaining key space into N ranges of about equal size."""
        if workers <= 1:
            return []
        cond, params = self.stmts.range_cond(lo, None)
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.target.ident, cond), params)
        total = cur.fetchone()[0]
        bounds: list[list] = []
        for i in range(1, workers):
            offset = total * i // workers
            if offset <= 0:
                continue
            cur.execute(self.stmts.key_bounds_by_offset(cond), params + [offset - 1])
            row = cur.fetchone()
            if row is not None and (not bounds or list(row) != bounds[-1]):
                bounds.append(list(row))
        return bounds

    def estimate(self, cur, state: WorkerState) -> int:
        cond, params = self.stmts.range_cond(state.last_key or state.range_lo, state.range_hi)
        cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(self.target.ident, cond),
                    params)
        return int(cur.fetchone()[0][0]["Plan"]["Plan Rows"])

    def calibrate(self, cur, estimates: dict[int, int], done_before: int = 0) -> dict[int, int]:
        """Planner estimates scale reltuples by the table's current size, which a backfill's own dead
        rows inflate; the statistics' live-row count is closer.  Scale the ranges by their ratio.
        The keys left can never be more than the live rows less the keys this pass has walked
        already (a resumed pass): a planner without fresh statistics would otherwise guess past it."""
        # The statistics' live rows, or the catalog's count of the last VACUUM/ANALYZE when they are
        # younger (a database made from a template or a restore starts with empty statistics).
        cur.execute("SELECT greatest(s.n_live_tup, c.reltuples::bigint) FROM pg_class c "
                    "LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid WHERE c.oid = %s", (self.target.oid,))
        row = cur.fetchone()
        cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}").format(self.target.ident))
        whole = int(cur.fetchone()[0][0]["Plan"]["Plan Rows"])
        if not row or not row[0] or whole <= 0:
            return estimates
        factor = min(row[0] / whole, 1.0)
        scaled = {w: int(est * factor) for w, est in estimates.items()}
        room = max(int(row[0]) - done_before, 0)
        left = sum(scaled.values())
        if done_before and left > room:
            scaled = {w: int(est * room / left) for w, est in scaled.items()}
        return scaled

    def nothing_to_do(self, cur, since) -> bool:
        filt, params = self.stmts.filter_cond(since)
        if filt is None:
            return False
        cur.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {})").format(self.target.ident, filt), params)
        return bool(cur.fetchone()[0])

    def run(self) -> dict:
        spec = self.spec
        started = time.monotonic()
        conn = self.conn
        with conn.cursor() as cur:
            self.take_advisory_lock(cur)
            conn.commit()
            ensure_checkpoint_table(cur, spec.ops_schema)
            rows = read_checkpoints(cur, spec.ops_schema, spec.name)
            states, resumed, since = self.start_pass(cur, rows)
            self.open_history(cur, states, resumed)
            conn.commit()
            before = read_checkpoints(cur, spec.ops_schema, spec.name)
            skip = not resumed and self.nothing_to_do(cur, since)
            estimates = {s.worker: (0 if skip else self.estimate(cur, s)) for s in states}
            estimates = self.calibrate(cur, estimates, sum(r["rows_done"] for r in before))
            conn.rollback()
        progress = Progress(spec, self.target.label, sum(r["rows_done"] for r in before),
                            sum(r["rows_updated"] for r in before), sum(r["batches"] for r in before), estimates,
                            database=conn.info.dbname)
        self.progress = progress
        self.pace = Pace(spec, self.target, self.stmts, self.connect, len(states), probe_conn=self.probe_conn)
        progress.pace = self.pace
        progress.emit("resume" if resumed else "start", force=True, since=jsonable(since),
                      workers=len(states))
        for kind, text in self.blind.items():  # a hold that cannot see says so in the progress log too
            progress.emit("warning", force=True, hold=kind, warning=text)
        error: BaseException | None = None
        if skip:
            self.finish_skipped(since)
        else:
            error = self.run_workers(states, since, progress)
            if error is None and self.stop_reason:
                error = BackfillError(
                    f"backfill {spec.name} stopped at a batch boundary: {self.stop_reason}. Every batch it "
                    "committed is kept in its checkpoint; rerun to resume there")
        try:
            with conn.cursor() as cur:
                if error is None:
                    self.complete_pass(cur)
                self.close_history(cur, states, "done" if error is None else
                                   ("interrupted" if self.stop_reason else "failed"),
                                   None if error is None else getattr(error, "msg", str(error)))
                conn.commit()
                after = read_checkpoints(cur, spec.ops_schema, spec.name)
                conn.rollback()
        except psycopg2.Error as exc:  # the connection is gone too: say so, and keep the first cause
            note = (f"the end of the pass could not be recorded ({str(exc).strip().splitlines()[0]}); "
                    "the checkpoint holds every committed batch and the next run takes over from it")
            after = []
            if error is None:
                error = BackfillError(f"backfill {spec.name}: {note}")
            else:
                error = BackfillError(f"{getattr(error, 'msg', str(error))} ({note})")
        progress.finished = error is None
        progress.emit(("interrupted" if self.stop_reason else "failed") if error else "done", force=True,
                      **({"error": getattr(error, "msg", str(error))} if error else {}))
        result = {
            "changed": progress.rows_updated > 0,
            "rows_updated": progress.rows_updated,
            "rows_done": progress.rows_done,
            "rows_total": progress.totals()["rows_total"],
            "batches": progress.batches,
            "duration_s": round(time.monotonic() - started, 3),
            "retries": progress.retries,
            "rows_retried": progress.rows_retried,
            "conflicts": progress.conflicts,
            "holds": {"count": progress.holds, "seconds": round(progress.hold_seconds, 1),
                      "reasons": progress.hold_reasons},
            "blind_holds": dict(self.blind),
            "max_batch_ms": round(progress.max_batch_ms, 1),
            "max_lock_ms": round(progress.max_lock_ms, 1),
            "batch_size": progress.batch_size,
            "workers": len(states),
            "pace": self.pace.result() if self.pace is not None else None,
            "resumed": resumed,
            "skipped_scan": skip,
            "since": jsonable(since),
            "checkpoint": summarise_checkpoints(after),
            "sql": self.statement_text(),
            "progress_file": spec.progress_file,
            "metrics_file": spec.metrics_file,
        }
        elapsed = max(result["duration_s"], 1e-6)
        result["rows_per_s"] = round(progress.rows_done / elapsed, 1)
        if error is not None:
            raise BackfillError(getattr(error, "msg", str(error)), **result)
        verb = "resumed and finished" if resumed else "finished"
        result["msg"] = (f"backfill {spec.name} {verb}: {progress.rows_updated} row(s) updated, "
                         f"{progress.rows_done} scanned in {progress.batches} batch(es), {result['duration_s']} s "
                         f"({result['rows_per_s']:,.0f} rows/s measured), "
                         f"{progress.retries} retr{'y' if progress.retries == 1 else 'ies'}, {progress.holds} hold(s)")
        return result

    def open_history(self, cur, states: list[WorkerState], resumed: bool) -> None:
        """One row per worker for this execution.  Rows still 'running' belong to executions that
        died (this one holds the backfill's advisory lock): they are marked interrupted, their
        figures kept, since each was updated in the transaction of every batch it committed."""
        spec, ph = self.spec, passes_ident(self.spec.ops_schema)
        cur.execute(sql.SQL("UPDATE {} SET status = 'interrupted', finished_at = updated_at, last_error = "
                            "coalesce(last_error, 'the process ended without finishing (killed, or its connection "
                            "was lost)') WHERE backfill = %s AND status = 'running'").format(ph), (spec.name,))
        cur.execute(sql.SQL("SELECT pass_started_at FROM {} WHERE backfill = %s LIMIT 1").format(
            checkpoint_ident(spec.ops_schema)), (spec.name,))
        row = cur.fetchone()
        pass_started = row[0] if row else None
        for state in states:
            cur.execute(sql.SQL("INSERT INTO {} (backfill, worker, table_name, pass_started_at, resumed, run_id, pid, "
                                "control_host, status) VALUES (%s, %s, %s, coalesce(%s, now()), %s, %s, %s, %s, "
                                "'running') RETURNING id").format(ph),
                        (spec.name, state.worker, self.target.label, pass_started, resumed, spec.run_id, os.getpid(),
                         hostname()))
            state.history_id = cur.fetchone()[0]

    def close_history(self, cur, states: list[WorkerState], status: str, error: str | None) -> None:
        cur.execute(sql.SQL("UPDATE {} SET status = CASE WHEN status = 'running' THEN %s ELSE status END, "
                            "finished_at = coalesce(finished_at, clock_timestamp()), updated_at = clock_timestamp(), "
                            "last_error = coalesce(last_error, %s) WHERE id = ANY(%s)").format(
            passes_ident(self.spec.ops_schema)),
            (status, None if error is None else error[:2000], [s.history_id for s in states if s.history_id]))

    def controller_gone(self) -> str | None:
        """Why the ansible-playbook that started this backfill is known to be gone, or None."""
        spec = self.spec
        if not spec.controller_pid:
            return None
        if spec.controller_host and spec.controller_host != hostname():
            return None  # another machine's process: it cannot be seen from here
        if pid_alive(spec.controller_pid, spec.controller_pid_start):
            return None
        return (f"its controlling ansible-playbook (pid {spec.controller_pid} on {spec.controller_host or hostname()}) "
                "is gone")

    def finish_skipped(self, since) -> None:
        """No row matches the filter: the pass is complete without scanning the key space."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {} SET status = 'done', updated_at = clock_timestamp(), finished_at = "
                                "clock_timestamp() WHERE backfill = %s").format(checkpoint_ident(self.spec.ops_schema)),
                        (self.spec.name,))
        self.conn.commit()

    def complete_pass(self, cur) -> None:
        ck = checkpoint_ident(self.spec.ops_schema)
        cur.execute(sql.SQL("SELECT count(*) FILTER (WHERE status <> 'done') FROM {} WHERE backfill = %s").format(ck),
                    (self.spec.name,))
        if cur.fetchone()[0] == 0:
            cur.execute(sql.SQL("UPDATE {} SET last_success_at = coalesce(watermark, pass_started_at), finished_at = "
                                "coalesce(finished_at, clock_timestamp()) WHERE backfill = %s").format(ck),
                        (self.spec.name,))

    def run_workers(self, states: list[WorkerState], since, progress: Progress) -> BaseException | None:
        stop = threading.Event()
        finished = threading.Event()
        errors: list[BaseException] = []
        gate = HealthGate(self.spec, self.target, self.blind)
        self.gate = gate
        pace = self.pace
        pace.start(progress)

        def watch() -> None:
            """Stop every worker at its next batch boundary once the controller is gone."""
            while not finished.wait(WATCH_INTERVAL_S):
                reason = self.controller_gone()
                if reason:
                    self.stop_reason = reason
                    progress.emit("stopping", force=True, reason=reason)
                    stop.set()
                    return

        watchdog = None
        if self.spec.controller_pid:
            watchdog = threading.Thread(target=watch, name="backfill-watchdog", daemon=True)
            watchdog.start()

        def work(state: WorkerState) -> None:
            try:
                Worker(self, state, since, progress, gate, stop).run()
            except BaseException as exc:  # reported by the module; other workers stop after their batch
                errors.append(exc)
                stop.set()

        if len(states) == 1:
            work(states[0])
        else:
            threads = [threading.Thread(target=work, args=(s,), name=f"backfill-worker-{s.worker}", daemon=True)
                       for s in states]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finished.set()
        pace.stop()
        if watchdog is not None:
            watchdog.join()
        self.warnings.extend(gate.notes)
        if pace.note:
            self.warnings.append(pace.note)
        if pace.at_floor_over:
            self.warnings.append(
                f"backfill {self.spec.name}: the foreground p99 stayed over max_foreground_p99_ms="
                f"{pace.budget:g} ms at the slowest pace (1 worker, {pace.floor_ms:g} ms batches, {pace.max_pause:g} "
                f"ms pauses) in {pace.at_floor_over} decision(s): that latency is not the backfill's alone. "
                "Raise max_pause_ms to slow it further, or check what else loads the server")
        return errors[0] if errors else None


class Worker:
    """One connection walking one key range batch by batch."""

    def __init__(self, engine: Backfill, state: WorkerState, since, progress: Progress, gate: HealthGate,
                 stop: threading.Event) -> None:
        self.engine = engine
        self.spec = engine.spec
        self.stmts = engine.stmts
        self.state = state
        self.since = since
        self.progress = progress
        self.gate = gate
        self.stop = stop
        self.sizer = BatchSizer(self.spec, self.spec.batch_size if state.batch_size is None else state.batch_size)
        self.ck = checkpoint_ident(self.spec.ops_schema)
        self.ph = passes_ident(self.spec.ops_schema)
        self.filt, self.fparams = self.stmts.filter_cond(since)
        self.pending: PendingBatch | None = None  # Python transform: the batch read, to be written next

    def run(self) -> None:
        if self.spec.python and self.spec.nice:
            # The Python transform's CPU is background work: this thread (and the writer threads it starts) runs
            # at a lower priority, so on a busy host it yields to the application instead of competing with it.
            # The pace's probe (a process of its own) keeps the normal priority, as the application.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.spec.nice)
            except (OSError, AttributeError):
                pass
        conn = self.engine.connect()
        try:
            if self.spec.python:
                with conn.cursor() as cur:
                    for statement in self.stmts.create_temps():
                        cur.execute(statement)
                conn.commit()
            consecutive_retries = 0
            pace = self.engine.pace
            while not self.stop.is_set():
                self.wait_until_healthy(conn)
                if self.stop.is_set():
                    break
                try:
                    with pace.slot(self.stop) as taken:  # at most the pace's number of batches at once
                        if not taken:
                            break
                        self.sizer.target = pace.batch_ms
                        exhausted = self.batch(conn)
                    pace.wrote(self.state.last_key)
                    consecutive_retries = 0
                except BackfillError as exc:
                    self.safe_rollback(conn)
                    self.fail(conn, f"batch after key {self.state.last_key} failed: {exc.msg}")
                except psycopg2.Error as exc:
                    self.safe_rollback(conn)
                    why = RETRYABLE_SQLSTATES.get(getattr(exc, "pgcode", None) or "")
                    if why is None:
                        raise
                    consecutive_retries += 1
                    if consecutive_retries > self.spec.max_retries:
                        self.fail(conn, f"{why}: {consecutive_retries - 1} retries in a row failed "
                                        f"(batch size down to {self.sizer.size}); last error: "
                                        f"{str(exc).strip().splitlines()[0]}")
                    size = self.sizer.halve()
                    self.progress.retry(f"{why}; retrying with batch size {size}")
                    time.sleep(min(0.05 * 2 ** consecutive_retries, 2.0))
                    continue
                if exhausted:
                    self.progress.worker_finished(self.state.worker)
                    return
                pause = pace.pause_s()
                if pause > 0:
                    self.stop.wait(pause)
        except BackfillError:
            raise
        except Exception as exc:  # SQL errors at run time (a cast, a constraint), a broken connection
            self.safe_rollback(conn)
            if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and \
                    (conn.closed or getattr(exc, "pgcode", None) is None):
                self.fail(conn, f"the database connection was lost after key {self.state.last_key} "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())})")
            self.fail(conn, f"batch after key {self.state.last_key} failed: {type(exc).__name__}: "
                            f"{str(exc).strip()}")
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def safe_rollback(self, conn) -> None:
        try:
            conn.rollback()
        except Exception:
            pass

    def fail(self, conn, text: str) -> None:
        """Record where the pass stopped (the failed batch rolled back) and raise for the operator."""
        spec = self.spec
        msg = (f"backfill {spec.name} stopped: {text}. The failed batch was rolled back; the "
               f"{self.progress.batches} batch(es) before it are committed and the checkpoint of worker "
               f"{self.state.worker} is at key {self.state.last_key}. Fix the cause and rerun: it resumes there")
        try:
            if conn.closed:
                raise psycopg2.InterfaceError("connection closed")
            with conn.cursor() as cur:
                cur.execute(sql.SQL("UPDATE {} SET status = 'failed', last_error = %s, updated_at = clock_timestamp() "
                                    "WHERE backfill = %s AND worker = %s").format(self.ck),
                            (text[:2000], spec.name, self.state.worker))
                if self.state.history_id is not None:
                    cur.execute(sql.SQL("UPDATE {} SET status = 'failed', last_error = %s, updated_at = "
                                        "clock_timestamp(), finished_at = clock_timestamp() WHERE id = %s")
                                .format(self.ph), (text[:2000], self.state.history_id))
            conn.commit()
        except Exception:
            msg += " (the checkpoint could not be marked failed: the connection is gone; it still holds the last " \
                   "committed batch)"
        raise BackfillError(msg)

    def wait_until_healthy(self, conn) -> None:
        episode_start = None
        while not self.stop.is_set():
            reason = self.gate.check(conn)
            if self.gate.fatal:
                self.fail(conn, self.gate.fatal)
            if reason is None:
                return
            now = time.monotonic()
            new = episode_start is None
            if new:
                episode_start = now
            elif now - episode_start > self.spec.max_hold_s:
                self.fail(conn, f"held for more than max_hold_s={self.spec.max_hold_s:g} s: {reason}")
            self.progress.hold(reason, new, 0.0 if new else self.spec.hold_poll_s)
            time.sleep(self.spec.hold_poll_s)

    def begin(self, cur) -> None:
        cur.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                    (self.spec.lock_timeout, self.spec.statement_timeout))

    def next_range(self, cur, lo) -> tuple[int, list | None, bool, list | None]:
        """The next batch after key ``lo``: (keys in it, its upper key, whether the range ends with it,
        the key the checkpoint moves to once it is written)."""
        state, size = self.state, self.sizer.size
        cond, params = self.stmts.range_cond(lo, state.range_hi)
        cur.execute(self.stmts.boundary(cond), params + [size])
        row = cur.fetchone()
        if row is None:
            return 0, state.range_hi, True, (lo if lo is not None else state.last_key)
        scanned = row[-1]
        exhausted = scanned < size
        hi = state.range_hi if exhausted else list(row[:-1])
        return scanned, hi, exhausted, (hi if hi is not None else list(row[:-1]))

    def record(self, cur, new_last, scanned: int, updated: int, size: int, exhausted: bool) -> None:
        """Move the checkpoint (and this execution's counters) in the batch's own transaction."""
        spec, state = self.spec, self.state
        cur.execute(sql.SQL("UPDATE {} SET last_key = %s, rows_done = rows_done + %s, "
                            "rows_updated = rows_updated + %s, batches = batches + %s, batch_size = %s, status = %s, "
                            "updated_at = clock_timestamp(), "
                            "finished_at = CASE WHEN %s THEN clock_timestamp() END, run_id = coalesce(%s, run_id) "
                            "WHERE backfill = %s AND worker = %s").format(self.ck),
                    (new_last, scanned, updated, 1 if scanned else 0, size, "done" if exhausted else "running",
                     exhausted, spec.run_id, spec.name, state.worker))
        if state.history_id is not None:
            cur.execute(sql.SQL("UPDATE {} SET rows_done = rows_done + %s, rows_updated = rows_updated + %s, "
                                "batches = batches + %s, updated_at = clock_timestamp(), "
                                "status = CASE WHEN %s THEN 'done' ELSE status END, "
                                "finished_at = CASE WHEN %s THEN clock_timestamp() END WHERE id = %s").format(self.ph),
                        (scanned, updated, 1 if scanned else 0, exhausted, exhausted, state.history_id))

    def batch(self, conn) -> bool:
        """One transaction: find the range, update it, move the checkpoint.  True when the range is exhausted."""
        if not self.spec.set:
            try:
                return self.python_step(conn)
            except BaseException:
                self.pending = None  # the transaction rolls back: start again from the checkpoint
                raise
        state = self.state
        size = self.sizer.size
        t0 = time.monotonic()
        cur = conn.cursor()
        self.begin(cur)
        lo = state.last_key if state.last_key is not None else state.range_lo
        scanned, hi, exhausted, new_last = self.next_range(cur, lo)
        t_lock = time.monotonic()
        updated = self.sql_batch(cur, lo, hi) if scanned else 0
        self.record(cur, new_last, scanned, updated, size, exhausted)
        conn.commit()
        t1 = time.monotonic()
        state.last_key = new_last
        batch_ms, lock_ms = (t1 - t0) * 1000.0, (t1 - t_lock) * 1000.0
        if scanned:
            self.sizer.observe(scanned, batch_ms)
        self.progress.batch(state.worker, scanned, updated, batch_ms, lock_ms, self.sizer.size, exhausted)
        return exhausted

    def sql_batch(self, cur, lo, hi) -> int:
        cond, params = self.stmts.range_cond(lo, hi)
        cur.execute(self.stmts.sql_update(cond, self.filt), params + self.fparams)
        return cur.rowcount

    # -- the Python transform: read without locks, write guarded by the values read ---------------
    def python_step(self, conn) -> bool:
        """One transaction that reads batch N+1 (no row locks) and then writes batch N, read and
        transformed before: while the server writes N, the transform of N+1 runs.  The checkpoint
        moves past N in this transaction, so after a crash the next run starts after the last
        batch written, and a batch read but not written is read again."""
        state = self.state
        t0 = time.monotonic()
        cur = conn.cursor()
        self.begin(cur)
        # The temp tables have no statistics, so the guarded write's estimates are far too high and
        # JIT compiling it would take longer than running it, while the batch's rows are locked.
        cur.execute("SELECT set_config('jit', 'off', true)")
        if self.pending is None:
            batch, rows = self.read_batch(cur, state.last_key if state.last_key is not None else state.range_lo, 0)
            batch.results, batch.count = self.transform(rows)
        else:
            batch = self.pending
        upcoming, upcoming_rows = (None, None) if batch.exhausted else self.read_batch(cur, batch.hi, 1 - batch.pair)
        outcome: dict[str, Any] = {}

        def write() -> None:
            try:
                outcome["written"] = self.write(cur, batch)
                if not outcome["written"][1]:
                    self.record(cur, batch.new_last, batch.scanned, outcome["written"][0], batch.size,
                                batch.exhausted)
                    conn.commit()
                    outcome["committed"] = time.monotonic()
            except BaseException as exc:  # raised below, in the worker's thread
                outcome["error"] = exc

        writer = threading.Thread(target=write, name=f"backfill-write-{state.worker}", daemon=True)
        writer.start()
        transform_error = None
        try:
            if upcoming is not None:
                upcoming.results, upcoming.count = self.transform(upcoming_rows)
        except BackfillError as exc:
            transform_error = exc
        finally:
            writer.join()
        if "error" in outcome:
            raise outcome["error"]
        updated, skipped, t_write = outcome["written"]
        retried = 0
        if skipped:  # rows changed between the read and the write: read, transform and write them again
            updated, retried = self.retry_skipped(cur, batch, updated, skipped)
            self.record(cur, batch.new_last, batch.scanned, updated, batch.size, batch.exhausted)
            conn.commit()
            outcome["committed"] = time.monotonic()
        t1 = outcome["committed"]
        state.last_key = batch.new_last
        self.pending = upcoming
        batch_ms = (t1 - t0) * 1000.0
        lock_ms = (t1 - (t_write or t1)) * 1000.0
        if batch.scanned:  # a Python batch locks its rows only from its write on: that is what the size aims at
            self.sizer.observe(batch.scanned, lock_ms)
        self.progress.batch(state.worker, batch.scanned, updated, batch_ms, lock_ms, self.sizer.size, batch.exhausted,
                            retried)
        if transform_error is not None:
            raise transform_error
        return batch.exhausted

    def read_batch(self, cur, lo, pair: int) -> tuple[PendingBatch, list[dict]]:
        """Find the batch after ``lo`` and read its rows into temp table pair ``pair`` (no row locks)."""
        size = self.sizer.size
        scanned, hi, exhausted, new_last = self.next_range(cur, lo)
        batch = PendingBatch(lo, hi, scanned, exhausted, new_last, size, pair)
        rows: list[dict] = []
        if scanned:
            cond, params = self.stmts.range_cond(lo, hi)
            cur.execute(self.stmts.empty_temps(pair))  # the batch read into this pair before was written
            cur.execute(self.stmts.batch_rows(cond, self.filt, pair), params + self.fparams)
            rows = self.fetch_dicts(cur)
        return batch, rows

    @staticmethod
    def fetch_dicts(cur) -> list[dict]:
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def transform(self, rows: list[dict]) -> tuple[io.StringIO | None, int]:
        """The transform's results as one COPY text stream (None when it returned nothing) and their count."""
        if not rows:
            return None, 0
        try:
            results = self.engine.func(rows)
        except Exception as exc:
            raise BackfillError(f"python transform {self.spec.python} raised {type(exc).__name__}: {exc}") from exc
        columns = self.stmts.write_columns()
        buf = io.StringIO()
        write = buf.write
        count = 0
        try:
            for item in results or ():
                write("\t".join([copy_value(item[c]) for c in columns]))
                write("\n")
                count += 1
        except (KeyError, TypeError) as exc:
            raise BackfillError(f"python transform {self.spec.python} returned an item without {exc} (each item "
                                f"must be a dict with {columns})") from exc
        if not count:
            return None, 0
        buf.seek(0)
        return buf, count

    def write(self, cur, batch: PendingBatch) -> tuple[int, list, float | None]:
        """COPY the results, then the guarded write: (rows written, keys skipped, when the write began)."""
        if batch.results is None:
            return 0, [], None
        stmts = self.stmts
        cur.copy_expert(stmts.copy_in(batch.pair), batch.results, size=1 << 20)
        batch.results = None
        tcond, tparams = stmts.range_cond(batch.lo, batch.hi, alias=(stmts.target.schema, stmts.target.table))
        t_write = time.monotonic()
        cur.execute(stmts.guarded_update(tcond, self.filt, batch.pair), tparams + self.fparams)
        written = cur.rowcount
        skipped: list = []
        if written < batch.count:  # some row changed (or the transform returned a key twice or out of the batch)
            cur.execute(stmts.skipped_rows(tcond, batch.pair), tparams)
            skipped = cur.fetchall()
        return written, skipped, t_write

    def retry_skipped(self, cur, batch: PendingBatch, updated: int, skipped: list) -> tuple[int, int]:
        """Rounds of re-read, transform and guarded write for the rows another session changed,
        at most max_retries; a row still changing then fails the batch (nothing of it is kept)."""
        stmts, retried = self.stmts, 0
        cond, params = stmts.range_cond(batch.lo, batch.hi)
        for attempt in range(1, self.spec.max_retries + 2):
            if attempt > self.spec.max_retries:
                shown = ", ".join(str(list(k)) for k in skipped[:5])
                raise BackfillError(f"{len(skipped)} row(s) changed between the read and the guarded write in "
                                    f"{attempt} rounds in a row (max_retries={self.spec.max_retries}); keys "
                                    f"{shown}{' ...' if len(skipped) > 5 else ''}. Nothing of this batch was "
                                    "written; rerun when the writers of these rows are quiet")
            retried += len(skipped)
            self.progress.conflict(len(skipped))
            cur.execute(stmts.empty_temps(batch.pair))
            cur.execute(stmts.retried_rows(cond, self.filt, batch.pair),
                        params + [[k[i] for k in skipped] for i in range(len(stmts.key))] + self.fparams)
            batch.results, batch.count = self.transform(self.fetch_dicts(cur))
            more, skipped, _ = self.write(cur, batch)
            updated += more
            if not skipped:
                return updated, retried
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class PendingBatch:
    """A Python batch read (into temp table pair ``pair``) and transformed, not written yet."""
    lo: list | None
    hi: list | None
    scanned: int
    exhausted: bool
    new_last: list | None
    size: int
    pair: int
    results: io.StringIO | None = None
    count: int = 0


def spec_defaults() -> dict:
    """Every Spec field's default (the module's argument spec takes its defaults from here)."""
    out = {}
    for f in fields(Spec):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
