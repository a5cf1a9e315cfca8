"""migrate.yml end to end on the reference database: real ansible-playbook, real PostgreSQL."""
from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import yaml
from conftest import ROOT, VENV_BIN, ansible_env, run_playbook, write_vars
from deploy_helpers import build_releases, new_stack
from psycopg2 import sql
from traffic import Traffic
from validate_helpers import database_state, query

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())


def flow_vars(pg, db: str, tmp_path: Path, **extra) -> dict:
    """Point the local inventory at a test database; every file the run writes goes under tmp_path.
    No application URL unless a test starts the API for its own database."""
    state = tmp_path / "state"
    return {**pg.conn_vars(db), "pgmigrate_state_dir": str(state), "pgmigrate_report_dir": str(tmp_path / "reports"),
            "pgmigrate_docs_dir": str(tmp_path / "docs"), "pgmigrate_log_dir": str(state / "logs"),
            "pgmigrate_app_url": "", "pgmigrate_db_sslmode": "disable", "version": "2.0.0", **extra}


def snapshot(pg, db: str) -> dict:
    """Catalog, data checksums and ledger of a database, to prove nothing changed."""
    conn = pg.connect(db)
    out = {}
    with conn.cursor() as cur:
        cur.execute("SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2")
        out["relations"] = cur.fetchall()
        cur.execute("SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3")
        out["columns"] = cur.fetchall()
        for table in ("teams", "matches", "predictions", "alembic_version"):
            cur.execute(sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {} t")
                        .format(sql.Identifier(table)))
            out[table] = cur.fetchone()[0]
        cur.execute("SELECT to_regclass('migration_ops.runs') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("SELECT md5(string_agg(r::text, '|' ORDER BY r.id)) FROM migration_ops.runs r")
            out["runs"] = cur.fetchone()[0]
            cur.execute("SELECT md5(coalesce(string_agg(l::text, '|'), '')) FROM migration_ops.lock l")
            out["lock"] = cur.fetchone()[0]
    conn.close()
    return out


def files_digest(path: Path) -> dict:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_unknown_version_fails_before_touching_the_database(pg, reference_db, tmp_path):
    before = snapshot(pg, reference_db)
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, version="9.9.9"))
    assert res.rc != 0
    assert "no migration plan for version 9.9.9" in res.output
    assert "Plans exist for: 2.0.0" in res.output
    assert snapshot(pg, reference_db) == before
    assert "migration_ops" not in str(before)


def test_malformed_plan_names_the_bad_field(pg, reference_db, tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir()
    text = (ROOT / "migrations" / "2.0.0.yml").read_text()
    (plans / "2.0.0.yml").write_text(text.replace("batch_size: 10000", "batch_size: lots")
                                     .replace("strategy: blue_green", "strategy: big_bang"))
    before = snapshot(pg, reference_db)
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, pgmigrate_plan_dir=str(plans)))
    assert res.rc != 0
    assert "backfills[0].batch_size: expected int" in res.output
    assert "release.strategy: 'big_bang' is not one of" in res.output
    assert snapshot(pg, reference_db) == before

    (plans / "2.0.0.yml").write_text("version: [unclosed\n")
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, pgmigrate_plan_dir=str(plans)))
    assert res.rc != 0 and "is not valid YAML" in res.output
    assert snapshot(pg, reference_db) == before


def test_plan_sql_escaping_its_transaction_is_refused_at_plan_load(pg, reference_db, tmp_path):
    """The plan phase's preflight used to send the backfill filter as '... WHERE true; COMMIT;
    CREATE TABLE ...': the COMMIT ended the READ ONLY transaction and the rest committed, under
    --check too, before the lock and the backup. Now the plan does not load."""
    plans = tmp_path / "plans"
    plans.mkdir()
    text = (ROOT / "migrations" / "2.0.0.yml").read_text()
    hostile = "true; COMMIT; CREATE TABLE pwned_by_plan_phase (x int); SELECT 1"
    (plans / "2.0.0.yml").write_text(text.replace(
        "where: feature_importance IS NULL OR (model_accuracy IS NULL AND actual_result IS NOT NULL)",
        f"where: '{hostile}'"))
    before = database_state(pg, reference_db)
    for args in (["--check"], []):
        res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path,
                                                              pgmigrate_plan_dir=str(plans)), *args)
        assert database_state(pg, reference_db) == before
        assert res.rc != 0
        output = " ".join(res.output.split())  # the YAML callback folds long messages
        assert "backfills[0].where: it holds 3 " in output and "statement separators" in output
        assert "CREATE TABLE pwned_by_plan_phase (x int); SELECT 1" in output
    assert "migration_ops" not in str(before)


