#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_validate
short_description: Prove a migration's result with the plan's checks, in one read-only transaction
description:
  - Runs the post-migration checks of a migration plan (runbook 4.1) in one C(READ ONLY), C(REPEATABLE READ)
    transaction, so every check sees the same snapshot and the server itself refuses any write. The module never
    changes data, in or out of check mode, and works with a read-only (replica) user.
  - "Check kinds: V(row_count) (exact count against the baseline taken before the migration, or O(checks[].expect),
    within a tolerance in percent), V(migrated_percentage) (rows whose new columns are set among the rows that should
    be, against a threshold), V(invalid_rows) (rows matching a predicate, with up to 5 sample keys), V(schema)
    (columns, types, nullability, indexes, constraints) and V(custom_sql) (a query and the value it must return)."
  - Each check runs under a savepoint; a check whose SQL fails is reported as C(error) with the database's message,
    never as passed, and the other checks still run.
  - O(mode=plan) only plans the checks, on a database that has the plan's schema but not its data yet (the backup
    phase's rehearsal copy). Every data query is planned with C(EXPLAIN), so an unknown table or column, a type
    mismatch or a syntax error is an C(error) naming the check, and no row is read (status C(planned)); the
    V(schema) check reads the catalog as always. A V(row_count) check only needs its table.
  - O(mode=baseline) takes the exact row counts of O(tables) (the baseline of the V(row_count) checks).
  - O(mode=functional) asks the running application (O(app_url)) for its health and for a sample of rows, and
    compares each answer with the row in the database.
  - O(mode=performance) sends a bounded request load (at most O(requests) requests, at most O(duration_limit) seconds)
    to the application on a loopback address and reports p50/p95/p99 latencies; given O(compare_with) (the numbers
    measured before the migration) it flags a p95 regression beyond O(max_regression_pct).
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: The checks are read-only and run in check mode too; the performance load is not sent in check mode.
  diff_mode:
    support: none
