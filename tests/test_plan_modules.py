"""migration_plan, pg_preflight and migration_ledger against a real PostgreSQL."""
from __future__ import annotations

import yaml
from conftest import ROOT, conn_args, run_module
from validate_helpers import database_state


def test_plan_loads_and_rejects_bad_versions(tmp_path):
    ok = run_module("migration_plan", {"version": "2.0.0", "plan_dir": str(ROOT / "migrations")}, tmp_path)
    assert ok["changed"] is False and ok["plan"]["schema"]["revision"] == "v2_0_0"
    assert "2.0.0" in ok["available_versions"]
    bad = run_module("migration_plan", {"version": "2.0; rm -rf /", "plan_dir": str(ROOT / "migrations")}, tmp_path)
    assert bad.get("failed") and "is not a version number like 2.0.0" in bad["msg"]


def test_plan_reports_every_problem_with_its_path(tmp_path):
    plan = yaml.safe_load((ROOT / "migrations/2.0.0.yml").read_text())
    plan["version"] = "2.0.1"
    plan["backfills"][0].pop("set")
    plan["validation"]["checks"][0]["kind"] = "vibes"
    plan["rollback"]["polcy"] = "manual"
    (tmp_path / "2.0.0.yml").write_text(yaml.safe_dump(plan))
    res = run_module("migration_plan", {"version": "2.0.0", "plan_dir": str(tmp_path)}, tmp_path)
    assert res.get("failed")
    errors = "\n".join(res["errors"])
    assert "validation.checks[0].kind: 'vibes' is not one of" in errors
    assert "rollback.polcy: unknown field (did you mean 'policy'?)" in errors
    # Structural errors come first; semantic checks run once the structure is right.
    plan["validation"]["checks"][0]["kind"] = "row_count"
    del plan["rollback"]["polcy"]
    plan["backfills"][0].update(workers=3, max_workers=2, min_batch_size=500, max_batch_size=100,
                                max_foreground_p99_ms=-1)
    (tmp_path / "2.0.0.yml").write_text(yaml.safe_dump(plan))
    res = run_module("migration_plan", {"version": "2.0.0", "plan_dir": str(tmp_path)}, tmp_path)
    errors = "\n".join(res["errors"])
    assert "backfills[0].max_foreground_p99_ms: must be at least 0" in errors, errors
    plan["backfills"][0]["max_foreground_p99_ms"] = 10
    (tmp_path / "2.0.0.yml").write_text(yaml.safe_dump(plan))
    res = run_module("migration_plan", {"version": "2.0.0", "plan_dir": str(tmp_path)}, tmp_path)
    errors = "\n".join(res["errors"])
    assert "version: the file says '2.0.1' but it was loaded for '2.0.0'" in errors
    assert "give exactly one of 'set'" in errors
    assert ("backfills[0] (predictions_accuracy): workers (3) is larger than max_workers (2); give a max_workers "
            "of at least 3") in errors, errors
    assert "min_batch_size (500) is larger than max_batch_size (100)" in errors


def test_preflight_estimates_without_writing(pg, reference_db, tmp_path):
    plan = yaml.safe_load((ROOT / "migrations/2.0.0.yml").read_text())
    res = run_module("pg_preflight", {**conn_args(pg, reference_db), "plan": plan,
                                      "backup_dir": str(tmp_path / "not-yet")}, tmp_path)
    assert res["changed"] is False
    assert res["database"]["alembic_revision"] == "v1_0_0"
    tables = {t["name"]: t for t in res["tables"]}
    assert tables["public.predictions"]["rows_estimate"] == 3000
    assert res["backfills"][0]["rows_estimate"] == 3000
    assert "not plannable before the schema phase" in res["backfills"][0]["method"]
    assert res["disk"]["enough"] is True and res["disk"]["measured_at"] == str(tmp_path)
    assert not (tmp_path / "not-yet").exists()
    # After the schema change the planner estimates the filter itself.
    conn = pg.connect(reference_db)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE predictions ADD COLUMN model_accuracy float8, ADD COLUMN feature_importance jsonb")
        cur.execute("ANALYZE predictions")
    conn.close()
    res = run_module("pg_preflight", {**conn_args(pg, reference_db), "plan": plan}, tmp_path)
    assert res["backfills"][0]["method"] == "planner estimate of the where filter"
    assert res["backfills"][0]["rows_estimate"] > 2000


