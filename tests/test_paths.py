"""Paths come from the playbook, never from the inventory's location; backups refuse places that do not last."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, query, run_playbook


def ledger_exists(pg, db: str) -> bool:
    return query(pg, db, "SELECT to_regclass('migration_ops.runs') IS NOT NULL")[0][0]


def job_tree(tmp_path: Path) -> Path:
    """A job directory laid out as AWX and ansible-runner do: the inventory copied under inventory/."""
    job = tmp_path / "awx_job"
    (job / "env").mkdir(parents=True)
    (job / "env" / "settings").write_text("{}")
    shutil.copytree(ROOT / "inventories/local", job / "inventory")
    return job


def test_an_inventory_outside_the_checkout_finds_the_plans(pg, reference_db, tmp_path):
    """The issue's failure: the local inventory copied elsewhere (with its group_vars) made the project
    directory <parent of the job dir> and the plan was looked up there."""
    job = job_tree(tmp_path)
    res = run_playbook("playbooks/plan.yml", tmp_path,
                       {**pg.conn_vars(reference_db), "pgmigrate_state_dir": str(tmp_path / "state"),
                        "pgmigrate_backup_dir": str(tmp_path / "backups"), "version": "2.0.0"},
                       inventory=job / "inventory")
    assert res.rc == 0, res.output[-3000:]
    assert "does not exist" not in res.output
    assert query(pg, reference_db, "SELECT kind, version, status FROM migration_ops.runs") == [
        ("migrate", "2.0.0", "succeeded")]


def test_a_bare_inventory_gets_persistent_defaults(pg, reference_db, tmp_path):
    """A team's inventory with hosts only: the plans come from the project, the backup goes to
    /var/backups/pgmigrate (a place that outlives a job), not under the project or the inventory."""
    inv = tmp_path / "team-inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    pgmigrate_db:\n      hosts:\n        football_db:\n"
        "          ansible_connection: local\n"
        "          ansible_python_interpreter: \"{{ ansible_playbook_python }}\"\n")
    res = run_playbook("playbooks/plan.yml", tmp_path,
                       {**pg.conn_vars(reference_db), "pgmigrate_db_sslmode": "disable", "version": "2.0.0"},
                       inventory=inv / "hosts.yml")
    assert res.rc == 0, res.output[-3000:]
    assert "Backup dir /var/backups/pgmigrate:" in res.output


def test_a_backup_dir_inside_the_job_directory_is_refused(pg, reference_db, tmp_path):
    job = job_tree(tmp_path)
    inside = job / "artifacts" / "backups"
    (job / "artifacts").mkdir()
    variables = {**pg.conn_vars(reference_db), "pgmigrate_state_dir": str(tmp_path / "state"),
                 "pgmigrate_backup_dir": str(inside), "version": "2.0.0"}
    res = run_playbook("migrate.yml", tmp_path, variables, inventory=job / "inventory")
    assert res.rc != 0
    assert f"backup directory refused: {inside} is inside the job's private data directory {job}" in res.output
    assert "pgmigrate_backup_allow_ephemeral=true" in res.output
    # Refused in the plan phase: no lock, no ledger, no backup.
    assert not ledger_exists(pg, reference_db)
    assert not inside.exists()

    # The operator says it is intended: the plan phase goes on.
    res = run_playbook("playbooks/plan.yml", tmp_path, {**variables, "pgmigrate_backup_allow_ephemeral": True},
                       inventory=job / "inventory")
    assert res.rc == 0, res.output[-3000:]


def test_a_directory_beside_a_virtualenv_named_env_is_not_a_job_directory(pg, reference_db, tmp_path):
    """A home with ~/env (a virtualenv) and ~/project is not a private data directory."""
    home = tmp_path / "home"
    for d in ("env/bin", "env/lib", "project", "inventory"):
        (home / d).mkdir(parents=True)
    (home / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    res = run_playbook("playbooks/plan.yml", tmp_path,
                       {**pg.conn_vars(reference_db), "pgmigrate_state_dir": str(tmp_path / "state"),
                        "pgmigrate_backup_dir": str(home / "backups"), "version": "2.0.0"})
    assert res.rc == 0, res.output[-3000:]
    assert "backup directory refused" not in res.output


def test_the_backup_module_refuses_a_tmpfs_directory(pg, reference_db, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm tmpfs here")
    target = shm / f"pgmigrate-test-{uuid.uuid4().hex[:8]}"
    play = tmp_path / "backup.yml"
    play.write_text(
        "- name: Back up into a tmpfs\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Dump\n      pg_backup:\n        backup_dir: \"{{ target }}\"\n"
        "        login_host: \"{{ pgmigrate_db_host }}\"\n        login_port: \"{{ pgmigrate_db_port }}\"\n"
        "        login_user: \"{{ pgmigrate_db_user }}\"\n        login_password: \"{{ pgmigrate_db_password }}\"\n"
        "        login_db: \"{{ pgmigrate_db_name }}\"\n")
    try:
        res = run_playbook(play, tmp_path, {**pg.conn_vars(reference_db), "target": str(target)},
                           inventory=ROOT / "tests/inventory.yml")
        assert res.rc != 0
        assert f"backup directory refused: {target} is on a tmpfs filesystem" in res.output
        assert not target.exists()
    finally:
        shutil.rmtree(target, ignore_errors=True)