options:
  mode:
    description: What to do.
    type: str
    choices: [validate, plan, baseline, functional, performance]
    default: validate
  checks:
    description:
      - The checks, as in the plan's C(validation.checks). Each has C(name) and C(kind) and the fields of its kind.
      - A check with C(severity=warning) is reported but does not count against RV(passed).
      - Their SQL is parsed with PostgreSQL's grammar (pglast) before the module connects; C(where) and C(predicate)
        must each be exactly one expression, C(sql) exactly one SELECT with no data-modifying statement (also none in a
        WITH), no C(SELECT INTO) and no C(FOR UPDATE/SHARE). Anything else fails the module, naming the check's field
        and the fragment, and nothing is run.
    type: list
    elements: dict
    default: []
  expect_schema:
    description:
      - Schema expectations added as one more V(schema) check named C(schema_matches_plan), for example the plan's
        C(schema.expect) (C(tables), C(columns) with C(type) and C(nullable), C(indexes), C(constraints)).
    type: dict
  baseline:
    description: Exact row counts before the migration, table name -> rows (the V(row_count) checks compare with it).
    type: dict
    default: {}
  baseline_version:
    description:
      - When O(baseline) is empty, read the baseline from the run ledger, from the newest migrate run of this version
        (or O(baseline_run_id)) the exact counts its plan phase recorded, else the per-table row counts of its backup
        manifest (taken before the schema and data phases).
    type: str
  baseline_run_id:
    description: Run whose recorded baseline to use (with O(baseline_version) unset or set).
    type: int
  baseline_fallback:
    description: Row counts used when neither O(baseline) nor the ledger has a baseline (for example taken earlier in
      the same play, or from the backup's manifest).
    type: dict
    default: {}
  tables:
    description: With O(mode=baseline), the tables to count.
    type: list
    elements: str
    default: []
  statement_timeout:
    description: C(statement_timeout) of each check's statements.
    type: str
    default: 5min
  fail_on_failed_checks:
    description:
      - Fail the task when a check of severity C(error) fails or errors (the report is returned with the failure).
        Set V(false) to get the report and decide later.
    type: bool
    default: true
  app_url:
    description: Base URL of the running application (O(mode=functional) and O(mode=performance)).
    type: str
  health_path:
    description: Path of the application's health endpoint.
    type: str
    default: /health
  expect_app_version:
    description: With O(mode=functional), the version the health endpoint must report.
    type: str
  expect_revision:
    description: With O(mode=functional), the Alembic revision the health endpoint must report.
    type: str
  sample_table:
    description: Table whose rows the API is asked for (single-column primary key).
    type: str
    default: predictions
  sample_path:
    description: Path of one row in the API; C({id}) is replaced by the row's key.
    type: str
    default: /predictions/{id}
  sample_size:
    description: How many rows the functional check compares (and the performance load cycles through).
    type: int
    default: 20
  http_timeout:
    description: Seconds to wait for one HTTP answer.
    type: float
    default: 10
  requests:
    description: With O(mode=performance), the number of requests of the load.
    type: int
    default: 200
  concurrency:
    description: With O(mode=performance), the number of concurrent clients.
    type: int
    default: 4
  duration_limit:
    description: With O(mode=performance), the most seconds the load may take (it stops there).
    type: float
    default: 30
  allow_remote:
    description:
      - Send the performance load to a non-loopback address. Off by default so that a load is never sent to a
        production host by accident.
    type: bool
    default: false
  compare_with:
    description: With O(mode=performance), the result of the load measured before the migration.
    type: dict
  max_regression_pct:
    description: A p95 latency higher than before by more than this percentage is a regression.
    type: float
    default: 50
  min_regression_ms:
    description: Differences smaller than this many milliseconds are never a regression (noise on a loopback).
    type: float
    default: 5
'''

EXAMPLES = r'''
- name: Take the exact row counts before anything changes
  pg_validate:
    mode: baseline
    tables: "{{ pgmigrate_plan.database.tables }}"
  register: __validate_baseline

- name: Run the plan's checks
  pg_validate:
    checks: "{{ pgmigrate_plan.validation.checks }}"
    expect_schema: "{{ pgmigrate_plan.schema.expect }}"
    baseline: "{{ __validate_baseline.baseline }}"
    fail_on_failed_checks: false
  register: __validate_data

- name: Compare the API with the database
  pg_validate:
    mode: functional
    app_url: http://127.0.0.1:18080
    expect_revision: v2_0_0
    sample_size: 20

- name: Measure the API's latency under a bounded load
  pg_validate:
    mode: performance
    app_url: http://127.0.0.1:18080
    requests: 200
    compare_with: "{{ pgmigrate_perf_before }}"
'''

RETURN = r'''
passed:
  description: Whether every check of severity C(error) passed (warnings do not count).
  returned: always
  type: bool
checks:
  description:
    - One result per check with C(name), C(kind), C(severity), C(status) (passed, failed, error, skipped), C(message)
      naming what was found, C(duration_ms), and the kind's numbers (C(actual)/C(expected), C(percentage),
      C(invalid_rows), C(sample_keys), C(problems), C(mismatches), C(sqlstate) ...). With O(mode=plan) a check whose
      SQL plans has the status C(planned).
  returned: when mode is validate, plan or functional
  type: list
  elements: dict
summary:
  description: Counts per status, C(warnings), the names of the C(blocking) checks and C(passed_all).
  returned: when mode is validate, plan or functional
  type: dict
failed_checks:
  description: Names of the failing checks of severity C(error).
  returned: when mode is validate, plan or functional
  type: list
  elements: str
baseline:
  description: Row counts per table (taken with O(mode=baseline), or the baseline the checks used).
  returned: when mode is baseline, validate or plan
  type: dict
  sample: {predictions: 100000, matches: 4000, teams: 40}
