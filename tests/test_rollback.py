"""The way back (issue #12): rollback.yml stand-alone and migrate.yml's automatic rollback, through
real ansible-playbook runs against the session's PostgreSQL. Faults come from outside the production
code: a test-only plan (a failing check, a broken backfill, a broken Alembic project), the test-only
callback that damages a backup, a backup file moved away, rows written by the test as the application."""
from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from backfill_helpers import wait_for_batches
from conftest import ROOT
from conftest import run_playbook as _run_playbook
from deploy_helpers import (
    build_releases,
    config_digest,
    install_broken_release,
    install_proxy_failing_release,
    new_stack,
)
from psycopg2 import sql
from receivers import WebhookReceiver
from test_backfill_safety import start_playbook
from test_backup_flow import with_fault
from traffic import Traffic
from validate_helpers import query

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())
APP_TABLES = ("teams", "matches", "predictions")
FAILING_CHECK = {"name": "rollback_test_fails", "kind": "custom_sql", "sql": "SELECT 1", "expect": 0}


def run_playbook(playbook, tmp_path: Path, *args, **kwargs):
    """conftest's run_playbook, keeping every run's output in the test's directory (to read after a failure)."""
    res = _run_playbook(playbook, tmp_path, *args, **kwargs)
    (tmp_path / f"run-{time.monotonic_ns()}-{Path(playbook).stem}.log").write_text(res.output)
    return res


def write_plan(tmp_path: Path, change=None) -> Path:
    """The reference plan, changed by ``change(plan)``, in the test's own plan directory."""
    plan = copy.deepcopy(PLAN)
    if change:
        change(plan)
    d = tmp_path / "plans"
    d.mkdir(exist_ok=True)
    (d / "2.0.0.yml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return d


def failing_validation(plan: dict) -> None:
    plan["validation"]["checks"].append(FAILING_CHECK)


def rb_vars(pg, db, tmp_path, plans: Path | None = None, **extra) -> dict:
    out = {**pg.conn_vars(db), "version": "2.0.0", "pgmigrate_db_sslmode": "disable",
           "pgmigrate_state_dir": str(tmp_path / "state"), "pgmigrate_backup_dir": str(tmp_path / "backups"),
           "pgmigrate_log_dir": str(tmp_path / "logs"), "pgmigrate_report_dir": str(tmp_path / "reports"),
           "pgmigrate_docs_dir": str(tmp_path / "docs"), "pgmigrate_app_url": "", "pgmigrate_environment": "test",
           "data_migrate_poll_interval": 1, "rehearse": "none", **extra}
    if plans is not None:
        out["pgmigrate_plan_dir"] = str(plans)
    return out


def checksums(pg, db) -> dict:
    """Per-table content checksum of the application's tables and the Alembic revision."""
    out = {}
    for table in APP_TABLES + ("alembic_version",):
        out[table] = query(pg, db, sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), "
                                           "'')) FROM {} t").format(sql.Identifier(table)))[0]
    return out


def revision(pg, db) -> str:
    return query(pg, db, "SELECT version_num FROM alembic_version")[0][0]


def runs(pg, db) -> list:
    return query(pg, db, "SELECT id, kind, status, phases, error FROM migration_ops.runs ORDER BY id")


def lock_rows(pg, db) -> int:
    return query(pg, db, "SELECT count(*) FROM migration_ops.lock")[0][0]


def text(res) -> str:
    # The YAML callback folds long messages and doubles the apostrophes of single-quoted strings.
    return " ".join(res.output.split()).replace("''", "'")


def report_md(tmp_path: Path) -> str:
    files = sorted((tmp_path / "reports" / "2.0.0").glob("migration_report_*.md"))
    assert files, "no report was written"
    return files[-1].read_text()


def failed_run(pg, db, tmp_path, plans: Path, **extra):
    """migrate.yml that fails in the validate phase after the schema change and the backfill, not rolled back."""
    res = run_playbook("migrate.yml", tmp_path, rb_vars(pg, db, tmp_path, plans, auto_rollback=False, **extra))
    assert res.rc != 0 and "rollback_test_fails" in res.output, res.output[-3000:]
    assert "Rollback: not run" in text(res)
    assert revision(pg, db) == "v2_0_0"
    (run_id, kind, status, phases, _), = runs(pg, db)
    assert (kind, status, phases["validate"]["status"]) == ("migrate", "failed", "failed")
    return run_id