def test_ledger_records_phases_and_refuses_unknown_runs(pg, tmp_path):
    db = pg.create_database()
    args = conn_args(pg, db)
    missing = run_module("migration_ledger", {**args, "run_id": 1, "phase": "backup", "phase_status": "started"},
                         tmp_path)
    assert missing.get("failed") and "open a run with migration_lock first" in missing["msg"]
    run_id = run_module("migration_lock", {**args, "version": "2.0.0"}, tmp_path)["run_id"]
    started = run_module("migration_ledger", {**args, "run_id": run_id, "phase": "backup",
                                              "phase_status": "started"}, tmp_path)
    assert started["changed"] and started["run"]["phases"]["backup"]["status"] == "started"
    # Facts alone (what a phase is about to change) are merged in; the status and start time stay.
    noted = run_module("migration_ledger", {**args, "run_id": run_id, "phase": "backup", "facts": {"target": "/b"}},
                       tmp_path)
    assert noted["run"]["phases"]["backup"] == {**started["run"]["phases"]["backup"], "facts": {"target": "/b"}}
    bare = run_module("migration_ledger", {**args, "run_id": run_id, "phase": "backup"}, tmp_path)
    assert bare.get("failed") and "phase_status (or facts" in bare["msg"]
    check = run_module("migration_ledger", {**args, "run_id": run_id, "phase": "backup", "phase_status": "succeeded",
                                            "fields": {"backup_path": "/b/x.dump", "backup_verified": True}},
                       tmp_path, check=True)
    assert check["changed"] and "run" not in check
    done = run_module("migration_ledger", {**args, "run_id": run_id, "phase": "backup", "phase_status": "succeeded",
                                           "facts": {"size_bytes": 42},
                                           "fields": {"backup_path": "/b/x.dump", "backup_verified": True}}, tmp_path)
    run = done["run"]
    assert run["backup_path"] == "/b/x.dump" and run["backup_verified"] is True
    assert run["phases"]["backup"]["status"] == "succeeded" and run["phases"]["backup"]["duration_s"] >= 0
    assert run["phases"]["backup"]["facts"] == {"target": "/b", "size_bytes": 42}
    assert run["phases"]["backup"]["started_at"] == started["run"]["phases"]["backup"]["started_at"]
    unknown = run_module("migration_ledger", {**args, "run_id": run_id + 99, "status": "failed"}, tmp_path)
    assert unknown.get("failed") and f"run #{run_id + 99} does not exist" in unknown["msg"]
    history = run_module("migration_ledger", {**args, "state": "query", "version": "2.0.0"}, tmp_path)
    assert [r["id"] for r in history["runs"]] == [run_id] and history["last_success"] is None


# ---------------------------------------------------------------------------------
# Plan SQL is parsed with PostgreSQL's grammar at load (issue 10, item 4)
# ---------------------------------------------------------------------------------
ESCAPES = {
    # field path -> (where it goes in the plan, fragment, what the refusal says)
    "backfills[0].set.model_accuracy": ("set", "1); COMMIT; DROP TABLE teams; SELECT (1", "4 statements"),
    "backfills[0].where": ("where", "x; COMMIT", "statement separator"),
    "validation.checks[3].where": ("check3.where", "true -- \n; DROP TABLE teams", "statement separator"),
    "validation.checks[4].predicate": ("check4.predicate", "false) FROM teams WHERE (true", "not one expression"),
    "validation.checks[5].sql": ("check5.sql",
                                 "WITH d AS (DELETE FROM predictions RETURNING 1) SELECT count(*) FROM d",
                                 "data-modifying statement (DELETE)"),
    "validation.checks[6].sql": ("check6.sql", "SELECT count(*) INTO stolen FROM predictions",
                                 "SELECT ... INTO"),
    "validation.checks[7].sql": ("check7.sql", "SELECT count(*) FROM (SELECT 1 FROM predictions FOR UPDATE) s",
                                 "FOR UPDATE"),
    "validation.checks[8].sql": ("check8.sql", "SELECT 0; COMMIT; CREATE TABLE pwned (x int); SELECT 0",
                                 "4 statements"),
    "validation.checks[9].predicate": ("check9.predicate", "1), (2", "not one expression"),
}


def escaping_plan() -> dict:
    plan = yaml.safe_load((ROOT / "migrations/2.0.0.yml").read_text())
    checks = plan["validation"]["checks"]
    for i in range(5, 10):
        kind = "invalid_rows" if i == 9 else "custom_sql"
        checks.append({"name": f"trick_{i}", "kind": kind, "table": "predictions", **({"expect": 0} if i != 9 else {})})
    for where, text, _ in ESCAPES.values():
        if where == "set":
            plan["backfills"][0]["set"]["model_accuracy"] = text
        elif where == "where":
            plan["backfills"][0]["where"] = text
        else:
            index, field = where[len("check"):].split(".")
            checks[int(index)][field] = text
    return plan


def test_plan_sql_is_parsed_at_load_naming_field_and_fragment(tmp_path):
    (tmp_path / "2.0.0.yml").write_text(yaml.safe_dump(escaping_plan()))
    res = run_module("migration_plan", {"version": "2.0.0", "plan_dir": str(tmp_path)}, tmp_path)
    assert res.get("failed") is True and "plan" not in res
    errors = res["errors"]
    assert len(errors) == len(ESCAPES), errors
    for field, (_, text, why) in ESCAPES.items():
        (error,) = [e for e in errors if e.startswith(field + ":")]
        assert why in error and repr(text) in error and "is refused" in error, error