baseline_source:
  description: Where the baseline came from (C(argument), C(ledger run N), C(none)).
  returned: when mode is validate or plan
  type: str
snapshot_at:
  description: Server time of the transaction's snapshot.
  returned: always
  type: str
performance:
  description:
    - The load's figures (C(requests), C(ok), C(errors), C(p50_ms), C(p95_ms), C(p99_ms), C(mean_ms), C(max_ms),
      C(rps), C(duration_s)); with O(compare_with), C(before), C(p95_change_pct), C(regression) and C(message).
  returned: when mode is performance
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.pgmigrate_validate import (
    CheckInputError,
    check_api_rows,
    check_health,
    exact_count,
    is_loopback_url,
    load_test,
    run_check,
    sample_keys,
    summarise,
)

from ansible.module_utils.pgmigrate import connect, connection_argument_spec, ops_schema_exists, sql
from ansible.module_utils.pgmigrate_sql import HAS_PGLAST, PGLAST_IMP_ERR, check_errors, check_fragments


def check_inputs(module, p: dict) -> None:
    names = set()
    for i, check in enumerate(p["checks"]):
        if not isinstance(check, dict) or not check.get("name") or not check.get("kind"):
            module.fail_json(msg=f"checks[{i}] needs at least 'name' and 'kind' (see migrations/2.0.0.yml)")
        if check["name"] in names:
            module.fail_json(msg=f"checks: name {check['name']!r} is used twice; give each check its own name")
        names.add(check["name"])
        if check.get("severity", "error") not in ("error", "warning"):
            module.fail_json(msg=f"checks[{i}] ({check['name']}): severity must be 'error' or 'warning'")
        if not HAS_PGLAST:
            module.fail_json(msg=missing_required_lib("pglast"), exception=PGLAST_IMP_ERR)
        refused = check_errors(check_fragments(check, f"checks[{i}]"))
        if refused:
            module.fail_json(msg=f"checks[{i}] ({check['name']}): " + "; ".join(refused), errors=refused)
    if p["mode"] in ("functional", "performance"):
        if not p["app_url"] or not p["app_url"].startswith(("http://", "https://")):
            module.fail_json(msg=f"mode={p['mode']} needs app_url, an http(s):// URL of the running application "
                                 "(validate_app_url / pgmigrate_app_url in the inventory)")
        if "{id}" not in p["sample_path"]:
            module.fail_json(msg="sample_path must contain {id} (for example /predictions/{id})")
    if p["mode"] == "performance":
        if p["requests"] < 1 or p["concurrency"] < 1 or p["duration_limit"] <= 0:
            module.fail_json(msg="requests, concurrency and duration_limit must be positive")
        if not p["allow_remote"] and not is_loopback_url(p["app_url"]):
            module.fail_json(msg=f"the performance load goes only to a loopback address and {p['app_url']} is not "
                                 "one; set allow_remote=true to load a remote host on purpose")
    if p["mode"] == "baseline" and not p["tables"]:
        module.fail_json(msg="mode=baseline needs tables (the plan's database.tables)")


def ledger_baseline(cur, schema: str, version: str | None, run_id: int | None) -> tuple[dict, str]:
    """The newest migrate run's baseline: the exact counts the plan phase recorded, else the
    per-table row counts of the backup phase's manifest (taken before the schema and data phases)."""
    if not ops_schema_exists(cur, schema):
        return {}, "none"
    where = [sql.SQL("kind = 'migrate' AND (phases -> 'plan' -> 'facts' ? 'baseline' "
                     "OR phases -> 'backup' -> 'facts' ? 'tables')")]
    params: list = []
    if run_id:
        where = [sql.SQL("id = %s")]
        params.append(run_id)
    if version:
        where.append(sql.SQL("version = %s"))
        params.append(version)
    cur.execute(sql.SQL("SELECT id, phases -> 'plan' -> 'facts' -> 'baseline', "
                        "phases -> 'backup' -> 'facts' -> 'tables' "
                        "FROM {}.runs WHERE {} ORDER BY id DESC LIMIT 1").format(
                            sql.Identifier(schema), sql.SQL(" AND ").join(where)), params)
    row = cur.fetchone()
    if row is None:
        return {}, "none"
    if isinstance(row[1], dict):
        counts = row[1].get("counts", row[1])
        return {k: int(v) for k, v in counts.items() if isinstance(v, (int, float))}, f"ledger run {row[0]}"
    if isinstance(row[2], dict):
        counts = {k: v.get("rows") for k, v in row[2].items() if isinstance(v, dict)}
        return ({k: int(v) for k, v in counts.items() if isinstance(v, (int, float))},
                f"ledger run {row[0]} (backup manifest)")
    return {}, "none"


