"""The schema_migrate role (the schema phase of migrate.yml), its rollback entry point and the
up/down cycle playbook, against a real PostgreSQL through real ansible-playbook runs."""
from __future__ import annotations

import json
import subprocess
import uuid

import yaml
from conftest import ROOT, VENV_BIN, run_playbook
from test_alembic_migrate import catalog, data_digest, query, revision

FIXTURES = ROOT / "tests" / "fixtures"


def runs(pg, db):
    return query(pg, db, "SELECT id, status, from_revision, to_revision, phases -> 'schema' "
                         "FROM migration_ops.runs ORDER BY id")


def test_schema_phase_migrates_records_and_rolls_back(pg, reference_db, tmp_path):
    db = reference_db
    v = {**pg.conn_vars(db), "version": "2.0.0"}
    before_catalog, before_data = catalog(pg, db), data_digest(pg, db)

    check = run_playbook("playbooks/schema.yml", tmp_path, v, "--check", "--diff")
    assert check.rc == 0, check.output[-3000:]
    assert "ALTER TABLE predictions ADD COLUMN model_accuracy" in check.output
    assert revision(pg, db) == "v1_0_0" and catalog(pg, db) == before_catalog

    first = run_playbook("playbooks/schema.yml", tmp_path, v)
    assert first.rc == 0, first.output[-3000:]
    assert "ok      column predictions.model_accuracy" in first.output
    assert revision(pg, db) == "v2_0_0"
    run_id, status, from_rev, to_rev, phase = runs(pg, db)[-1]
    assert (status, from_rev, to_rev) == ("succeeded", "v1_0_0", "v2_0_0")
    assert phase["status"] == "succeeded" and phase["facts"]["revisions_applied"] == ["v2_0_0"]
    assert phase["facts"]["schema_verified"] is True and phase["facts"]["attempts"] == 1

    second = run_playbook("playbooks/schema.yml", tmp_path, v)
    assert second.rc == 0, second.output[-3000:]
    assert runs(pg, db)[-1][4]["facts"]["revisions_applied"] == []
    assert "already at v2_0_0" in second.output

    out = tmp_path / "rollback.json"
    back = run_playbook(FIXTURES / "playbooks" / "schema_rollback.yml", tmp_path,
                        {**v, "run_id": run_id, "result_file": str(out)})
    assert back.rc == 0, back.output[-3000:]
    result = json.loads(out.read_text())
    assert result["to_revision"] == "v1_0_0" and result["revisions_undone"] == ["v2_0_0"]
    assert revision(pg, db) == "v1_0_0"
    assert catalog(pg, db) == before_catalog and data_digest(pg, db) == before_data


def test_schema_verification_reports_what_is_missing(pg, reference_db, tmp_path):
    expect = {"columns": [{"table": "predictions", "column": "model_accuracy", "type": "double precision",
                           "nullable": True},
                          {"table": "predictions", "column": "model_accuracy_v3", "type": "real"},
                          {"table": "predictions", "column": "model_version", "nullable": True}],
              "indexes": [{"table": "predictions", "name": "idx_predictions_model_accuracy"},
                          {"table": "predictions", "name": "idx_predictions_nope"}],
              "constraints": [{"table": "predictions", "name": "ck_predictions_predicted_result", "type": "check"},
                              {"table": "predictions", "name": "fk_predictions_match_id", "type": "unique"}]}
    res = run_playbook("playbooks/schema.yml", tmp_path,
                       {**pg.conn_vars(reference_db), "version": "2.0.0", "schema_migrate_expect": expect})
    assert res.rc != 0
    out = " ".join(res.output.split())
    assert "Schema verification failed, 4 of 7 expectations not met" in out
    assert "MISSING column predictions.model_accuracy_v3 (expected real; found nothing)" in out
    assert "MISSING column predictions.model_version (expected NULL; found text NOT NULL)" in out
    assert "MISSING index predictions.idx_predictions_nope" in out
    assert "MISSING constraint predictions.fk_predictions_match_id (expected unique validated; found FOREIGN KEY" in out
    assert "ok column predictions.model_accuracy" in out
    assert runs(pg, reference_db)[-1][1] == "failed"


