"""The whole demo migration through ansible-runner, with a private data directory laid out as AWX lays it.

AWX copies the project into <private_data_dir>/project, writes the inventory as a script under
inventory/, the launch's extra vars (the survey's answers, the credential's injected password, its
own awx_* variables) into env/extravars, and its job settings into env/settings.  Nothing else is
given: no extra var beyond the survey's, no ANSIBLE_CONFIG, no path into the checkout.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import ansible_runner
import yaml
from conftest import ROOT, VENV_BIN, query, run_playbook

JOB_ID = 4242
AWX_USER = "dba-alice"


def survey_answers(template_name: str, **answers) -> dict:
    """The answers a launch gives: each question's default unless answered, as AWX sends them."""
    assets = yaml.safe_load((ROOT / "awx/assets.yml").read_text())
    template = next(t for t in assets["job_templates"] if t["name"] == template_name)
    out = {}
    for q in template["related"]["survey_spec"]["spec"]:
        value = answers.get(q["variable"], q.get("default"))
        if value not in (None, ""):
            out[q["variable"]] = value
    return out


def copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", ".tools", ".state", ".ansible", "reports", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", "benchmarks")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def inventory_script(path: Path, hostvars: dict) -> None:
    """An executable inventory script, as AWX writes one for the job's inventory."""
    inventory = {"all": {"children": ["pgmigrate_db", "pgmigrate_app"]},
                 "pgmigrate_db": {"hosts": ["football_db"]}, "pgmigrate_app": {"hosts": []},
                 "_meta": {"hostvars": {"football_db": hostvars}}}
    path.write_text("#!/usr/bin/env python3\nimport json\nprint(json.dumps(" + repr(inventory) + "))\n")
    path.chmod(0o700)