def run_validate(module, cur, p: dict, plan_only: bool = False) -> dict:
    baseline, source = dict(p["baseline"] or {}), "argument"
    if not baseline and (p["baseline_version"] or p["baseline_run_id"]):
        baseline, source = ledger_baseline(cur, p["ops_schema"], p["baseline_version"], p["baseline_run_id"])
    if not baseline and p["baseline_fallback"]:
        baseline, source = dict(p["baseline_fallback"]), "fallback"
    if not baseline:
        source = "none"
    checks = list(p["checks"])
    if p["expect_schema"]:
        checks.append({"name": "schema_matches_plan", "kind": "schema", "expect_schema": p["expect_schema"],
                       "description": "the plan's schema.expect"})
    results = [run_check(cur, check, baseline, p["statement_timeout"], plan_only) for check in checks]
    return {"checks": results, "baseline": baseline, "baseline_source": source}


def run_functional(module, cur, p: dict) -> dict:
    results = [check_health(p["app_url"], p["health_path"], p["expect_app_version"], p["expect_revision"],
                            p["http_timeout"])]
    cur.execute("SAVEPOINT pgmigrate_check")
    try:
        results.append(check_api_rows(cur, p["app_url"], p["sample_table"], p["sample_path"], p["sample_size"],
                                      p["http_timeout"]))
    except CheckInputError as exc:
        cur.execute("ROLLBACK TO SAVEPOINT pgmigrate_check")
        results.append({"name": "smoke_api_matches_database", "kind": "functional", "severity": "error",
                        "status": "error", "message": str(exc)})
    return {"checks": results}


def compare_performance(after: dict, before: dict | None, p: dict) -> dict:
    if not before or before.get("p95_ms") is None or after.get("p95_ms") is None:
        after.update(regression=False, message="no earlier measurement to compare with" if not before
                     else "no latency figures to compare")
        return after
    change = after["p95_ms"] - before["p95_ms"]
    pct = round(100.0 * change / before["p95_ms"], 1) if before["p95_ms"] else None
    regression = pct is not None and pct > p["max_regression_pct"] and change > p["min_regression_ms"]
    after.update(before={k: before.get(k) for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "rps", "requests",
                                                    "errors")},
                 p50_change_pct=(round(100.0 * (after["p50_ms"] - before["p50_ms"]) / before["p50_ms"], 1)
                                 if before.get("p50_ms") and after.get("p50_ms") is not None else None),
                 p95_change_pct=pct, regression=regression,
                 message=(f"p50 {before.get('p50_ms')} -> {after['p50_ms']} ms, p95 {before['p95_ms']} -> "
                          f"{after['p95_ms']} ms ({pct:+g}%; regression threshold {p['max_regression_pct']:g}%): "
                          + ("REGRESSION" if regression else "within the threshold")))
    return after