# ---------------------------------------------------------------------------------------------
# 1. Stand-alone: --check changes nothing, the rollback undoes, the second one has nothing to do
# ---------------------------------------------------------------------------------------------
def test_standalone_rollback_check_undo_and_nothing_left(pg, reference_db, tmp_path):
    before = checksums(pg, reference_db)
    plans = write_plan(tmp_path, failing_validation)
    run_id = failed_run(pg, reference_db, tmp_path, plans)
    failed_state = (checksums(pg, reference_db), runs(pg, reference_db))
    variables = rb_vars(pg, reference_db, tmp_path, plans)

    preview = run_playbook("rollback.yml", tmp_path, variables, "--check")
    assert preview.rc == 0, preview.output[-3000:]
    out = text(preview)
    assert f"Check mode: would undo run #{run_id} (2.0.0, failed" in out
    assert "database restored from the verified backup" in out and "the run's backfills updated 3,000 row(s)" in out
    assert "deploy: nothing to switch back (the deploy phase recorded skipped" in out
    assert (checksums(pg, reference_db), runs(pg, reference_db)) == failed_state

    # rollback.yml -e run_id=N, without a version: the same preview, of that run; an id the ledger does not
    # hold has nothing to roll back.
    by_id = {k: v for k, v in variables.items() if k != "version"}
    named = run_playbook("rollback.yml", tmp_path, {**by_id, "run_id": run_id}, "--check")
    assert named.rc == 0, named.output[-3000:]
    assert f"Check mode: would undo run #{run_id} (2.0.0, failed" in text(named)
    assert "database restored from the verified backup" in text(named)
    unknown = run_playbook("rollback.yml", tmp_path, {**by_id, "run_id": run_id + 41}, "--check")
    assert unknown.rc == 0, unknown.output[-3000:]
    assert f"holds no run #{run_id + 41}: nothing to roll back" in text(unknown)
    assert (checksums(pg, reference_db), runs(pg, reference_db)) == failed_state

    res = run_playbook("rollback.yml", tmp_path, variables)
    assert res.rc == 0, res.output[-4000:]
    assert f"Run #{run_id} (2.0.0) is rolled back" in text(res)
    assert checksums(pg, reference_db) == before
    assert revision(pg, reference_db) == "v1_0_0"
    rows = runs(pg, reference_db)
    assert [(r[1], r[2]) for r in rows] == [("migrate", "rolled_back"), ("rollback", "succeeded")]
    rollback = rows[0][3]["rollback"]
    assert rollback["status"] == "succeeded" and rollback["facts"]["strategy"] == "restore"
    assert rollback["facts"]["rollback_run_id"] == rows[1][0] and rollback["facts"]["automatic"] is False
    assert any("database restored from the verified backup" in u for u in rollback["facts"]["undone"])
    assert any("nothing to switch back" in n for n in rollback["facts"]["notes"])
    assert rows[0][3]["validate"]["status"] == "failed"  # the failure stays recorded beside the rollback
    assert lock_rows(pg, reference_db) == 0
    report = report_md(tmp_path)
    assert "Outcome: **rolled_back**" in report and "## Rollback" in report
    assert "phase validate failed" in report and "Undone: database restored" in report

    after = (checksums(pg, reference_db), runs(pg, reference_db))
    again = run_playbook("rollback.yml", tmp_path, variables)
    assert again.rc == 0, again.output[-3000:]
    assert f"Nothing to roll back: run #{run_id} (2.0.0) was already rolled back" in text(again)
    assert (checksums(pg, reference_db), runs(pg, reference_db)) == after


# ---------------------------------------------------------------------------------------------
# 2. No silent data loss: rows the application wrote after the backup are named, then forced
# ---------------------------------------------------------------------------------------------
NEW_ROWS = ("INSERT INTO predictions (match_id, model_version, home_win_prob, draw_prob, away_win_prob, "
            "predicted_result, model_accuracy) SELECT match_id, 'v2.0.0-app', 0.5, 0.3, 0.2, 'H', 0.9 "
            "FROM predictions ORDER BY id LIMIT 7")