def test_check_mode_changes_nothing(pg, reference_db, tmp_path):
    before = snapshot(pg, reference_db)
    state = tmp_path / "state"
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path), "--check")
    assert res.rc == 0, res.output[-3000:]
    assert "would create schema migration_ops" in res.output
    assert "Check mode: no run was opened" in res.output
    assert snapshot(pg, reference_db) == before
    assert files_digest(state) == {}
    assert not (tmp_path / "reports").exists()


def test_second_run_is_refused_while_the_first_holds_the_lock(pg, reference_db, tmp_path):
    variables = flow_vars(pg, reference_db, tmp_path, hold_ready_file=str(tmp_path / "ready"),
                          hold_release_file=str(tmp_path / "release"))
    holder = subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), str(ROOT / "tests/playbooks/hold_lock.yml"),
         "-i", str(ROOT / "inventories/local"), "-e", "@" + str(write_vars(tmp_path, variables))],
        cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            if (tmp_path / "ready").exists() or holder.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "ready").exists(), holder.stdout.read() if holder.poll() is not None else "holder stuck"
        second = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path))
        assert second.rc != 0
        assert "is locked by run #1" in second.output and "a second migration is refused" in second.output
        # Even break_lock does not take a live run's lock.
        forced = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, break_lock=True))
        assert forced.rc != 0 and "is locked by run #1" in forced.output
    finally:
        (tmp_path / "release").touch()
        out, _ = holder.communicate(timeout=120)
    assert holder.returncode == 0, out[-3000:]
    conn = pg.connect(reference_db)
    with conn.cursor() as cur:
        cur.execute("SELECT id, status FROM migration_ops.runs ORDER BY id")
        assert cur.fetchall() == [(1, "succeeded")]
        cur.execute("SELECT count(*) FROM migration_ops.lock")
        assert cur.fetchone()[0] == 0
    conn.close()