def test_cycle_passes_on_the_reference_app_and_leaves_the_target_alone(pg, reference_db, tmp_path):
    """A cycle-only plan: the schema section the cycle reads (a relative alembic_dir, the revision) and the plan's
    header, no backup, backfills, validation, release, rollback, downtime or contacts."""
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "2.0.0.yml").write_text(yaml.safe_dump({
        "plan_format": 1, "version": "2.0.0", "from_version": "1.0.0", "type": "schema", "title": "Cycle test only",
        "schema": {"tool": "alembic", "alembic_dir": "examples/football_prediction", "revision": "v2_0_0"}}))
    before = catalog(pg, reference_db)
    res = run_playbook("playbooks/schema_cycle.yml", tmp_path, {**pg.conn_vars(reference_db), "version": "2.0.0",
                                                                "pgmigrate_plan_dir": str(plans)})
    assert res.rc == 0, res.output[-3000:]
    for line in ("1. upgrade +1: base -> v1_0_0 ok", "2. downgrade -1: v1_0_0 -> base ok",
                 "3. upgrade head: base -> v2_0_0 ok", "4. downgrade base: v2_0_0 -> base ok",
                 "5. upgrade head again: base -> v2_0_0 ok"):
        assert line in res.output
    assert revision(pg, reference_db) == "v1_0_0" and catalog(pg, reference_db) == before
    assert query(pg, reference_db, "SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                 ("%schema_cycle",)) == [(0,)]


def test_cycle_refuses_the_target_database(pg, reference_db, tmp_path):
    res = run_playbook("playbooks/schema_cycle.yml", tmp_path, {**pg.conn_vars(reference_db), "version": "2.0.0",
                                                                "schema_migrate_cycle_db": reference_db})
    assert res.rc != 0 and "needs a scratch database other than the target" in res.output
    assert revision(pg, reference_db) == "v1_0_0"


def test_cycle_catches_a_broken_downgrade(pg, reference_db, tmp_path):
    fixture = str(FIXTURES / "alembic_broken_downgrade")
    empty = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                         {**pg.conn_vars(reference_db), "schema_migrate_alembic_dir": fixture})
    assert empty.rc != 0
    out = " ".join(empty.output.split())
    assert "The up/down cycle test failed at step 4. downgrade base: FAILED" in out
    assert "cannot drop table widgets" in out and "3. upgrade head: base -> w2 ok" in out

    # From a backup at w1: the downgrade of w2 'succeeds' but leaves things behind; the catalog shows it.
    seed_db = pg.create_database()
    env = pg.env(seed_db)
    subprocess.run([str(VENV_BIN / "alembic"), "-c", f"{fixture}/alembic.ini", "upgrade", "w1"], env=env,
                   check=True, capture_output=True, cwd=ROOT)
    dump = tmp_path / "w1.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump)], env=env, check=True)
    restored = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                            {**pg.conn_vars(reference_db), "schema_migrate_alembic_dir": fixture,
                             "schema_migrate_cycle_backup": str(dump)})
    assert restored.rc != 0
    out = " ".join(restored.output.split())
    assert "1. upgrade +1: w1 -> w2 ok" in out
    assert "2. downgrade -1: FAILED: the catalog at w1 differs from the one seen before at that revision" in out
    assert "left behind: column public.widget_tags.tag: text NOT NULL" in out  # sorted: a stable report
    assert "column public.widgets.colour: text" in out
    assert "constraint public.widget_tags.widget_tags_widget_id_fkey" in out
    pg.drop_database(seed_db)


APP_SETTINGS = FIXTURES / "alembic_app_settings"