def test_rows_written_after_the_backup_are_refused_by_default_then_forced(pg, reference_db, tmp_path):
    before = checksums(pg, reference_db)
    plans = write_plan(tmp_path, failing_validation)
    run_id = failed_run(pg, reference_db, tmp_path, plans)
    query(pg, reference_db, NEW_ROWS)  # the 2.0.0 application kept serving
    variables = rb_vars(pg, reference_db, tmp_path, plans)
    state = (checksums(pg, reference_db), runs(pg, reference_db))

    refused = run_playbook("rollback.yml", tmp_path, variables)
    assert refused.rc != 0
    out = text(refused)
    assert "rollback refused: the restore would discard 7 row(s) written after the backup" in out, out[-3000:]
    assert "public.predictions: 7 row(s) (written after the backup (id > 3000" in out
    assert "-e rollback_discard_new_rows=true" in out and "Nothing was changed" in out
    assert (checksums(pg, reference_db), runs(pg, reference_db)) == state

    # A downgrade keeps the rows but drops the column the application filled in them: said the same way.
    downgrade = run_playbook("rollback.yml", tmp_path, {**variables, "rollback_strategy": "downgrade"})
    assert downgrade.rc != 0
    out = text(downgrade)
    assert "the downgrade would drop the values of 7 row(s)" in out
    assert "public.predictions.model_accuracy: 7 row(s)" in out
    assert (checksums(pg, reference_db), runs(pg, reference_db)) == state

    forced = run_playbook("rollback.yml", tmp_path, {**variables, "rollback_discard_new_rows": True})
    assert forced.rc == 0, forced.output[-4000:]
    assert "Data discarded (accepted with rollback_discard_new_rows): public.predictions: 7 row(s)" in text(forced)
    assert checksums(pg, reference_db) == before
    (_, _, status, phases, _), _ = runs(pg, reference_db)
    assert status == "rolled_back"
    assert phases["rollback"]["facts"]["losses"]["public.predictions"]["rows"] == 7
    assert f"#{run_id}" in report_md(tmp_path) and "Discarded (accepted): public.predictions: 7 row(s)" in \
        report_md(tmp_path)


# ---------------------------------------------------------------------------------------------
# 3. Refusals: a backup missing or unverified; a run still live; nothing to roll back
# ---------------------------------------------------------------------------------------------
def test_missing_or_unverified_backup_is_refused_with_nothing_changed(pg, reference_db, tmp_path):
    plans = write_plan(tmp_path, failing_validation)
    failed_run(pg, reference_db, tmp_path, plans)
    variables = rb_vars(pg, reference_db, tmp_path, plans)
    state = (checksums(pg, reference_db), runs(pg, reference_db))
    backup = Path(query(pg, reference_db, "SELECT backup_path FROM migration_ops.runs")[0][0])
    manifest = Path(str(backup) + ".manifest.json")

    moved = backup.with_name("elsewhere.dump")
    backup.rename(moved)
    res = run_playbook("rollback.yml", tmp_path, variables)
    backup_missing = text(res)
    moved.rename(backup)
    assert res.rc != 0
    assert "a restore is needed" in backup_missing and f"backup file {backup} is missing" in backup_missing
    assert "-e rollback_strategy=downgrade" in backup_missing and "Nothing was changed" in backup_missing
    assert (checksums(pg, reference_db), runs(pg, reference_db)) == state

    original = manifest.read_text()
    manifest.write_text(json.dumps(dict(json.loads(original), verified=False)))
    res = run_playbook("rollback.yml", tmp_path, variables)
    manifest.write_text(original)
    assert res.rc != 0
    assert f"the run's backup {backup} is not verified" in text(res)
    assert (checksums(pg, reference_db), runs(pg, reference_db)) == state


def test_a_live_run_is_refused_and_a_version_without_runs_has_nothing_to_do(pg, reference_db, tmp_path):
    import subprocess

    from conftest import VENV_BIN, ansible_env, write_vars
    nothing = run_playbook("rollback.yml", tmp_path, rb_vars(pg, reference_db, tmp_path))
    assert nothing.rc == 0, nothing.output[-3000:]
    assert "Nothing to roll back" in text(nothing) and "pgmigrate-ops never migrated it" in text(nothing)

    variables = rb_vars(pg, reference_db, tmp_path, hold_ready_file=str(tmp_path / "ready"),
                        hold_release_file=str(tmp_path / "release"))
    holder = subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), str(ROOT / "tests/playbooks/hold_lock.yml"),
         "-i", str(ROOT / "inventories/local"), "-e", "@" + str(write_vars(tmp_path, variables))],
        cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(1200):
            if (tmp_path / "ready").exists() or holder.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "ready").exists(), holder.stdout.read() if holder.poll() is not None else "holder stuck"
        state = (checksums(pg, reference_db), runs(pg, reference_db))
        res = run_playbook("rollback.yml", tmp_path, rb_vars(pg, reference_db, tmp_path))
        assert res.rc != 0
        assert "Run #1 is still live: it holds the migration lock and its ansible-playbook process" in text(res)
        assert "Nothing was changed" in text(res)
        assert (checksums(pg, reference_db), runs(pg, reference_db)) == state
    finally:
        (tmp_path / "release").touch()
        holder.communicate(timeout=300)


