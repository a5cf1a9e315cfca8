# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The post-migration checks of pg_validate (runbook 4.1) and the catalog description
of the report's DATA_MODEL.md (runbook 7.1.1).

Every function takes an open cursor of a READ ONLY transaction; nothing here writes.
Each check runs under a savepoint, so a check whose SQL errors is reported as an error
(with the database's message) and the checks after it still run.  Operator-owned SQL
fragments from the plan (predicates, where filters, custom queries) are composed with
``sql.SQL(fragment)`` by design, after pgmigrate_sql has parsed each one as exactly one
expression or one SELECT (run_check refuses any other); the server's READ ONLY
transaction is the second line of defence.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import math
import socket
import threading
import time
import urllib.parse
from decimal import Decimal
from typing import Any

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    sql = None
    psycopg2 = None

from ansible.module_utils.pgmigrate import primary_key_columns, resolve_table, table_identifier
from ansible.module_utils.pgmigrate_http import http_request
from ansible.module_utils.pgmigrate_sql import check_errors, check_fragments, wrap

SAMPLE_KEYS = 5
CHECK_KINDS = ("row_count", "migrated_percentage", "invalid_rows", "schema", "custom_sql")

# format_type() spells types one way; plans may use the common aliases.
TYPE_ALIASES = {
    "float8": "double precision", "float": "double precision", "float4": "real",
    "int": "integer", "int4": "integer", "int8": "bigint", "int2": "smallint",
    "bool": "boolean", "varchar": "character varying", "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone", "serial": "integer", "bigserial": "bigint",
    "decimal": "numeric",
}


class CheckInputError(ValueError):
    """A check in the plan lacks what its kind needs (reported as a check error)."""


def normalise_type(name: str) -> str:
    name = " ".join(str(name).lower().split())
    return TYPE_ALIASES.get(name, name)


def _table(cur, name: str | None, check: dict) -> dict:
    if not name:
        raise CheckInputError(f"check {check['name']!r} ({check['kind']}) needs 'table'")
    found = resolve_table(cur, name)
    if found is None:
        raise CheckInputError(f"table {name!r} does not exist")
    return found


def _key_sql(cur, found: dict) -> tuple[sql.Composable, list[str]]:
    keys = primary_key_columns(cur, found["oid"])
    if keys:
        return sql.SQL(", ").join(sql.Identifier(k) for k in keys), keys
    return sql.SQL("ctid::text"), ["ctid"]


def _sample_keys(cur, found: dict, condition: sql.Composable) -> list:
    key_sql, keys = _key_sql(cur, found)
    # No bound parameters here: the condition is the plan's SQL and may hold a literal '%'.
    cur.execute(sql.SQL("SELECT {keys} FROM {t} WHERE {cond} ORDER BY {keys} LIMIT {n}").format(
        keys=key_sql, t=sql.Identifier(found["schema"], found["table"]), cond=condition, n=sql.Literal(SAMPLE_KEYS)))
    rows = cur.fetchall()
    return [row[0] if len(keys) == 1 else dict(zip(keys, row)) for row in rows]


def exact_count(cur, name: str) -> int | None:
    found = resolve_table(cur, name)
    if found is None:
        return None
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(found["schema"], found["table"])))
    return int(cur.fetchone()[0])


def plan_query(cur, stmt) -> dict:
    """Plan a check's query without running it (EXPLAIN: every name and type is resolved, no row is read)."""
    cur.execute(sql.SQL("EXPLAIN ") + stmt)
    cur.fetchall()
    return {"status": "planned", "message": "its SQL plans (names and types resolve); not run"}