def test_plan_sql_that_is_one_expression_loads(tmp_path):
    """Parentheses, comments and dollar quotes that stay inside one expression are fine; so is
    a subquery calling a volatile function (the grammar judges shape, the server the rest)."""
    plan = yaml.safe_load((ROOT / "migrations/2.0.0.yml").read_text())
    plan["backfills"][0]["where"] = ("feature_importance IS NULL AND id IN (SELECT id FROM predictions "
                                     "WHERE random() < 2) -- every row")
    plan["backfills"][0]["set"]["model_accuracy"] = "length($$); COMMIT; SELECT ($$)::float8 / 100"
    plan["validation"]["checks"][5]["sql"] = "WITH x AS (SELECT 0 AS n) SELECT n FROM x /* ; DROP */"
    (tmp_path / "2.0.0.yml").write_text(yaml.safe_dump(plan))
    res = run_module("migration_plan", {"version": "2.0.0", "plan_dir": str(tmp_path)}, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert res["plan"]["backfills"][0]["set"]["model_accuracy"].startswith("length($$)")


def test_preflight_refuses_plan_sql_before_connecting(pg, reference_db, tmp_path):
    """pg_preflight on its own (also in check mode) refuses what migration_plan refuses: the
    where filter used to run as '... WHERE true; COMMIT; CREATE TABLE ...' and commit."""
    plan = yaml.safe_load((ROOT / "migrations/2.0.0.yml").read_text())
    plan["backfills"][0]["where"] = "true; COMMIT; CREATE TABLE pwned_by_preflight (x int); SELECT 1"
    before = database_state(pg, reference_db)
    for check in (True, False):
        res = run_module("pg_preflight", {**conn_args(pg, reference_db), "plan": plan}, tmp_path, check=check)
        assert database_state(pg, reference_db) == before
        assert res.get("failed") is True
        assert "backfills[0].where:" in res["msg"] and "CREATE TABLE pwned_by_preflight" in res["msg"]


def test_plans_ask_only_for_what_they_use(tmp_path):
    """A data-only plan needs no schema, release, rollback, downtime or contacts; tool none needs no revision;
    python_path is a list like pg_batch_update's; alembic still needs its directory and revision."""
    data_only = {"plan_format": 1, "version": "3.0.0", "from_version": "2.0.0", "type": "data", "title": "Backfill",
                 "backfills": [{"name": "fill", "table": "t", "python": "m:f", "python_path": ["lib", "/opt/x"],
                                "columns": ["c"]}]}
    tool_none = {**data_only, "version": "3.0.1", "type": "schema", "schema": {"tool": "none"}, "backfills": []}
    no_revision = {**tool_none, "version": "3.0.2", "schema": {"tool": "alembic", "alembic_dir": "app"}}
    no_schema = {**data_only, "version": "3.0.3", "type": "both"}
    old_path = {**data_only, "version": "3.0.4",
                "backfills": [{**data_only["backfills"][0], "python_path": "lib"}]}
    for plan in (data_only, tool_none, no_revision, no_schema, old_path):
        (tmp_path / f"{plan['version']}.yml").write_text(yaml.safe_dump(plan))
    for version in ("3.0.0", "3.0.1"):
        ok = run_module("migration_plan", {"version": version, "plan_dir": str(tmp_path)}, tmp_path)
        assert ok.get("failed") is not True, ok.get("errors") or ok.get("msg")
    problems = {}
    for version in ("3.0.2", "3.0.3", "3.0.4"):
        bad = run_module("migration_plan", {"version": version, "plan_dir": str(tmp_path)}, tmp_path)
        assert bad.get("failed") is True
        problems[version] = "\n".join(bad["errors"])
    assert "schema.revision: required when schema.tool is alembic" in problems["3.0.2"]
    assert "schema: required field is missing (the plan's type is both" in problems["3.0.3"]
    assert "backfills[0].python_path: expected list, got str" in problems["3.0.4"]


def test_same_day_runs_keep_their_own_reports(pg, tmp_path):
    """Two runs of one version on one day write two reports (the second used to overwrite the first)."""
    db = pg.create_database()
    args = conn_args(pg, db)
    runs = []
    for _ in range(2):
        run_id = run_module("migration_lock", {**args, "version": "2.0.0"}, tmp_path)["run_id"]
        run_module("migration_lock", {**args, "state": "absent", "run_id": run_id, "run_status": "succeeded"},
                   tmp_path)
        runs.append(run_id)
    reports = tmp_path / "reports"
    written = []
    for run_id in runs:
        res = run_module("migration_report", {**args, "run_id": run_id, "version": "2.0.0", "plan": {"title": "t"},
                                              "report_dir": str(reports), "date": "20261202"}, tmp_path)
        assert res.get("failed") is not True, res.get("msg")
        written.append(res["files"]["report_md"])
    assert written == [str(reports / "2.0.0" / f"migration_report_20261202-run{r}.md") for r in runs]
    assert all((reports / "2.0.0" / f"migration_report_20261202-run{r}.md").is_file() for r in runs)