def test_full_run_records_success_and_reruns_safely(pg, reference_db, tmp_path):
    """The whole runbook with release 1.0.0 live behind nginx and a request loop through it:
    zero failed requests, 2.0.0 live on green after it, the deploy facts in the ledger."""
    stack = new_stack(tmp_path / "deploy", build_releases(tmp_path / "releases"))
    try:
        variables = flow_vars(pg, reference_db, tmp_path, validate_perf_requests=40,
                              **stack.variables(pg, reference_db), pgmigrate_report_dir=str(tmp_path / "reports"))
        variables["pgmigrate_state_dir"] = str(stack.state)
        live = run_playbook("playbooks/app_release.yml", tmp_path,
                            {**variables, "blue_green_release_version": "1.0.0", "blue_green_expect_revision": ""})
        assert live.rc == 0, live.output[-4000:]
        with Traffic(stack.url, ["/health", "/predictions/1"], threads=3, requests=200_000,
                     min_requests=300) as loop:
            first = run_playbook("migrate.yml", tmp_path, variables, timeout=2400)
        assert first.rc == 0, first.output[-4000:]
        assert loop.failures == [], loop.failures[:5]
        assert loop.version_changes()[0] == "1.0.0" and loop.version_changes()[-1] == "2.0.0"
        for client in range(3):
            assert len(loop.version_changes(client)) <= 2
        assert stack.health()["version"] == "2.0.0" and stack.health()["colour"] == "green"
        second = run_playbook("migrate.yml", tmp_path, variables, timeout=2400)
        assert second.rc == 0, second.output[-4000:]
    finally:
        stack.stop()
    rows = query(pg, reference_db, "SELECT status, from_revision, to_revision, backup_verified, phases "
                                   "FROM migration_ops.runs ORDER BY id")
    # The rerun found the plan applied (v2_0_0, no row left to backfill), so it took no backup.
    assert [r[:4] for r in rows] == [("succeeded", "v1_0_0", "v2_0_0", True), ("succeeded", "v2_0_0", "v2_0_0", None)]
    first_phases, second_phases = rows[0][4], rows[1][4]
    assert second_phases["backup"]["status"] == "skipped"
    assert "nothing to change" in second_phases["backup"]["facts"]["reason"]
    assert first_phases["schema"]["status"] == "succeeded" and first_phases["data"]["status"] == "succeeded"
    assert first_phases["plan"]["facts"]["baseline"]["counts"]["predictions"] == 3000
    deploy = first_phases["deploy"]
    assert deploy["status"] == "succeeded"
    assert {k: deploy["facts"][k] for k in ("strategy", "runtime", "colour_from", "colour_to", "version_from",
                                            "version_to", "config_backup", "instances")} == {
        "strategy": "blue_green", "runtime": "process", "colour_from": "blue", "colour_to": "green",
        "version_from": "1.0.0", "version_to": "2.0.0", "config_backup": None, "instances": []}
    assert deploy["facts"]["switched_at"].endswith("Z")
    assert second_phases["deploy"]["facts"]["switched_at"] is None  # 2.0.0 was already live
    # The rerun found nothing left to do: same revision, no backfilled rows.
    assert second_phases["schema"]["facts"]["from_revision"] == "v2_0_0"
    assert query(pg, reference_db, "SELECT version_num FROM alembic_version") == [("v2_0_0",)]
    assert query(pg, reference_db, "SELECT count(*), count(feature_importance), "
                                   "count(*) FILTER (WHERE actual_result IS NOT NULL AND model_accuracy IS NULL) "
                                   "FROM predictions") == [(3000, 3000, 0)]
    assert query(pg, reference_db, "SELECT count(*) FROM migration_ops.lock") == [(0,)]
    assert (tmp_path / "docs" / "MIGRATION_HISTORY.md").exists()
    shutil.rmtree(tmp_path / "state", ignore_errors=True)


def alias_bomb(levels: int = 6) -> str:
    """A few hundred bytes of YAML whose aliases expand to 10**levels strings when loaded."""
    lines = ["notify:", '  l0: &l0 ["0123456789", "0123456789", "0123456789", "0123456789", "0123456789", '
                        '"0123456789", "0123456789", "0123456789", "0123456789", "0123456789"]']
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_unbounded_plans_are_refused_before_anything_changes(pg, reference_db, tmp_path):
    """A 10 MB plan used to be accepted (and echoed under -v); so would a small plan whose YAML
    aliases expand to megabytes. Both are refused at plan load, with the size and the limit,
    without echoing the plan."""
    plans = tmp_path / "plans"
    plans.mkdir()
    text = (ROOT / "migrations" / "2.0.0.yml").read_text()
    before = database_state(pg, reference_db)
    (plans / "2.0.0.yml").write_text(text + "notify:\n  padding: " + "x" * 10_000_000 + "\n")
    size = (plans / "2.0.0.yml").stat().st_size
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, pgmigrate_plan_dir=str(plans)),
                       "-v")
    assert database_state(pg, reference_db) == before
    assert res.rc != 0
    output = " ".join(res.output.split())
    assert f"is {size:,} bytes" in output, output[-3000:]
    assert "over the limit of 1,048,576 bytes" in output and "plan_max_bytes" in output
    assert len(res.output) < 100_000

    (plans / "2.0.0.yml").write_text(text + alias_bomb())
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, reference_db, tmp_path, pgmigrate_plan_dir=str(plans)),
                       "-v")
    assert database_state(pg, reference_db) == before
    assert res.rc != 0
    assert "expands to more than 1,048,576 bytes when loaded" in " ".join(res.output.split())
    assert len(res.output) < 100_000