def check_row_count(cur, check: dict, baseline: dict, plan_only: bool = False) -> dict:
    found = _table(cur, check.get("table"), check)
    if plan_only:
        return {"status": "planned", "message": f"table {found['schema']}.{found['table']} exists; its rows are "
                                                "counted at validation"}
    actual = exact_count(cur, check["table"])
    expected = check.get("expect")
    source = "expect"
    if expected is None:
        expected = baseline.get(check["table"], baseline.get(f"{found['schema']}.{found['table']}"))
        source = "baseline"
    if expected is None:
        return {"status": "error", "actual": actual,
                "message": f"no baseline row count for {check['table']}: take one before the migration "
                           "(roles/validate/tasks/baseline.yml) or give the check an 'expect' value"}
    expected = int(expected)
    tolerance = float(check.get("tolerance", 0) or 0)
    allowed = math.floor(expected * tolerance / 100.0)
    diff = actual - expected
    ok = abs(diff) <= allowed
    message = (f"{check['table']}: {actual:,} rows, {source} {expected:,} (difference {diff:+,}, "
               f"tolerance {tolerance:g}% = {allowed:,} rows)")
    return {"status": "passed" if ok else "failed", "actual": actual, "expected": expected,
            "difference": diff, "tolerance_pct": tolerance, "message": message}


def check_migrated_percentage(cur, check: dict, plan_only: bool = False) -> dict:
    found = _table(cur, check.get("table"), check)
    columns = check.get("columns") or ([check["column"]] if check.get("column") else [])
    if not columns:
        raise CheckInputError(f"check {check['name']!r} (migrated_percentage) needs 'column' or 'columns'")
    t = sql.Identifier(found["schema"], found["table"])
    scope = sql.SQL(wrap(check["where"])) if check.get("where") else sql.SQL("true")
    done = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in columns)
    query = sql.SQL("SELECT count(*), count(*) FILTER (WHERE {done}) FROM {t} WHERE {scope}").format(
        done=done, t=t, scope=scope)
    if plan_only:
        return plan_query(cur, query)
    cur.execute(query)
    should, migrated = (int(v) for v in cur.fetchone())
    pct = 100.0 if should == 0 else round(100.0 * migrated / should, 4)
    threshold = float(check.get("threshold", 100) if check.get("threshold") is not None else 100)
    ok = pct >= threshold
    result = {"status": "passed" if ok else "failed", "rows_expected": should, "rows_migrated": migrated,
              "rows_missing": should - migrated, "percentage": pct, "threshold": threshold,
              "message": f"{check['table']}.{'+'.join(columns)}: {migrated:,} of {should:,} rows migrated "
                         f"({pct:g}%, threshold {threshold:g}%)"}
    if not ok:
        result["sample_keys"] = _sample_keys(cur, found, sql.SQL("({}) AND NOT ({})").format(scope, done))
    return result


def check_invalid_rows(cur, check: dict, plan_only: bool = False) -> dict:
    found = _table(cur, check.get("table"), check)
    if not check.get("predicate"):
        raise CheckInputError(f"check {check['name']!r} (invalid_rows) needs 'predicate' (what makes a row invalid)")
    predicate = sql.SQL(wrap(check["predicate"]) + " IS TRUE")
    query = sql.SQL("SELECT count(*) FROM {t} WHERE {p}").format(t=sql.Identifier(found["schema"], found["table"]),
                                                                   p=predicate)
    if plan_only:
        return plan_query(cur, query)
    cur.execute(query)
    invalid = int(cur.fetchone()[0])
    allowed = int(check.get("max_invalid", 0) or 0)
    result = {"status": "passed" if invalid <= allowed else "failed", "invalid_rows": invalid,
              "max_invalid": allowed, "predicate": check["predicate"],
              "message": f"{check['table']}: {invalid:,} rows where {check['predicate']} (allowed {allowed:,})"}
    if invalid:
        result["sample_keys"] = _sample_keys(cur, found, predicate)
    return result


def _column_info(cur, oid: int, column: str) -> dict | None:
    cur.execute("SELECT format_type(atttypid, atttypmod), NOT attnotnull FROM pg_attribute "
                "WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped", (oid, column))
    row = cur.fetchone()
    return None if row is None else {"type": row[0], "nullable": row[1]}