# ---------------------------------------------------------------------------------------------
# 4. Fault injection at each phase: migrate.yml rolls back by itself
# ---------------------------------------------------------------------------------------------
def schema_expects_a_missing_column(plan: dict) -> None:
    plan["schema"]["expect"]["columns"].append({"table": "predictions", "column": "no_such_column", "type": "text"})


def backfill_fails_midway(plan: dict) -> None:
    plan["backfills"][0].update(set={"confidence": "confidence / (CASE WHEN id >= 2000 THEN 0 ELSE 1 END)"},
                                batch_size=200, min_batch_size=200, max_batch_size=200)
    plan["backfills"][0].pop("where")


FAULTS = {
    # phase: (how the phase is made to fail, from outside the production code; what it says; strategy)
    "backup": (None, "This run's backup is not proven to restore", None),
    "schema": (schema_expects_a_missing_column, "no_such_column", "downgrade"),
    "data": (backfill_fails_midway, "division by zero", "restore"),
    "validate": (failing_validation, "rollback_test_fails", "restore"),
}


@pytest.mark.parametrize("phase", list(FAULTS))
def test_failed_phase_is_rolled_back_automatically(pg, reference_db, tmp_path, phase):
    change, message, strategy = FAULTS[phase]
    before = checksums(pg, reference_db)
    plans = write_plan(tmp_path, change)
    with WebhookReceiver() as hook:
        res = run_playbook("migrate.yml", tmp_path,
                           rb_vars(pg, reference_db, tmp_path, plans, report_notify_webhook_url=hook.url("/hook")),
                           env=with_fault("truncate") if phase == "backup" else None)
        posts = [p["json"]["text"] + "\n" + p["json"]["attachments"][0]["fallback"] for p in hook.posts]
    out = text(res)
    assert res.rc != 0 and message in out, out[-4000:]
    assert f"The {phase} phase failed at" in out
    # The same revision and the same content as before the migration.
    assert checksums(pg, reference_db) == before
    assert revision(pg, reference_db) == "v1_0_0"
    (run_id, _, status, phases, error), *rest = runs(pg, reference_db)
    assert phases[phase]["status"] == "failed" and message in phases[phase]["facts"]["error"]
    assert f"{phase} phase failed" in error
    assert lock_rows(pg, reference_db) == 0
    assert any("2.0.0 failed" in p and f"failed phase: {phase}" in p for p in posts), posts
    rollback = phases["rollback"]
    assert rollback["facts"]["automatic"] is True
    if strategy is None:  # the backup failed before anything changed
        assert "Rollback: nothing to undo" in out
        assert status == "failed" and rollback["status"] == "skipped" and rollback["facts"]["undone"] == []
        assert rest == []
        return
    assert "rolling back automatically" in out and f"Run #{run_id} (2.0.0) is rolled back automatically" in out
    assert "Rollback: rolled back automatically:" in out
    assert status == "rolled_back" and rollback["status"] == "succeeded"
    assert rollback["facts"]["strategy"] == strategy and rollback["facts"]["revision_after"] == "v1_0_0"
    assert any(("downgraded" if strategy == "downgrade" else "restored") in u for u in rollback["facts"]["undone"])
    assert [(r[1], r[2]) for r in rest] == [("rollback", "succeeded")]
    report = report_md(tmp_path)
    assert "Outcome: **rolled_back**" in report and f"phase {phase} failed" in report
    assert "Automatic rollback" in report
    assert any("2.0.0 rolled back" in p and "automatic: True" in p for p in posts), posts


def migrate_under_traffic(stack, variables: dict, tmp_path: Path, paths=("/health", "/predictions/1")):
    """migrate.yml while 3 clients loop through nginx: (its result, its folded output, the loop)."""
    with Traffic(stack.url, list(paths), threads=3, requests=200_000, min_requests=300) as loop:
        res = run_playbook("migrate.yml", tmp_path, variables, timeout=2400)
    return res, text(res), loop