def cycle_target(pg, revision_id: str | None) -> str:
    """A target with an application table of its own, at ``revision_id`` of the app-settings fixture."""
    db = pg.create_database()
    conn = pg.connect(db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
    conn.close()
    if revision_id:
        subprocess.run([str(VENV_BIN / "alembic"), "-c", str(APP_SETTINGS / "alembic.ini"), "upgrade", revision_id],
                       env=pg.env(db), check=True, capture_output=True, cwd=ROOT)
    return db


def target_state(pg, db):
    has_version = query(pg, db, "SELECT to_regclass('alembic_version') IS NOT NULL")[0][0]
    return (revision(pg, db) if has_version else None), catalog(pg, db)


def test_cycle_stops_when_env_py_would_migrate_the_target(pg, tmp_path):
    """env.py builds its URL from the application's settings (APP_DB_NAME = the target): the cycle test
    given the scratch database must not migrate the target; it stops at the first step, saying why."""
    target = cycle_target(pg, None)
    before = target_state(pg, target)
    res = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                       {**pg.conn_vars(target), "schema_migrate_alembic_dir": str(APP_SETTINGS)},
                       env={"APP_DB_NAME": target})
    assert res.rc != 0
    out = " ".join(res.output.split())
    assert f"env.py connects elsewhere: to database {target} on 127.0.0.1:{pg.port}, not to login_db " \
           f"{target}_schema_cycle" in out
    assert "The up/down cycle test failed at step 1. upgrade +1: FAILED" in out and "2. downgrade -1" not in out
    assert target_state(pg, target) == before  # revision still none, catalog untouched
    assert query(pg, target, "SELECT count(*) FROM pg_database WHERE datname = %s",
                 (f"{target}_schema_cycle",)) == [(0,)]
    pg.drop_database(target)


def test_cycle_stops_at_once_when_the_target_moves(pg, tmp_path):
    """env.py migrates the scratch database it is given, but also writes to the application's database (the
    target) outside SQLAlchemy: the target's catalog moves during step 1, and the test stops right there."""
    target = cycle_target(pg, "g1")
    before = target_state(pg, target)
    res = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                       {**pg.conn_vars(target), "schema_migrate_alembic_dir": str(APP_SETTINGS)},
                       env={"APP_AUDIT_DB_NAME": target})
    assert res.rc != 0
    out = " ".join(res.output.split())
    assert (f"The cycle test changed the TARGET database {target} during step 1 (upgrade +1), although it was "
            f"given only the scratch database {target}_schema_cycle: the target's revision is still g1; the "
            "target's catalog moved: new: column public.migration_audit.at: timestamp with time zone "
            "DEFAULT now(), column public.migration_audit.note: text;") in out
    assert "Stopped at once: no further step ran" in out and "env.py" in out
    assert "Run the step 'downgrade -1'" not in out
    rev, cat = target_state(pg, target)
    assert rev == before[0] == "g1"
    assert set(cat) - set(before[1]) == {("col", "migration_audit.at timestamp with time zone YES"),
                                         ("col", "migration_audit.note text YES")}
    assert query(pg, target, "SELECT count(*) FROM migration_audit") == [(1,)]  # one step ran, not five
    assert query(pg, target, "SELECT count(*) FROM pg_database WHERE datname = %s",
                 (f"{target}_schema_cycle",)) == [(0,)]
    pg.drop_database(target)


def test_cycle_runs_when_the_target_does_not_exist_yet(pg, tmp_path):
    """The target guard reads the target only when it exists: a cycle test before the first install works."""
    absent = f"t_absent_{uuid.uuid4().hex[:8]}"
    res = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                       {**pg.conn_vars(absent), "schema_migrate_alembic_dir": str(APP_SETTINGS)})
    assert res.rc == 0, res.output[-3000:]
    assert "5. upgrade head again: base -> g2 ok" in res.output
    assert query(pg, "pgmigrate_test", "SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                 (f"{absent}%",)) == [(0,)]