def _index_info(cur, oid: int, name: str) -> dict | None:
    cur.execute("SELECT i.indisunique, i.indisvalid, array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY "
                "k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n) "
                "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s AND c.relname = %s",
                (oid, name))
    row = cur.fetchone()
    return None if row is None else {"unique": row[0], "valid": row[1], "columns": list(row[2])}


_CONTYPES = {"c": "check", "f": "foreign_key", "p": "primary_key", "u": "unique", "x": "exclusion", "t": "trigger",
             "n": "not_null"}


def _constraint_info(cur, oid: int, name: str) -> dict | None:
    cur.execute("SELECT contype::text, convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s AND conname = %s", (oid, name))
    row = cur.fetchone()
    return None if row is None else {"type": _CONTYPES.get(row[0], row[0]), "validated": row[1], "definition": row[2]}


def check_schema(cur, check: dict) -> dict:
    expect = check.get("expect_schema") or {}
    if not any(expect.get(k) for k in ("tables", "columns", "indexes", "constraints")):
        raise CheckInputError(f"check {check['name']!r} (schema) needs 'expect_schema' with tables, columns, "
                              "indexes or constraints")
    problems: list[str] = []
    seen = 0
    tables: dict[str, dict | None] = {}

    def table(name: str) -> dict | None:
        if name not in tables:
            tables[name] = resolve_table(cur, name)
        return tables[name]

    for name in expect.get("tables") or []:
        seen += 1
        if table(name) is None:
            problems.append(f"table {name} is missing")
    for col in expect.get("columns") or []:
        seen += 1
        where = f"{col.get('table')}.{col.get('column')}"
        found = table(col.get("table", ""))
        info = None if found is None else _column_info(cur, found["oid"], col.get("column", ""))
        if info is None:
            problems.append(f"column {where} is missing")
            continue
        if col.get("type") and normalise_type(info["type"]) != normalise_type(col["type"]):
            problems.append(f"column {where} is {info['type']}, expected {col['type']}")
        if col.get("nullable") is not None and bool(col["nullable"]) != info["nullable"]:
            problems.append(f"column {where} is {'NULL-able' if info['nullable'] else 'NOT NULL'}, expected "
                            f"{'NULL-able' if col['nullable'] else 'NOT NULL'}")
    for idx in expect.get("indexes") or []:
        seen += 1
        found = table(idx.get("table", ""))
        info = None if found is None else _index_info(cur, found["oid"], idx.get("name", ""))
        if info is None:
            problems.append(f"index {idx.get('name')} on {idx.get('table')} is missing")
            continue
        if not info["valid"]:
            problems.append(f"index {idx['name']} is INVALID (a failed CREATE INDEX CONCURRENTLY?)")
        if idx.get("columns") and list(idx["columns"]) != info["columns"]:
            problems.append(f"index {idx['name']} covers {info['columns']}, expected {list(idx['columns'])}")
        if idx.get("unique") is not None and bool(idx["unique"]) != info["unique"]:
            problems.append(f"index {idx['name']} unique={info['unique']}, expected {bool(idx['unique'])}")
    for con in expect.get("constraints") or []:
        seen += 1
        found = table(con.get("table", ""))
        info = None if found is None else _constraint_info(cur, found["oid"], con.get("name", ""))
        if info is None:
            problems.append(f"constraint {con.get('name')} on {con.get('table')} is missing")
            continue
        if con.get("type") and con["type"] != info["type"]:
            problems.append(f"constraint {con['name']} is a {info['type']} constraint, expected {con['type']}")
        if not info["validated"]:
            problems.append(f"constraint {con['name']} is NOT VALID (not validated yet)")
    return {"status": "failed" if problems else "passed", "problems": problems, "expectations": seen,
            "message": "; ".join(problems) if problems else f"all {seen} schema expectations hold"}


def comparable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