def test_the_demo_migration_runs_as_an_awx_job(pg, reference_db, tmp_path, monkeypatch):
    private = tmp_path / "awx_job_4242"
    copy_project(private / "project")
    (private / "inventory").mkdir()
    (private / "env").mkdir()
    persistent = tmp_path / "persistent"  # what an EE mounts: outlives the job directory
    # The AWX inventory: where the database is, and where state that outlives the job goes.
    inventory_script(private / "inventory" / "hosts", {
        "ansible_connection": "local", "ansible_python_interpreter": str(VENV_BIN / "python"),
        "pgmigrate_db_host": pg.host, "pgmigrate_db_port": pg.port, "pgmigrate_db_name": reference_db,
        "pgmigrate_db_sslmode": "disable", "pgmigrate_backup_dir": str(persistent / "backups"),
        "pgmigrate_report_dir": str(persistent / "reports"), "pgmigrate_docs_dir": str(persistent / "docs"),
        "pgmigrate_log_dir": str(persistent / "logs"), "pgmigrate_app_url": "",
    })
    extravars = {
        **survey_answers("pgmigrate migrate", version="2.0.0", batch_size=500),
        # The credential type's injector (awx/assets.yml): the login and its password as extra vars.
        "pgmigrate_db_user": pg.user, "pgmigrate_db_password": pg.password,
        # What AWX adds to every job.
        "awx_job_id": JOB_ID, "awx_user_name": AWX_USER, "awx_job_template_name": "pgmigrate migrate",
        "tower_job_id": JOB_ID, "tower_user_name": AWX_USER, "awx_job_launch_type": "manual",
    }
    (private / "env/extravars").write_text(json.dumps(extravars))
    (private / "env/extravars").chmod(0o600)
    (private / "env/settings").write_text(json.dumps({"job_timeout": 1800, "idle_timeout": 900,
                                                     "suppress_ansible_output": False}))
    # AWX sets no ANSIBLE_CONFIG: the project's own ansible.cfg must be found from the project directory
    # (the Makefile and CI export one for everything else).
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)

    result = ansible_runner.run(private_data_dir=str(private), playbook="migrate.yml", ident="job", quiet=True,
                                envvars={"PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    stdout = result.stdout.read()
    assert result.status == "successful", stdout[-4000:]
    assert result.rc == 0
    assert result.stats["failures"] == {} and result.stats["dark"] == {}
    assert result.stats["ok"].get("football_db", 0) > 0

    events = list(result.events)
    results = [e["event_data"] for e in events if e["event"] in ("runner_on_ok", "runner_item_on_ok")]

    # The backfill's rows, at the survey's batch size.
    backfills = [r["res"] for r in results if isinstance(r.get("res"), dict) and "rows_updated" in r["res"]
                 and r["res"].get("finished", 1)]
    assert backfills, "no backfill result among the job events"
    assert sum(b["rows_updated"] for b in backfills) >= 3000
    # The survey's batch size is where every backfill starts (the controller adapts it from there):
    # the first line of each backfill's progress log, in the inventory's persistent log directory.
    logs = sorted((persistent / "logs").glob("backfill-*.jsonl"))
    assert logs, "no backfill progress log in the persistent log directory"
    for log in logs:
        first = json.loads(log.read_text().splitlines()[0])
        assert (first["event"], first["batch_size"]) == ("start", 500), (log.name, first)

    # The backup, where the inventory put it (outside the job directory), and its proof.
    dumps = [r["res"] for r in results if r.get("task_action") == "pg_backup" and "backup_path" in r["res"]]
    assert dumps
    backup_path = Path(dumps[-1]["backup_path"])
    assert backup_path.parent == persistent / "backups"
    assert backup_path.exists()
    verified = [r["res"] for r in results if r.get("task_action") == "pg_backup_verify"]
    assert verified and verified[-1]["verified"] is True

    # The run: the ledger names the AWX user and the job; the events name the same run id.
    runs = query(pg, reference_db, "SELECT id, status, operator, backup_path, backup_verified, "
                                   "phases->'plan'->'facts' FROM migration_ops.runs")
    assert len(runs) == 1
    run_id, status, operator, ledger_backup, ledger_verified, plan_facts = runs[0]
    assert (status, operator, ledger_verified) == ("succeeded", AWX_USER, True)
    assert ledger_backup == str(backup_path)
    assert plan_facts["awx_job_id"] == JOB_ID and plan_facts["awx_user_name"] == AWX_USER
    assert f"Run #{run_id} holds the migration lock of {reference_db}" in stdout
    assert query(pg, reference_db, "SELECT version_num FROM alembic_version") == [("v2_0_0",)]

    # The job directory is deleted after the job: the backup and the report outlive it.
    assert (persistent / "reports" / "2.0.0").is_dir()
    # No password in anything the job left behind (stdout, events, artifacts), nor in the job directory
    # apart from env/extravars, which AWX itself writes (0600) and deletes.
    leaked = []
    for path in private.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != private / "env/extravars" \
                and pg.password in path.read_text(errors="replace"):
            leaked.append(str(path.relative_to(private)))
    assert not leaked, f"the password is in {leaked}"
    assert pg.password not in stdout
    assert stat.S_IMODE((private / "env/extravars").stat().st_mode) == 0o600


def test_the_ledger_names_the_awx_user_and_job_and_the_operator_otherwise(pg, reference_db, tmp_path):
    base = {**pg.conn_vars(reference_db), "pgmigrate_state_dir": str(tmp_path / "state"),
            "pgmigrate_backup_dir": str(tmp_path / "backups"), "pgmigrate_db_sslmode": "disable", "version": "2.0.0"}
    # Only the older tower_* names, as an older AWX sends them.
    awx = run_playbook("playbooks/plan.yml", tmp_path, {**base, "tower_job_id": 77, "tower_user_name": "bob",
                                                        "tower_job_template_name": "pgmigrate migrate"})
    assert awx.rc == 0, awx.output[-3000:]
    cli = run_playbook("playbooks/plan.yml", tmp_path, base, env={"USER": "carol"})
    assert cli.rc == 0, cli.output[-3000:]
    rows = query(pg, reference_db, "SELECT operator, phases->'plan'->'facts'->'awx_job_id', "
                                   "phases->'plan'->'facts'->>'awx_job_template_name' "
                                   "FROM migration_ops.runs ORDER BY id")
    assert rows == [("bob", 77, "pgmigrate migrate"), ("carol", None, None)]
