"""The rehearsal on the backup's restored copy (issue 10 item 5, runbook 2.2.2): real ansible-playbook
runs of migrate.yml and playbooks/backup.yml against a real PostgreSQL.

A plan whose backfill or validation SQL names an unknown table or column, or mixes types, is refused in
the backup phase, after the copy was migrated and before the target changes: the target's catalog, every
table and its revision are the same as before, and the ledger shows the run failed at the backup phase.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, conn_args, run_module, run_playbook
from test_backup import scratch_databases, source_tables
from test_migrate_flow import flow_vars, snapshot
from validate_helpers import query

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())


def write_plan(tmp_path: Path, change) -> Path:
    plan = copy.deepcopy(PLAN)
    change(plan)
    plans = tmp_path / "plans"
    plans.mkdir(exist_ok=True)
    (plans / "2.0.0.yml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return plans


def target_state(pg, db: str) -> dict:
    """Catalog, every table's count and checksum and the revision; the ledger is compared on its own."""
    state = snapshot(pg, db)
    state.pop("runs", None)
    state.pop("lock", None)
    for key in ("relations", "columns"):  # the run's own ledger schema is expected; everything else is compared
        state[key] = [row for row in state[key] if row[0] != "migration_ops"]
    state["tables"] = source_tables(pg, db)
    return state


def backfill(plan: dict) -> dict:
    return plan["backfills"][0]


def check(plan: dict, name: str) -> dict:
    return next(c for c in plan["validation"]["checks"] if c["name"] == name)


def bad_backfills(plan: dict) -> None:
    """Five backfills, each with one defect that only the database can see (every one plans on its own)."""
    good = plan["backfills"][0]
    defects = {
        "unknown_set_column": lambda b: b["set"].update(model_acuracy="1"),
        "unknown_column_in_set": lambda b: b["set"].update(model_accuracy="1 - draw_probability"),
        "unknown_table": lambda b: b.update(table="prediction"),
        "type_mismatch": lambda b: b["set"].update(feature_importance="draw_prob"),
        "unknown_column_in_where": lambda b: b.update(where="feature_importanse IS NULL"),
    }
    plan["backfills"] = []
    for name, defect in defects.items():
        b = copy.deepcopy(good)
        b["name"] = name
        defect(b)
        plan["backfills"].append(b)


def bad_checks(plan: dict) -> None:
    check(plan, "accuracy_in_range").update(predicate="model_acuracy < 0")
    check(plan, "accuracy_null_without_result").update(
        sql="SELECT count(*) FROM predictions WHERE feature_importance > 1")


BAD_PLANS = [
    ("backfills", bad_backfills, [
        "backfill unknown_set_column: column to set 'model_acuracy' does not exist in table public.predictions",
        'backfill unknown_column_in_set: the SQL of the backfill does not plan: column "draw_probability" does not '
        "exist",
        "The problem is in set.model_accuracy",
        "backfill unknown_table: table 'prediction' does not exist",
        'backfill type_mismatch: the SQL of the backfill does not plan: column "feature_importance" is of type jsonb',
        "The problem is in set.feature_importance",
        'backfill unknown_column_in_where: the SQL of the backfill does not plan: column "feature_importanse" does '
        "not exist",
        "The problem is in where"]),
    ("validation checks", bad_checks, [
        'accuracy_in_range error: the check\'s SQL failed: ERROR: column "model_acuracy" does not exist',
        "accuracy_null_without_result error: the check's SQL failed: ERROR: operator does not exist: jsonb > "
        "integer"]),
]