def values_equal(actual: Any, expected: Any) -> bool:
    actual, expected = comparable(actual), comparable(expected)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return str(actual).lower() == str(expected).lower()
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(float(actual), float(expected), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(actual, (int, float)) and isinstance(expected, str):
        try:
            return math.isclose(float(actual), float(expected), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    if actual is None or expected is None:
        return actual is None and expected is None
    return str(actual) == str(expected)


def check_custom_sql(cur, check: dict, plan_only: bool = False) -> dict:
    if not check.get("sql"):
        raise CheckInputError(f"check {check['name']!r} (custom_sql) needs 'sql' (a query returning one value)")
    if "expect" not in check:
        raise CheckInputError(f"check {check['name']!r} (custom_sql) needs 'expect' (the value the query must return)")
    if plan_only:
        return plan_query(cur, sql.SQL(check["sql"]))
    cur.execute(sql.SQL(check["sql"]))
    if cur.description is None:
        raise CheckInputError(f"check {check['name']!r}: the statement returned no rows (it must be a query)")
    row = cur.fetchone()
    actual = comparable(row[0]) if row else None
    ok = values_equal(actual, check["expect"])
    return {"status": "passed" if ok else "failed", "actual": actual, "expected": check["expect"],
            "message": f"query returned {actual!r}, expected {check['expect']!r}"}


def run_check(cur, check: dict, baseline: dict, statement_timeout: str, plan_only: bool = False) -> dict:
    """Run one check under a savepoint; its SQL errors become the check's error.  With ``plan_only``
    the data queries are only planned (status ``planned``); the schema check reads the catalog as always."""
    result: dict[str, Any] = {"name": check.get("name"), "kind": check.get("kind"),
                              "severity": check.get("severity", "error")}
    if check.get("description"):
        result["description"] = check["description"]
    if check.get("table"):
        result["table"] = check["table"]
    started = time.monotonic()
    refused = check_errors(check_fragments(check, ""))
    if refused:  # never sent to the server (pg_validate refuses such checks before it connects)
        result.update(status="error", message=f"check {check.get('name')!r}: " + "; ".join(refused), duration_ms=0.0)
        return result
    cur.execute("SAVEPOINT pgmigrate_check")
    try:
        cur.execute("SELECT set_config('statement_timeout', %s, true)", (statement_timeout,))
        kind = check.get("kind")
        if kind == "row_count":
            result.update(check_row_count(cur, check, baseline, plan_only))
        elif kind == "migrated_percentage":
            result.update(check_migrated_percentage(cur, check, plan_only))
        elif kind == "invalid_rows":
            result.update(check_invalid_rows(cur, check, plan_only))
        elif kind == "schema":
            result.update(check_schema(cur, check))
        elif kind == "custom_sql":
            result.update(check_custom_sql(cur, check, plan_only))
        else:
            raise CheckInputError(f"unknown check kind {kind!r}; use one of {', '.join(CHECK_KINDS)}")
        cur.execute("RELEASE SAVEPOINT pgmigrate_check")
    except CheckInputError as exc:
        cur.execute("ROLLBACK TO SAVEPOINT pgmigrate_check")
        result.update(status="error", message=str(exc))
    except psycopg2.Error as exc:
        cur.execute("ROLLBACK TO SAVEPOINT pgmigrate_check")
        text = (exc.pgerror or str(exc)).strip()
        result.update(status="error", message=f"the check's SQL failed: {text}",
                      sqlstate=getattr(exc, "pgcode", None))
    result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def summarise(results: list[dict]) -> dict:
    """Counts per status, and whether the set passes (warnings never fail it)."""
    summary = {"total": len(results), "passed": 0, "failed": 0, "error": 0, "skipped": 0, "warnings": 0}
    blocking = []
    for r in results:
        status = r.get("status", "error")
        summary[status] = summary.get(status, 0) + 1
        if status in ("failed", "error"):
            if r.get("severity") == "warning":
                summary["warnings"] += 1
            else:
                blocking.append(r["name"])
    summary["blocking"] = blocking
    summary["passed_all"] = not blocking
    return summary


# ---------------------------------------------------------------------------------
# Functional (HTTP smoke) checks and the bounded performance load (runbook 4.2)
# ---------------------------------------------------------------------------------
def http_get_json(url: str, timeout: float) -> tuple[int, Any, float]:
    """GET a URL; returns (status, parsed JSON or None, milliseconds).  Status 0: no answer."""
    started = time.monotonic()
    answer = http_request(url, headers={"Accept": "application/json"}, timeout=timeout)
    elapsed = (time.monotonic() - started) * 1000
    if answer.status == 0:
        return 0, {"error": answer.error}, elapsed
    try:
        return answer.status, json.loads(answer.body or b"null"), elapsed
    except ValueError:
        return answer.status, None, elapsed


def json_value(value: Any) -> Any:
    """A database value as the API serialises it (ISO dates, floats for numerics)."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, memoryview):
        return value.tobytes().hex()
    return value


def same_value(db_value: Any, api_value: Any) -> bool:
    db_value = json_value(db_value)
    if isinstance(db_value, float) and isinstance(api_value, (int, float)) and not isinstance(api_value, bool):
        return math.isclose(db_value, float(api_value), rel_tol=1e-9, abs_tol=1e-12)
    return db_value == api_value


def check_health(app_url: str, path: str, expect_version: str | None, expect_revision: str | None,
                 timeout: float) -> dict:
    status, body, elapsed = http_get_json(app_url.rstrip("/") + path, timeout)
    problems = []
    if status != 200:
        problems.append(f"GET {path} answered {status or 'nothing'}: {body}")
    else:
        body = body or {}
        if body.get("status") != "ok":
            problems.append(f"status is {body.get('status')!r}, expected 'ok'")
        if expect_version and body.get("version") != expect_version:
            problems.append(f"version is {body.get('version')!r}, expected {expect_version!r}")
        if expect_revision and body.get("db_revision") != expect_revision:
            problems.append(f"db_revision is {body.get('db_revision')!r}, expected {expect_revision!r}")
    return {"name": "smoke_health", "kind": "functional", "severity": "error",
            "status": "failed" if problems else "passed", "http_status": status, "response": body,
            "duration_ms": round(elapsed, 1),
            "message": "; ".join(problems) if problems else f"GET {path}: 200 {body}"}


def sample_keys(cur, table: str, size: int) -> tuple[str, list]:
    found = resolve_table(cur, table)
    if found is None:
        raise CheckInputError(f"table {table!r} does not exist")
    keys = primary_key_columns(cur, found["oid"])
    if len(keys) != 1:
        raise CheckInputError(f"table {table!r} needs a single-column primary key for the API sample")
    # md5 of the key: a spread-out sample that is the same on every run (comparable before/after).
    cur.execute(sql.SQL("SELECT {k} FROM {t} ORDER BY md5({k}::text) LIMIT %s").format(
        k=sql.Identifier(keys[0]), t=sql.Identifier(found["schema"], found["table"])), (size,))
    return keys[0], [row[0] for row in cur.fetchall()]


def check_api_rows(cur, app_url: str, table: str, path_template: str, size: int, timeout: float) -> dict:
    """Compare the API's answer for a sample of rows with the rows in the database."""
    key, ids = sample_keys(cur, table, size)
    found = resolve_table(cur, table)
    t = sql.Identifier(found["schema"], found["table"])
    mismatches: list[dict] = []
    started = time.monotonic()
    for key_value in ids:
        cur.execute(sql.SQL("SELECT * FROM {t} WHERE {k} = %s").format(t=t, k=sql.Identifier(key)), (key_value,))
        row = cur.fetchone()
        names = [d.name for d in cur.description]
        path = path_template.replace("{id}", str(key_value))
        status, body, _ = http_get_json(app_url.rstrip("/") + path, timeout)
        if status != 200 or not isinstance(body, dict):
            mismatches.append({"key": key_value, "problem": f"GET {path} answered {status or 'nothing'}"})
            continue
        if row is None:  # deleted between the two reads
            continue
        for name, value in zip(names, row):
            if name not in body:
                mismatches.append({"key": key_value, "column": name, "problem": "missing from the API's answer"})
            elif not same_value(value, body[name]):
                mismatches.append({"key": key_value, "column": name, "database": json_value(value),
                                   "api": body[name]})
    return {"name": "smoke_api_matches_database", "kind": "functional", "severity": "error", "table": table,
            "status": "failed" if mismatches or not ids else "passed", "sampled": len(ids),
            "mismatches": mismatches[:SAMPLE_KEYS], "mismatch_count": len(mismatches),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "message": (f"{len(ids)} sampled rows of {table}: "
                        + (f"{len(mismatches)} mismatches, e.g. {mismatches[0]}" if mismatches
                           else ("no rows to sample" if not ids else "the API answers what the database holds")))}


def is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return round(sorted_values[rank - 1], 2)


def load_test(app_url: str, paths: list[str], requests: int, concurrency: int, duration_limit_s: float,
              timeout: float) -> dict:
    """A bounded request load: at most ``requests`` GETs and at most ``duration_limit_s`` seconds."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + duration_limit_s
    base = app_url.rstrip("/")

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            status, _, elapsed = http_get_json(base + paths[n % len(paths)], timeout)
            with lock:
                if 200 <= status < 300:
                    latencies.append(elapsed)
                else:
                    errors.append(f"{paths[n % len(paths)]}: {status or 'no answer'}")

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_limit_s + timeout + 1)
    wall = time.monotonic() - started
    values = sorted(latencies)
    return {"requests": len(values) + len(errors), "requests_planned": requests, "ok": len(values),
            "errors": len(errors), "error_samples": errors[:SAMPLE_KEYS], "concurrency": concurrency,
            "duration_s": round(wall, 3), "rps": round((len(values) + len(errors)) / wall, 1) if wall else None,
            "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95), "p99_ms": percentile(values, 99),
            "mean_ms": round(sum(values) / len(values), 2) if values else None,
            "max_ms": round(values[-1], 2) if values else None,
            "stopped_by_time_limit": len(values) + len(errors) < requests}


# ---------------------------------------------------------------------------------
# The live catalog, for docs/DATA_MODEL.md
# ---------------------------------------------------------------------------------
def describe_catalog(cur, exclude_schemas: list[str]) -> list[dict]:
    """Tables of the user schemas with columns, indexes and constraints, in a stable order."""
    skip = ["pg_catalog", "information_schema", "pg_toast"] + list(exclude_schemas)
    cur.execute("SELECT c.oid, n.nspname, c.relname, obj_description(c.oid, 'pg_class'), c.reltuples::bigint "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL (%s) AND n.nspname NOT LIKE 'pg_temp%%' "
                "ORDER BY n.nspname, c.relname", (skip,))
    tables = []
    for oid, schema, name, comment, estimate in cur.fetchall():
        cur.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, "
                    "pg_get_expr(d.adbin, d.adrelid), col_description(a.attrelid, a.attnum) "
                    "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", (oid,))
        columns = [{"name": r[0], "type": r[1], "nullable": r[2], "default": r[3], "comment": r[4]}
                   for r in cur.fetchall()]
        cur.execute("SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary, i.indisunique "
                    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s "
                    "ORDER BY c.relname", (oid,))
        indexes = [{"name": r[0], "definition": r[1], "primary": r[2], "unique": r[3]} for r in cur.fetchall()]
        cur.execute("SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = %s ORDER BY conname", (oid,))
        constraints = [{"name": r[0], "type": _CONTYPES.get(r[1], r[1]), "definition": r[2]} for r in cur.fetchall()]
        tables.append({"schema": schema, "name": name, "comment": comment, "rows_estimate": max(int(estimate), 0),
                       "columns": columns, "indexes": indexes, "constraints": constraints})
    return tables


__all__ = ["CHECK_KINDS", "describe_catalog", "exact_count", "run_check", "summarise", "table_identifier",
           "values_equal"]