def live_blue(variables: dict, tmp_path: Path) -> None:
    """Release 1.0.0 live on blue behind nginx (playbooks/app_release.yml)."""
    live = run_playbook("playbooks/app_release.yml", tmp_path,
                        {**variables, "blue_green_release_version": "1.0.0", "blue_green_expect_revision": ""})
    assert live.rc == 0, live.output[-4000:]


def live_blue_and_configured_green(stack, variables: dict, tmp_path: Path) -> tuple[dict, dict]:
    """Release 1.0.0 live on blue behind nginx, and on green the configuration an earlier deploy left there
    (1.0.1, refused by its health check: it waited for a revision that never comes). The migration deploys
    into green, replacing that configuration, so the rollback has a previous configuration to put back.
    Returns both colours' configuration directories and their digests."""
    live_blue(variables, tmp_path)
    earlier = run_playbook("playbooks/app_release.yml", tmp_path,
                           {**variables, "blue_green_release_version": "1.0.1", "blue_green_expect_revision": "v9_9_9",
                            "blue_green_health_retries": 1})
    assert earlier.rc != 0 and "the health check of green" in text(earlier), earlier.output[-4000:]
    configs = {c: stack.deploy / "colours" / c / "config" for c in ("blue", "green")}
    digests = {c: config_digest(d) for c, d in configs.items()}
    assert set(digests["green"]) == {".env", "config/app_config.json"}, digests
    assert "APP_RELEASE=1.0.1" in (configs["green"] / ".env").read_text()
    return configs, digests


def blue_serves_1_0_0_again(stack, configs: dict, digests: dict) -> None:
    """After a rollback of a deploy: 1.0.0 serves from blue alone at v1_0_0, green is stopped and both colours'
    configuration files are byte for byte what they were (green's put back from the deploy's backup)."""
    assert stack.health() == {"status": "ok", "version": "1.0.0", "colour": "blue", "db_revision": "v1_0_0"}
    assert [m["name"] for m in stack.upstream()["members"]] == ["blue"]
    assert stack.programs()["app-green"][0] != "RUNNING"
    assert {c: config_digest(d) for c, d in configs.items()} == digests


# How green's 2.0.0 is broken from outside the production code; the paths the request loop asks through nginx;
# what the failed deploy says.
DEPLOY_FAULTS = {
    # It exits at start: the deploy stops before the switch, and no request ever reaches green.
    "start": (install_broken_release, ["/health", "/predictions/1"],
              ["the start of green failed", "broken test release: refusing to start"]),
    # Its /health fails through nginx only: the health check and the smoke requests (direct) pass, traffic is
    # switched, then the check through the proxy fails. The loop asks for predictions, which it serves.
    "proxy": (install_proxy_failing_release, ["/predictions/1", "/predictions/2"],
              ["failed at 'Check through nginx the answer of green'", "HTTP Error 503"]),
}