def run_performance(module, cur, p: dict) -> dict:
    try:
        _, ids = sample_keys(cur, p["sample_table"], p["sample_size"])
    except CheckInputError as exc:
        module.fail_json(msg=f"performance load: {exc}")
    paths = [p["health_path"]] + [p["sample_path"].replace("{id}", str(i)) for i in ids]
    if module.check_mode:
        return {"performance": {"requests_planned": p["requests"], "paths": len(paths),
                                "message": "check mode: the load was not sent"}}
    cur.connection.rollback()  # do not hold the snapshot open during the load
    result = load_test(p["app_url"], paths, p["requests"], p["concurrency"], p["duration_limit"], p["http_timeout"])
    result["paths"] = len(paths)
    return {"performance": compare_performance(result, p["compare_with"], p)}


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        mode=dict(type="str", default="validate", choices=["validate", "plan", "baseline", "functional",
                                                            "performance"]),
        checks=dict(type="list", elements="dict", default=[]),
        expect_schema=dict(type="dict"),
        baseline=dict(type="dict", default={}),
        baseline_version=dict(type="str"),
        baseline_run_id=dict(type="int"),
        baseline_fallback=dict(type="dict", default={}),
        tables=dict(type="list", elements="str", default=[]),
        statement_timeout=dict(type="str", default="5min"),
        fail_on_failed_checks=dict(type="bool", default=True),
        app_url=dict(type="str"),
        health_path=dict(type="str", default="/health"),
        expect_app_version=dict(type="str"),
        expect_revision=dict(type="str"),
        sample_table=dict(type="str", default="predictions"),
        sample_path=dict(type="str", default="/predictions/{id}"),
        sample_size=dict(type="int", default=20),
        http_timeout=dict(type="float", default=10),
        requests=dict(type="int", default=200),
        concurrency=dict(type="int", default=4),
        duration_limit=dict(type="float", default=30),
        allow_remote=dict(type="bool", default=False),
        compare_with=dict(type="dict"),
        max_regression_pct=dict(type="float", default=50),
        min_regression_ms=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    check_inputs(module, p)
    conn = connect(module)
    # One snapshot for every check, and the server refuses any write a check's SQL might hide.
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    result: dict = {"changed": False}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            result["snapshot_at"] = cur.fetchone()[0].isoformat()
            if p["mode"] == "baseline":
                counts = {}
                for table in p["tables"]:
                    rows = exact_count(cur, table)
                    if rows is None:
                        module.fail_json(msg=f"baseline: table {table!r} does not exist; fix database.tables in "
                                             "the plan")
                    counts[table] = rows
                result.update(baseline=counts, passed=True,
                              msg="baseline: " + ", ".join(f"{t} {n:,} rows" for t, n in counts.items()))
            elif p["mode"] in ("validate", "plan"):
                result.update(run_validate(module, cur, p, plan_only=p["mode"] == "plan"))
            elif p["mode"] == "functional":
                result.update(run_functional(module, cur, p))
            else:
                result.update(run_performance(module, cur, p))
                perf = result["performance"]
                result["passed"] = not perf.get("regression") and not perf.get("errors")
                result["msg"] = perf.get("message") or f"p50 {perf.get('p50_ms')} ms, p95 {perf.get('p95_ms')} ms"
    except Exception as exc:  # a failure outside the checks' savepoints: connection lost, bad input
        module.fail_json(msg=f"pg_validate ({p['mode']}) failed: {str(exc).strip()}")
    finally:
        conn.rollback()
        conn.close()
    if "checks" in result:
        summary = summarise(result["checks"])
        result.update(summary=summary, failed_checks=summary["blocking"], passed=summary["passed_all"])
        bad = [c for c in result["checks"] if c["status"] in ("failed", "error")]
        named = [f"{c['name']} {c['status']}{' (warning)' if c['severity'] == 'warning' else ''}: {c['message']}"
                 for c in bad]
        verb = "plan" if p["mode"] == "plan" else "passed"
        done = summary["passed"] + summary.get("planned", 0)
        result["msg"] = f"{done} of {summary['total']} checks {verb}" + (": " + "; ".join(named) if named else "")
        if p["fail_on_failed_checks"] and not summary["passed_all"]:
            module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