def test_the_plan_is_not_echoed_under_verbose(pg, reference_db, tmp_path):
    """Three tasks used to print the whole plan under -v (migration_plan's result and two set_facts)."""
    plans = tmp_path / "plans"
    plans.mkdir()
    marker = "plan-text-that-must-not-be-echoed"
    text = (ROOT / "migrations" / "2.0.0.yml").read_text()
    (plans / "2.0.0.yml").write_text(text.replace("description: >-\n  Adds", f"description: >-\n  {marker} Adds", 1))
    res = run_playbook("playbooks/plan.yml", tmp_path,
                       flow_vars(pg, reference_db, tmp_path, pgmigrate_plan_dir=str(plans)), "-v")
    assert res.rc == 0, res.output[-3000:]
    assert "Run #" in res.output and "holds the migration lock" in res.output
    assert marker not in res.output



def data_only_plan(plans: Path) -> None:
    """A plan that changes data only (2.0.0 -> 2.0.1 on a database already at v2_0_0): schema.tool none, the
    reference backfill slowed to fixed batches of 100 with a 250 ms pause (about 8 s of work, several progress
    polls), one check; no release, rollback, downtime or contacts section."""
    backfill = {**PLAN["backfills"][0], "batch_size": 100, "min_batch_size": 100, "max_batch_size": 100,
                "pause_ms": 250}
    plan = {"plan_format": 1, "version": "2.0.1", "from_version": "2.0.0", "type": "data",
            "title": "Backfill the accuracy columns", "schema": {"tool": "none"}, "backfills": [backfill],
            "validation": {"checks": [c for c in PLAN["validation"]["checks"]
                                      if c["name"] == "feature_importance_filled"]}}
    plans.mkdir(exist_ok=True)
    (plans / "2.0.1.yml").write_text(yaml.safe_dump(plan, sort_keys=False))


# A progress line of the data phase: event, rows done, rows expected, percent, rate, then the ETA (or the time taken).
PROGRESS_LINE = re.compile(r"\(item=(\w+): ([\d,]+) of ~([\d,]+) rows \(([\d.]+) %\), ([\d,]+) rows/s, "
                           r"(ETA [\d.]+ s|in [\d.]+ s|ETA once the first batch has committed),")


def public_schema(pg, db: str) -> list:
    return query(pg, db, "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                         "WHERE table_schema = 'public' ORDER BY 1, 2") + \
        query(pg, db, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1") + \
        query(pg, db, "SELECT version_num FROM alembic_version")