@pytest.mark.parametrize("fault", list(DEPLOY_FAULTS))
def test_failed_deploy_is_rolled_back_with_the_old_release_serving_throughout(pg, reference_db, tmp_path, fault):
    """Release 1.0.0 live behind nginx on blue; migrate.yml's 2.0.0 (a test-only broken release) fails the
    deploy phase after the schema change and the backfill: at its start (before the switch), or at the check
    through nginx after traffic was switched. The automatic rollback switches traffic back to blue when the
    switch had begun, puts green's previous configuration back, and restores the database (the backfill
    changed rows) with 1.0.0 connected, whose sessions the reference plan lets the restore terminate; a
    request loop through nginx across all of it: zero failed requests, 1.0.0 on blue before and after, both
    colours' configuration byte for byte."""
    install_fault, paths, messages = DEPLOY_FAULTS[fault]
    releases = build_releases(tmp_path / "releases", ("1.0.0", "1.0.1", "2.0.0"))
    stack = new_stack(tmp_path / "deploy", releases)
    try:
        variables = {**rb_vars(pg, reference_db, tmp_path), **stack.variables(pg, reference_db)}
        configs, digests = live_blue_and_configured_green(stack, variables, tmp_path)
        before = checksums(pg, reference_db)
        install_fault(releases / "football_prediction_api-2.0.0-py3-none-any.whl",
                      stack.deploy / "colours" / "green" / "releases" / "2.0.0")
        res, out, loop = migrate_under_traffic(stack, variables, tmp_path, paths)
        assert res.rc != 0 and "The deploy phase failed at" in out, out[-4000:]
        assert all(m in out for m in messages), (messages, out[-4000:])
        assert "rolling back automatically" in out and "Rollback: rolled back automatically:" in out
        assert loop.failures == [], loop.failures[:5]
        if fault == "start":
            assert {a.version for a in loop.answers} == {"1.0.0"} and {a.colour for a in loop.answers} == {"blue"}
        else:  # switched to green, which served predictions, then back to blue, each change seen once
            for client in range(3):
                assert loop.version_changes(client) == ["1.0.0", "2.0.0", "1.0.0"], (client,
                                                                                     loop.version_changes(client))
        blue_serves_1_0_0_again(stack, configs, digests)
    finally:
        stack.stop()
    assert checksums(pg, reference_db) == before
    assert revision(pg, reference_db) == "v1_0_0"
    (run_id, _, status, phases, error), *rest = runs(pg, reference_db)
    assert status == "rolled_back" and phases["deploy"]["status"] == "failed" and "deploy phase failed" in error
    deploy = phases["deploy"]["facts"]
    # Recorded before the switch, kept beside what failed.
    assert (deploy["colour_from"], deploy["colour_to"], deploy["version_from"]) == ("blue", "green", "1.0.0")
    assert deploy["config_backup"] and deploy["task"]
    assert f"Run #{run_id} (2.0.0) is rolled back automatically" in out
    rollback = phases["rollback"]
    undone = rollback["facts"]["undone"]
    assert rollback["status"] == "succeeded" and rollback["facts"]["strategy"] == "restore"
    assert any("restored" in u for u in undone), undone
    assert any(f"previous configuration restored from {deploy['config_backup']}" in u for u in undone), undone
    if fault == "start":
        assert "broken test release" in deploy["error"] and "switch_started_at" not in deploy
        assert not any("traffic back" in u for u in undone), undone
        assert any("before its switch began: blue kept the traffic" in n for n in rollback["facts"]["notes"])
    else:
        assert deploy["task"] == "Check through nginx the answer of green" and deploy["switch_started_at"]
        assert any("traffic back to blue (1.0.0), green stopped" in u for u in undone), undone
    assert [(r[1], r[2]) for r in rest] == [("rollback", "succeeded")]
    assert lock_rows(pg, reference_db) == 0


def test_failed_validation_after_the_switch_sends_traffic_back_with_no_failed_request(pg, reference_db, tmp_path):
    """Release 1.0.0 live behind nginx on blue, green holding an earlier deploy's configuration; migrate.yml
    migrates the schema, backfills, deploys the real 2.0.0 on green and switches to it, then a check of the
    validate phase (a test-only plan) fails. The automatic rollback sends traffic back to blue by one rename
    of nginx's live socket, puts green's previous configuration back from the deploy's backup, restores the
    database and stops green; a request loop through nginx across all of it: zero failed requests, each
    client sees 1.0.0, 2.0.0, then 1.0.0 again, and both colours' configuration is byte for byte."""
    releases = build_releases(tmp_path / "releases", ("1.0.0", "1.0.1", "2.0.0"))
    stack = new_stack(tmp_path / "deploy", releases)
    plans = write_plan(tmp_path, failing_validation)
    try:
        variables = {**rb_vars(pg, reference_db, tmp_path, plans), **stack.variables(pg, reference_db)}
        configs, digests = live_blue_and_configured_green(stack, variables, tmp_path)
        before = checksums(pg, reference_db)
        res, out, loop = migrate_under_traffic(stack, variables, tmp_path)
        assert res.rc != 0 and "The validate phase failed at" in out and "rollback_test_fails" in out, out[-4000:]
        assert "to green (2.0.0)" in out  # the switch happened before the validation failed
        assert "rolling back automatically" in out and "Rollback: rolled back automatically:" in out
        assert loop.failures == [], loop.failures[:5]
        # 1.0.0 first, 2.0.0 once switched, 1.0.0 at the end: each switch renames nginx's live socket, so
        # every client sees each change once and never flaps back.
        for client in range(3):
            assert loop.version_changes(client) == ["1.0.0", "2.0.0", "1.0.0"], (client, loop.version_changes(client))
        blue_serves_1_0_0_again(stack, configs, digests)
    finally:
        stack.stop()
    assert checksums(pg, reference_db) == before
    assert revision(pg, reference_db) == "v1_0_0"
    (run_id, _, status, phases, error), *rest = runs(pg, reference_db)
    assert status == "rolled_back" and "validate phase failed" in error
    assert phases["deploy"]["status"] == "succeeded" and phases["validate"]["status"] == "failed"
    deploy = phases["deploy"]["facts"]
    assert (deploy["colour_from"], deploy["colour_to"]) == ("blue", "green") and deploy["config_backup"]
    undone = phases["rollback"]["facts"]["undone"]
    assert phases["rollback"]["status"] == "succeeded" and phases["rollback"]["facts"]["strategy"] == "restore"
    assert any("traffic back to blue" in u for u in undone) and any("restored" in u for u in undone), undone
    assert any(f"previous configuration restored from {deploy['config_backup']}" in u for u in undone), undone
    assert [(r[1], r[2]) for r in rest] == [("rollback", "succeeded")]
    assert f"Run #{run_id} (2.0.0) is rolled back automatically" in out
    assert lock_rows(pg, reference_db) == 0


