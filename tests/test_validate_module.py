"""pg_validate against a real PostgreSQL and the reference API, through real ansible-playbook runs."""
from __future__ import annotations

import copy

import pytest
from conftest import conn_args, run_module
from validate_helpers import PLAN, database_state, execute, migrate, query, start_app, stop, table_checksums

CHECKS = PLAN["validation"]["checks"]
EXPECT = PLAN["schema"]["expect"]


@pytest.fixture
def migrated_db(pg, reference_db):
    migrate(pg, reference_db)
    return reference_db


def baseline_of(pg, db, tmp_path) -> dict:
    res = run_module("pg_validate", {**conn_args(pg, db), "mode": "baseline", "tables": PLAN["database"]["tables"]},
                     tmp_path)
    assert res["changed"] is False
    return res["baseline"]


def by_name(result: dict) -> dict:
    return {c["name"]: c for c in result["checks"]}


def test_baseline_is_exact(pg, reference_db, tmp_path):
    base = baseline_of(pg, reference_db, tmp_path)
    for table in PLAN["database"]["tables"]:
        assert base[table] == query(pg, reference_db, f"SELECT count(*) FROM {table}")[0][0]
    assert base["predictions"] == 3000


def test_all_checks_pass_after_a_good_migration_and_change_nothing(pg, migrated_db, tmp_path):
    base = baseline_of(pg, migrated_db, tmp_path)
    before = table_checksums(pg, migrated_db)
    res = run_module("pg_validate", {**conn_args(pg, migrated_db), "checks": CHECKS, "expect_schema": EXPECT,
                                     "baseline": base}, tmp_path)
    assert res.get("failed") is not True, res["msg"]
    assert res["passed"] is True and res["changed"] is False
    checks = by_name(res)
    assert set(checks) == {c["name"] for c in CHECKS} | {"schema_matches_plan"}
    assert all(c["status"] == "passed" for c in checks.values())
    with_result = query(pg, migrated_db, "SELECT count(*) FROM predictions WHERE actual_result IS NOT NULL")[0][0]
    assert checks["accuracy_filled_for_results"]["rows_migrated"] == with_result
    assert checks["feature_importance_filled"]["rows_migrated"] == 3000
    assert checks["predictions_count_unchanged"]["actual"] == 3000
    assert table_checksums(pg, migrated_db) == before
    # The same run in check mode gives the same verdict (the checks are read-only).
    again = run_module("pg_validate", {**conn_args(pg, migrated_db), "checks": CHECKS, "baseline": base}, tmp_path,
                       check=True)
    assert again["passed"] is True


def test_each_check_kind_fails_when_it_should(pg, migrated_db, tmp_path):
    base = baseline_of(pg, migrated_db, tmp_path)
    # A count that drops, a backfill left at 90%, an invalid value, a missing index.
    execute(pg, migrated_db, "DELETE FROM predictions WHERE id IN (SELECT id FROM predictions ORDER BY id DESC "
                             "LIMIT 3)")
    execute(pg, migrated_db, "UPDATE predictions SET feature_importance = NULL WHERE id IN (SELECT id FROM predictions "
                             "ORDER BY id LIMIT (SELECT count(*) / 10 FROM predictions))")
    execute(pg, migrated_db, "UPDATE predictions SET model_accuracy = 1.5 WHERE id = (SELECT min(id) FROM predictions "
                             "WHERE actual_result IS NOT NULL)")
    execute(pg, migrated_db, "DROP INDEX idx_predictions_model_accuracy")
    bad_id = query(pg, migrated_db, "SELECT min(id) FROM predictions WHERE actual_result IS NOT NULL")[0][0]
    checks = copy.deepcopy(CHECKS) + [
        {"name": "wrong_value", "kind": "custom_sql", "sql": "SELECT count(*) FROM teams", "expect": 999},
        # One SELECT each (anything else is refused before the module connects, see
        # test_check_sql_is_refused_before_connecting), failing only at run time.
        {"name": "bad_sql", "kind": "custom_sql", "sql": "SELECT count(*) FROM nowhere", "expect": 0},
        {"name": "sneaky_write", "kind": "custom_sql", "sql": "SELECT nextval('validate_probe_seq')", "expect": 1},
        {"name": "warn_only", "kind": "custom_sql", "sql": "SELECT 1", "expect": 2, "severity": "warning"},
    ]
    execute(pg, migrated_db, "CREATE SEQUENCE validate_probe_seq")
    before = table_checksums(pg, migrated_db)
    sequence = query(pg, migrated_db, "SELECT last_value, is_called FROM validate_probe_seq")
    res = run_module("pg_validate", {**conn_args(pg, migrated_db), "checks": checks, "expect_schema": EXPECT,
                                     "baseline": base}, tmp_path)
    assert res.get("failed") is True and res["passed"] is False
    got = by_name(res)
    count = got["predictions_count_unchanged"]
    assert count["status"] == "failed" and count["actual"] == 2997 and count["expected"] == 3000
    assert "2,997" in count["message"]
    filled = got["feature_importance_filled"]
    assert filled["status"] == "failed" and filled["percentage"] == pytest.approx(90.0, abs=0.1)
    assert len(filled["sample_keys"]) == 5
    invalid = got["accuracy_in_range"]
    assert invalid["status"] == "failed" and invalid["invalid_rows"] == 1 and invalid["sample_keys"] == [bad_id]
    schema = got["schema_matches_plan"]
    assert schema["status"] == "failed" and "idx_predictions_model_accuracy" in schema["message"]
    assert got["wrong_value"]["status"] == "failed" and got["wrong_value"]["expected"] == 999
    assert got["bad_sql"]["status"] == "error" and '"nowhere" does not exist' in got["bad_sql"]["message"]
    assert got["sneaky_write"]["status"] == "error" and "read-only transaction" in got["sneaky_write"]["message"]
    assert got["warn_only"]["status"] == "failed" and "warn_only" not in res["failed_checks"]
    assert got["matches_count_unchanged"]["status"] == "passed"  # the checks after an error still ran
    assert set(res["failed_checks"]) == {"predictions_count_unchanged", "feature_importance_filled",
                                         "accuracy_in_range", "schema_matches_plan", "wrong_value", "bad_sql",
                                         "sneaky_write"}
    for name in res["failed_checks"]:
        assert name in res["msg"]
    assert table_checksums(pg, migrated_db) == before
    # The read-only transaction, the second line of defence, kept the sequence where it was.
    assert query(pg, migrated_db, "SELECT last_value, is_called FROM validate_probe_seq") == sequence