def flat(text: str) -> str:
    """The output with Ansible's line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.parametrize(("label", "change", "expected"), BAD_PLANS, ids=[b[0] for b in BAD_PLANS])
def test_bad_plan_sql_is_refused_in_the_backup_phase_with_the_target_unchanged(pg, reference_db, tmp_path,
                                                                                label, change, expected):
    before = target_state(pg, reference_db)
    plans = write_plan(tmp_path, change)
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, pgmigrate_plan_dir=str(plans)))
    out = flat(res.output)
    assert res.rc != 0, label
    assert "The rehearsal on the restored copy pgmigrate_verify_r1_" in out, res.output[-3000:]
    for text in expected:
        assert text in out, (text, res.output[-3000:])
    assert "before the schema phase; the target database was not changed" in out
    assert pg.password not in res.output
    # The target: same catalog, same content of every table, same revision; the rehearsal copy is gone.
    assert target_state(pg, reference_db) == before
    assert query(pg, reference_db, "SELECT version_num FROM alembic_version") == [("v1_0_0",)]
    assert scratch_databases(pg) == []
    # The ledger: only this run, failed at the backup phase with the modules' own messages; no checkpoints.
    (status, error, phases), = query(pg, reference_db, "SELECT status, error, phases FROM migration_ops.runs")
    assert status == "failed" and phases["backup"]["status"] == "failed"
    assert "schema" not in phases and "data" not in phases
    assert expected[0] in flat(phases["backup"]["facts"]["error"]) and expected[0] in flat(error)
    assert query(pg, reference_db, "SELECT to_regclass('migration_ops.batch_checkpoints')") == [(None,)]
    assert query(pg, reference_db, "SELECT count(*) FROM migration_ops.lock") == [(0,)]


def test_default_rehearsal_migrates_the_copy_plans_everything_and_drops_it(pg, reference_db, tmp_path):
    before = target_state(pg, reference_db)
    res = run_playbook("playbooks/backup.yml", tmp_path, flow_vars(pg, reference_db, tmp_path))
    assert res.rc == 0, res.output[-4000:]
    out = flat(res.output)
    assert "Rehearsal (plan) on the restored copy pgmigrate_verify_r1_" in out
    assert "schema v1_0_0 -> v2_0_0" in out
    assert "backfill predictions_accuracy plans (would update 3000 row(s)" in out
    assert "7 of 7 checks plan" in out and "The target was not changed." in out
    assert target_state(pg, reference_db) == before
    assert scratch_databases(pg) == []
    (phases,), = query(pg, reference_db, "SELECT phases FROM migration_ops.runs")
    rehearsal = phases["backup"]["facts"]["rehearsal"]
    assert rehearsal["mode"] == "plan" and rehearsal["outcome"] == "succeeded"
    assert (rehearsal["from_revision"], rehearsal["to_revision"]) == ("v1_0_0", "v2_0_0")
    assert rehearsal["would_update"] == {"predictions_accuracy": 3000}
    assert (rehearsal["checks_planned"], rehearsal["checks"]) == (6, 7)  # the schema check runs for real
    assert rehearsal["estimate_s"] is None


def test_rehearse_full_runs_backfill_and_validation_on_the_copy_and_reports_durations(pg, reference_db, tmp_path):
    before = target_state(pg, reference_db)
    variables = flow_vars(pg, reference_db, tmp_path, rehearse="full")
    res = run_playbook("playbooks/backup.yml", tmp_path, variables)
    assert res.rc == 0, res.output[-4000:]
    out = flat(res.output)
    assert "Rehearsal (full) on the restored copy" in out
    assert "7 of 7 checks passed" in out and "estimate for the real run" in out
    assert target_state(pg, reference_db) == before
    assert scratch_databases(pg) == []
    (phases,), = query(pg, reference_db, "SELECT phases FROM migration_ops.runs")
    rehearsal = phases["backup"]["facts"]["rehearsal"]
    assert rehearsal["mode"] == "full" and rehearsal["outcome"] == "succeeded"
    assert rehearsal["backfill_s"]["predictions_accuracy"] > 0
    assert rehearsal["validation_s"] > 0 and rehearsal["schema_s"] > 0
    assert rehearsal["estimate_s"] >= rehearsal["backfill_s"]["predictions_accuracy"]
    # The rehearsal's progress log is its own; the real run's log and metrics are untouched.
    state = tmp_path / "state" / "logs"
    lines = [json.loads(x) for x in (state / "rehearsal" / "backfill-predictions_accuracy.jsonl").read_text()
             .splitlines()]
    assert lines[-1]["event"] == "done" and lines[-1]["rows_done"] == 3000
    assert not (state / "backfill-predictions_accuracy.jsonl").exists()
    assert not (state / "metrics").exists()


def test_rehearse_full_refuses_a_plan_whose_validation_fails_after_the_backfill(pg, reference_db, tmp_path):
    """A backfill that plans but leaves rows the validation rejects: only running it on the copy can tell."""
    before = target_state(pg, reference_db)
    plans = write_plan(tmp_path, lambda p: backfill(p)["set"].update(model_accuracy="2.0"))
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, rehearse="full",
                                                          pgmigrate_plan_dir=str(plans)))
    assert res.rc != 0
    assert "accuracy_in_range failed" in flat(res.output), res.output[-3000:]
    assert "the target database was not changed" in flat(res.output)
    assert target_state(pg, reference_db) == before
    assert scratch_databases(pg) == []


def test_rehearse_none_says_so_and_check_mode_skips_with_a_note(pg, reference_db, tmp_path):
    res = run_playbook("playbooks/backup.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, rehearse="none"))
    assert res.rc == 0, res.output[-4000:]
    assert "WARNING: rehearse=none" in flat(res.output)
    assert scratch_databases(pg) == []
    (phases,), = query(pg, reference_db, "SELECT phases FROM migration_ops.runs")
    assert phases["backup"]["facts"]["rehearsal"] == {"mode": "none", "outcome": "skipped",
                                                      "reason": "rehearse=none"}
    check = run_playbook("playbooks/backup.yml", tmp_path, flow_vars(pg, reference_db, tmp_path), "--check")
    assert check.rc == 0, check.output[-3000:]
    assert "Check mode: no backup is dumped, so nothing is rehearsed" in flat(check.output)
    bad = run_playbook("playbooks/backup.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, rehearse="fast"))
    assert bad.rc != 0 and "backup_rehearse must be one of: plan, full, none, got: fast" in flat(bad.output), \
        bad.output[-3000:]
    # Refused at the role's arguments, before the dump: its run failed with no backup of its own.
    assert query(pg, reference_db, "SELECT id, status, backup_path IS NULL FROM migration_ops.runs ORDER BY id") \
        == [(1, "succeeded", False), (2, "failed", True)]
    assert len(list((tmp_path / "state" / "backups").glob("*.dump"))) == 1
    assert scratch_databases(pg) == []


# ------------------------------------------------------------------------- the modules' parts
def test_batch_update_check_mode_on_a_migrated_schema_fails_on_a_missing_column(pg, reference_db, tmp_path):
    args = {**conn_args(pg, reference_db), "name": "predictions_accuracy", "table": "predictions",
            "set": {"model_accuracy": "1"}}
    # Before the schema phase (v1_0_0 has no model_accuracy) a missing column is a warning...
    warned = run_module("pg_batch_update", args, tmp_path, check=True)
    assert warned.get("failed") is not True and "the schema phase may create it" in warned["_output"]
    # ...on a database that already has the plan's schema, it is an error naming the backfill.
    refused = run_module("pg_batch_update", {**args, "schema_ready": True}, tmp_path, check=True)
    assert refused.get("failed") is True
    assert "backfill predictions_accuracy: column to set 'model_accuracy' does not exist" in refused["msg"]
    where = run_module("pg_batch_update", {**args, "set": {"home_win_prob": "home_win_prob"},
                                           "where": "draw_prob IS NULL OR nope", "schema_ready": True},
                       tmp_path, check=True)
    assert where.get("failed") is True and where["field"] == "where" and "The problem is in where" in where["msg"]


def test_validate_plan_mode_plans_every_check_and_reads_no_rows(pg, reference_db, tmp_path):
    checks = [
        {"name": "count", "kind": "row_count", "table": "predictions"},
        {"name": "filled", "kind": "migrated_percentage", "table": "predictions", "column": "home_win_prob"},
        {"name": "range", "kind": "invalid_rows", "table": "predictions", "predicate": "draw_prob < 0"},
        {"name": "custom", "kind": "custom_sql", "sql": "SELECT count(*) FROM teams", "expect": 0},
    ]
    res = run_module("pg_validate", {**conn_args(pg, reference_db), "mode": "plan", "checks": checks}, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    # A row_count without a baseline and a custom check whose value would not match: planned, not run.
    assert [c["status"] for c in res["checks"]] == ["planned"] * 4 and res["msg"] == "4 of 4 checks plan"
    bad = checks + [{"name": "typo", "kind": "invalid_rows", "table": "predictions", "predicate": "draw_prop < 0"},
                    {"name": "gone", "kind": "row_count", "table": "no_such_table"}]
    refused = run_module("pg_validate", {**conn_args(pg, reference_db), "mode": "plan", "checks": bad}, tmp_path)
    assert refused.get("failed") is True and refused["failed_checks"] == ["typo", "gone"]
    assert 'typo error: the check\'s SQL failed: ERROR:  column "draw_prop" does not exist' in refused["msg"]
    assert "gone error: table 'no_such_table' does not exist" in refused["msg"]