def test_failed_schema_phase_is_downgraded_with_the_old_release_serving_throughout(pg, reference_db, tmp_path):
    """Release 1.0.0 live behind nginx on blue; migrate.yml's schema phase migrates to v2_0_0, then its
    expectation (a test-only plan: a column that never comes) fails. The automatic rollback downgrades the
    schema with 1.0.0 serving (its explicit column list never reads the dropped columns); a request loop
    through nginx across all of it: zero failed requests, only 1.0.0 from blue, blue's configuration byte for
    byte, the same content and revision as before."""
    releases = build_releases(tmp_path / "releases")
    stack = new_stack(tmp_path / "deploy", releases)
    plans = write_plan(tmp_path, schema_expects_a_missing_column)
    try:
        variables = {**rb_vars(pg, reference_db, tmp_path, plans), **stack.variables(pg, reference_db)}
        live_blue(variables, tmp_path)
        blue_config = stack.deploy / "colours" / "blue" / "config"
        config_before = config_digest(blue_config)
        programs_before = stack.programs()
        before = checksums(pg, reference_db)
        res, out, loop = migrate_under_traffic(stack, variables, tmp_path)
        assert res.rc != 0 and "The schema phase failed at" in out and "no_such_column" in out, out[-4000:]
        assert "rolling back automatically" in out and "Rollback: rolled back automatically:" in out
        assert loop.failures == [], loop.failures[:5]
        assert {a.version for a in loop.answers} == {"1.0.0"} and {a.colour for a in loop.answers} == {"blue"}
        assert stack.health() == {"status": "ok", "version": "1.0.0", "colour": "blue", "db_revision": "v1_0_0"}
        assert config_digest(blue_config) == config_before
        assert stack.programs() == programs_before  # nothing started, stopped or restarted
    finally:
        stack.stop()
    assert checksums(pg, reference_db) == before
    assert revision(pg, reference_db) == "v1_0_0"
    (run_id, _, status, phases, error), *rest = runs(pg, reference_db)
    assert status == "rolled_back" and phases["schema"]["status"] == "failed" and "schema phase failed" in error
    assert f"Run #{run_id} (2.0.0) is rolled back automatically" in out
    rollback = phases["rollback"]
    assert rollback["status"] == "succeeded" and rollback["facts"]["strategy"] == "downgrade"
    assert any("downgraded" in u for u in rollback["facts"]["undone"]), rollback["facts"]["undone"]
    assert [(r[1], r[2]) for r in rest] == [("rollback", "succeeded")]
    assert lock_rows(pg, reference_db) == 0


# ---------------------------------------------------------------------------------------------
# 5. kill -9 of ansible-playbook in the data phase, then rollback.yml
# ---------------------------------------------------------------------------------------------
def slow_backfill(plan: dict) -> None:
    plan["backfills"][0].update(batch_size=100, min_batch_size=100, max_batch_size=100, pause_ms=300)