def test_tolerance_and_baseline_from_the_ledger(pg, migrated_db, tmp_path):
    args = conn_args(pg, migrated_db)
    lock = run_module("migration_lock", {**args, "version": "2.0.0"}, tmp_path)
    run_module("migration_ledger", {**args, "run_id": lock["run_id"], "phase": "plan", "phase_status": "succeeded",
                                    "facts": {"baseline": {"counts": {"predictions": 3010}}}}, tmp_path)
    check = [{"name": "within", "kind": "row_count", "table": "predictions", "tolerance": 0.5}]
    res = run_module("pg_validate", {**args, "checks": check, "baseline_version": "2.0.0"}, tmp_path)
    assert res["passed"] is True and res["baseline_source"] == f"ledger run {lock['run_id']}"
    assert res["checks"][0]["difference"] == -10
    check[0]["tolerance"] = 0.1
    res = run_module("pg_validate", {**args, "checks": check, "baseline_version": "2.0.0"}, tmp_path)
    assert res.get("failed") is True and "tolerance 0.1% = 3 rows" in res["msg"]
    missing = run_module("pg_validate", {**args, "checks": [{"name": "nobase", "kind": "row_count",
                                                             "table": "teams"}]}, tmp_path)
    assert missing.get("failed") is True and missing["checks"][0]["status"] == "error"
    assert "no baseline" in missing["checks"][0]["message"]


def test_baseline_from_the_backup_manifest_in_the_ledger(pg, migrated_db, tmp_path):
    args = conn_args(pg, migrated_db)
    lock = run_module("migration_lock", {**args, "version": "2.0.0"}, tmp_path)
    manifest = {"public.predictions": {"rows": 3000, "checksum": "x"}, "public.teams": {"rows": 1, "checksum": "y"}}
    run_module("migration_ledger", {**args, "run_id": lock["run_id"], "phase": "backup", "phase_status": "succeeded",
                                    "facts": {"tables": manifest}}, tmp_path)
    checks = [{"name": "predictions", "kind": "row_count", "table": "predictions"},
              {"name": "teams", "kind": "row_count", "table": "teams"}]
    res = run_module("pg_validate", {**args, "checks": checks, "baseline_version": "2.0.0"}, tmp_path)
    assert res["baseline_source"] == f"ledger run {lock['run_id']} (backup manifest)"
    got = by_name(res)
    assert got["predictions"]["status"] == "passed" and got["predictions"]["expected"] == 3000
    teams = query(pg, migrated_db, "SELECT count(*) FROM teams")[0][0]
    assert got["teams"]["status"] == "failed" and got["teams"]["actual"] == teams and got["teams"]["expected"] == 1


def test_read_only_replica_user(pg, migrated_db, tmp_path):
    base = baseline_of(pg, migrated_db, tmp_path)
    admin = pg.admin_connect(migrated_db)
    with admin.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS validator_ro")
        cur.execute("CREATE ROLE validator_ro LOGIN PASSWORD 'ro-pass-4711' IN ROLE pg_read_all_data")
    admin.close()
    try:
        ro = {**conn_args(pg, migrated_db), "login_user": "validator_ro", "login_password": "ro-pass-4711"}
        res = run_module("pg_validate", {**ro, "checks": CHECKS, "expect_schema": EXPECT, "baseline": base},
                         tmp_path)
        assert res.get("failed") is not True, res["msg"]
        assert res["passed"] is True
        assert "ro-pass-4711" not in res["_output"]
    finally:
        admin = pg.admin_connect(migrated_db)
        with admin.cursor() as cur:
            cur.execute("DROP OWNED BY validator_ro")
            cur.execute("DROP ROLE validator_ro")
        admin.close()