def test_data_only_plan_runs_the_whole_flow_and_shows_its_progress(pg, v2_db, tmp_path):
    """migrate.yml with a plan that asks only for what it uses (issue #14, item 5) changes the data and
    nothing else, records the schema and deploy phases skipped; and the operator can follow it (item 6):
    a progress line every few seconds of work, the final line and the summary once each, the outcome last."""
    plans = tmp_path / "plans"
    data_only_plan(plans)
    schema_before = public_schema(pg, v2_db)
    poll_s = 1
    res = run_playbook("migrate.yml", tmp_path, flow_vars(pg, v2_db, tmp_path, version="2.0.1",
                                                          pgmigrate_plan_dir=str(plans),
                                                          data_migrate_poll_interval=poll_s))
    assert res.rc == 0, res.output[-4000:]

    # The backfill ran, the schema did not move; deploy and schema are skipped, nothing failed or rolled back.
    assert public_schema(pg, v2_db) == schema_before
    assert query(pg, v2_db, "SELECT count(*), count(feature_importance), "
                            "count(*) FILTER (WHERE actual_result IS NOT NULL AND model_accuracy IS NULL) "
                            "FROM predictions") == [(3000, 3000, 0)]
    (status, from_rev, to_rev, backup_path, verified, phases), = query(
        pg, v2_db, "SELECT status, from_revision, to_revision, backup_path, backup_verified, phases "
                   "FROM migration_ops.runs")
    assert (status, from_rev, to_rev, verified) == ("succeeded", None, None, True)
    assert {name: info["status"] for name, info in phases.items()} == {
        "plan": "succeeded", "backup": "succeeded", "schema": "skipped", "data": "succeeded", "deploy": "skipped",
        "validate": "succeeded", "report": "succeeded"}
    assert "schema.tool is none" in phases["schema"]["facts"]["reason"]
    filled = phases["data"]["facts"]["backfills"][0]
    assert filled["rows_updated"] == 3000 and filled["checkpoint"] == "done"

    out = " ".join(res.output.split())  # the YAML callback folds long lines
    assert "Rehearsal (plan) on the restored copy" in out and "schema not changed by the plan" in out
    assert "Backup verified: " in out and "counts and checksums equal the manifest" in out

    # Every progress line carries rows, percent, rate and ETA; one at least every few seconds of work, judged by
    # the progress log's own timestamps of the lines shown (not by the test's clock).
    follow = out.split("TASK [data_migrate : Follow backfill predictions_accuracy]", 1)[1].split("TASK [", 1)[0]
    shown = PROGRESS_LINE.findall(follow)
    assert len(shown) == follow.count("(item="), follow
    assert [s[0] for s in shown][-1] == "done" and [s[0] for s in shown].count("done") == 1
    assert sum(s[0] == "batch" for s in shown) >= 2, shown
    log = [json.loads(x) for x in (tmp_path / "state" / "logs" / "backfill-predictions_accuracy.jsonl")
           .read_text().splitlines()]
    log = [x for x in log if x["run_id"] == 1]
    work_s = log[-1]["elapsed_s"]
    most_s = 3 * poll_s + 3  # a poll, the async_status round trip on a loaded machine, a progress line's age
    assert work_s > most_s, "the backfill is too short to show whether lines come every few seconds"
    seen_at = []
    for event, done, total, percent, rate, eta in shown:
        if event == "starting":
            continue
        line = next(x for x in log if x["event"] == event and x["rows_done"] == int(done.replace(",", "")))
        assert (int(total.replace(",", "")), float(percent), int(rate.replace(",", ""))) == (
            line["rows_total"], round(line["progress"] * 100, 1), int(line["rate"]))
        assert eta == (f"in {line['elapsed_s']} s" if event == "done" else f"ETA {line['eta_s']} s"
                       if line["eta_s"] is not None else "ETA once the first batch has committed")
        seen_at.append(datetime.datetime.fromisoformat(line["ts"]))
    gaps = [(b - a).total_seconds() for a, b in zip(seen_at, seen_at[1:])]
    first = datetime.datetime.fromisoformat(log[0]["ts"])
    # The median gap, not the largest: one poll delayed by a loaded machine is not the product's cadence.
    assert (seen_at[0] - first).total_seconds() <= most_s and statistics.median(gaps) <= most_s, (gaps, work_s)

    # The final progress line and the summary with the measured rate, once each.
    assert out.count("done: 3,000 of ~3,000 rows (100.0 %)") == 1 and "ETA ? s" not in out
    summary = re.findall(r"backfill predictions_accuracy finished: 3000 row\(s\) updated, 3000 scanned in \d+ "
                         r"batch\(es\), ([\d.]+) s \(([\d,]+) rows/s measured\)", out)
    assert len(summary) == 1, summary
    assert summary[0][1] == f"{round(3000 / float(summary[0][0]), 1):,.0f}"
    assert float(summary[0][0]) == filled["duration_s"]

    # The run's outcome is the last thing before the recap.
    before_recap = res.stdout.split("PLAY RECAP", 1)[0]
    last_task = " ".join(before_recap.rsplit("TASK [", 1)[1].split())
    assert last_task.startswith("report : Say how the run ended]"), before_recap[-2000:]
    report, = (tmp_path / "reports" / "2.0.1").glob("migration_report_*-run1.md")
    assert re.search(r"'Migration 2\.0\.0 -> 2\.0\.1 \(run #1\): succeeded in [\d.]+ s'", last_task), last_task
    for line in ("'Schema: not changed by this plan (live: v2_0_0)'",
                 "'Data: 3,000 row(s) backfilled (predictions_accuracy)'",
                 f"'Backup: proven by a restore {backup_path}'", f"'Report: {report}'"):
        assert line in last_task, (line, last_task)
