"""migrate.yml end to end on the reference database: real ansible-playbook, real PostgreSQL."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from conftest import ROOT, VENV_BIN, ansible_env, run_playbook, write_vars
from deploy_helpers import build_releases, new_stack
from psycopg2 import sql
from traffic import Traffic
from validate_helpers import database_state, query


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