def test_bad_input_fails_with_the_fix(pg, migrated_db, tmp_path):
    args = conn_args(pg, migrated_db)
    res = run_module("pg_validate", {**args, "checks": [{"name": "x"}]}, tmp_path)
    assert res.get("failed") is True and "'name' and 'kind'" in res["msg"]
    res = run_module("pg_validate", {**args, "mode": "functional"}, tmp_path)
    assert res.get("failed") is True and "app_url" in res["msg"]
    res = run_module("pg_validate", {**args, "mode": "performance", "app_url": "http://192.0.2.10:80"}, tmp_path)
    assert res.get("failed") is True and "loopback" in res["msg"]
    res = run_module("pg_validate", {**args, "mode": "baseline", "tables": ["nope"]}, tmp_path)
    assert res.get("failed") is True and "'nope' does not exist" in res["msg"]


def test_functional_and_performance_against_the_api(pg, migrated_db, tmp_path):
    args = conn_args(pg, migrated_db)
    proc, url = start_app(pg, migrated_db)
    try:
        res = run_module("pg_validate", {**args, "mode": "functional", "app_url": url, "expect_revision": "v2_0_0",
                                         "expect_app_version": "2.0.0", "sample_size": 10}, tmp_path)
        assert res.get("failed") is not True, res["msg"]
        got = by_name(res)
        assert got["smoke_health"]["response"]["db_revision"] == "v2_0_0"
        assert got["smoke_api_matches_database"]["sampled"] == 10
        # The API now disagrees with what the check expects: a wrong revision is named.
        res = run_module("pg_validate", {**args, "mode": "functional", "app_url": url, "expect_revision": "v9",
                                         "sample_size": 3}, tmp_path)
        assert res.get("failed") is True and "db_revision is 'v2_0_0', expected 'v9'" in res["msg"]

        before = run_module("pg_validate", {**args, "mode": "performance", "app_url": url, "requests": 60,
                                            "concurrency": 2}, tmp_path)
        perf = before["performance"]
        assert perf["ok"] == 60 and perf["errors"] == 0 and perf["p50_ms"] <= perf["p95_ms"]
        slow = dict(perf, p50_ms=perf["p50_ms"] / 100, p95_ms=perf["p95_ms"] / 100)
        after = run_module("pg_validate", {**args, "mode": "performance", "app_url": url, "requests": 60,
                                           "concurrency": 2, "compare_with": slow, "min_regression_ms": 0}, tmp_path)
        assert after["performance"]["regression"] is True and "REGRESSION" in after["msg"]
        assert after["performance"]["before"]["p95_ms"] == slow["p95_ms"]
    finally:
        stop(proc)
    down = run_module("pg_validate", {**args, "mode": "functional", "app_url": url, "sample_size": 2}, tmp_path)
    assert down.get("failed") is True and "smoke_health failed" in down["msg"]


@pytest.mark.parametrize(("field", "check", "why"), [
    ("sql", {"kind": "custom_sql", "sql": "SELECT 0; COMMIT; CREATE TABLE pwned_by_check (x int); SELECT 0",
             "expect": 0}, "4 statements"),
    ("predicate", {"kind": "invalid_rows", "table": "predictions",
                   "predicate": "false) IS TRUE; COMMIT; CREATE TABLE pwned_by_check (x int); SELECT (1"},
     "statements"),
    ("where", {"kind": "migrated_percentage", "table": "predictions", "column": "model_accuracy",
               "where": "true -- \n; COMMIT; CREATE TABLE pwned_by_check (x int)"}, "statement separators"),
    ("sql", {"kind": "custom_sql", "sql": "WITH d AS (DELETE FROM teams RETURNING 1) SELECT count(*) FROM d",
             "expect": 0}, "data-modifying statement (DELETE)"),
    ("sql", {"kind": "custom_sql", "sql": "DELETE FROM teams RETURNING 1", "expect": 1}, "kind Delete"),
    ("sql", {"kind": "custom_sql", "sql": "SELECT count(*) INTO pwned_by_check FROM teams", "expect": 0},
     "SELECT ... INTO"),
    ("sql", {"kind": "custom_sql", "sql": "SELECT count(*) FROM (SELECT 1 FROM teams FOR UPDATE) s", "expect": 0},
     "FOR UPDATE"),
])
def test_check_sql_is_refused_before_connecting(pg, migrated_db, tmp_path, field, check, why):
    """A check's SQL used to go to the server as one string: its COMMIT ended the READ ONLY
    transaction and the rest ran read-write. Now it is parsed first and refused, naming the field."""
    before = database_state(pg, migrated_db)
    checks = [CHECKS[0], {"name": "trick", **check}]
    res = run_module("pg_validate", {**conn_args(pg, migrated_db), "checks": checks}, tmp_path)
    assert database_state(pg, migrated_db) == before
    assert res.get("failed") is True
    assert f"checks[1] (trick): checks[1].{field}:" in res["msg"] and why in res["msg"], res["msg"]
    assert repr(check[field]) in res["msg"]
    assert "checks" not in res  # nothing ran, not even the good check