def test_rollback_after_kill_9_in_the_data_phase(pg, reference_db, tmp_path):
    before = checksums(pg, reference_db)
    plans = write_plan(tmp_path, slow_backfill)
    variables = rb_vars(pg, reference_db, tmp_path, plans)
    proc, _log = start_playbook(tmp_path, "migrate.yml", variables)
    try:
        wait_for_batches(pg, reference_db, PLAN["backfills"][0]["name"], 3, timeout=900)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # ansible-playbook and everything in its group
        proc.wait()
    killed = query(pg, reference_db, "SELECT run_id FROM migration_ops.lock")[0][0]
    assert revision(pg, reference_db) == "v2_0_0"
    assert query(pg, reference_db, "SELECT count(*) FROM predictions WHERE feature_importance IS NOT NULL")[0][0] > 0

    # While the orphaned backfill still works, the run is live and the rollback refuses; it stops by
    # itself at a batch boundary, then the rollback takes the dead run's lock over and undoes it.
    deadline = time.monotonic() + 300
    while True:
        res = run_playbook("rollback.yml", tmp_path, variables)
        if res.rc == 0 or "is still live" not in text(res) or time.monotonic() > deadline:
            break
    assert res.rc == 0, res.output[-4000:]
    assert f"Run #{killed} (2.0.0) is rolled back" in text(res)
    assert checksums(pg, reference_db) == before
    rows = runs(pg, reference_db)
    assert rows[0][2] == "rolled_back" and rows[0][3]["rollback"]["facts"]["strategy"] == "restore"
    assert "lock broken" in rows[0][4]  # the dead run's lock was taken over, and said so
    assert lock_rows(pg, reference_db) == 0


def test_migrate_after_kill_9_in_the_data_phase_resumes(pg, reference_db, tmp_path):
    """The same kill as above, followed by a new migrate.yml instead of rollback.yml: refused while the orphaned
    backfill still works, then it takes the dead run's lock over (-e break_lock=true) and resumes the backfill
    from its checkpoint: the rows the killed run committed are not done again, every row is done."""
    plans = write_plan(tmp_path, slow_backfill)
    variables = rb_vars(pg, reference_db, tmp_path, plans)
    name = PLAN["backfills"][0]["name"]
    proc, _log = start_playbook(tmp_path, "migrate.yml", variables)
    try:
        wait_for_batches(pg, reference_db, name, 3, timeout=900)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # ansible-playbook and everything in its group
        proc.wait()
    killed = query(pg, reference_db, "SELECT run_id FROM migration_ops.lock")[0][0]
    deadline = time.monotonic() + 300
    while True:
        res = run_playbook("migrate.yml", tmp_path, {**variables, "break_lock": True})
        if res.rc == 0 or "is still live" not in text(res) or time.monotonic() > deadline:
            break
    assert res.rc == 0, res.output[-4000:]
    assert revision(pg, reference_db) == "v2_0_0"
    assert query(pg, reference_db, "SELECT count(*) FROM predictions WHERE feature_importance IS NULL")[0][0] == 0
    rows = runs(pg, reference_db)
    (killed_id, _, killed_status, _, killed_error), (resumed_id, _, status, phases, _) = rows
    assert killed_id == killed and killed_status == "failed" and "lock broken" in (killed_error or "")
    assert status == "succeeded" and resumed_id != killed
    total = query(pg, reference_db, "SELECT count(*) FROM predictions")[0][0]
    assert 0 < phases["data"]["facts"]["rows_updated"] < total  # resumed, not started over
    assert lock_rows(pg, reference_db) == 0


def test_automatic_rollback_refused_is_recorded_and_said(pg, reference_db, tmp_path):
    """No backup (the plan turns it off) and a backfill that changed rows: the restore the policy asks for is
    refused before anything changes, and the refusal is in the output, the ledger and the report."""
    def no_backup(plan: dict) -> None:
        failing_validation(plan)
        plan["backup"]["enabled"] = False

    plans = write_plan(tmp_path, no_backup)
    res = run_playbook("migrate.yml", tmp_path, rb_vars(pg, reference_db, tmp_path, plans))
    out = text(res)
    assert res.rc != 0 and "rollback_test_fails" in out, out[-3000:]
    assert "Rollback: THE AUTOMATIC ROLLBACK FAILED: rollback refused: a restore is needed" in out
    assert "run #1 recorded no backup" in out and "To return to where it started: ansible-playbook rollback.yml" in out
    assert revision(pg, reference_db) == "v2_0_0"  # refused: nothing was changed
    (_, _, status, phases, _), = runs(pg, reference_db)
    assert status == "rollback_failed" and phases["rollback"]["status"] == "failed"
    assert "recorded no backup" in phases["rollback"]["facts"]["error"]
    assert lock_rows(pg, reference_db) == 0
    report = report_md(tmp_path)
    assert "Outcome: **rollback_failed**" in report and "recorded no backup" in report
