"""The same playbooks run through ansible-runner (as AWX does), not only ansible-playbook."""
from __future__ import annotations

import json
import os
import shutil

import ansible_runner
from conftest import ROOT, VENV_BIN


def test_plan_phase_runs_through_ansible_runner(pg, reference_db, tmp_path):
    private = tmp_path / "runner"
    (private / "env").mkdir(parents=True)
    (private / "inventory").mkdir()
    # ansible-runner runs a project directory; the checkout is that project.
    os.symlink(ROOT, private / "project")
    shutil.copy(ROOT / "inventories/local/hosts.yml", private / "inventory/hosts.yml")
    variables = {**pg.conn_vars(reference_db), "pgmigrate_project_dir": str(ROOT),
                 "pgmigrate_state_dir": str(tmp_path / "state"), "pgmigrate_plan_dir": str(ROOT / "migrations"),
                 "pgmigrate_backup_dir": str(tmp_path / "state/backups"), "pgmigrate_db_sslmode": "disable",
                 "version": "2.0.0"}
    (private / "env/extravars").write_text(json.dumps(variables))
    (private / "env/extravars").chmod(0o600)
    result = ansible_runner.run(
        private_data_dir=str(private), playbook="playbooks/plan.yml", quiet=True,
        envvars={"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    stdout = result.stdout.read()
    assert result.status == "successful", stdout[-3000:]
    assert result.rc == 0
    assert pg.password not in stdout
    events = [e for e in result.events if e.get("event") == "runner_on_ok"]
    assert any(e["event_data"].get("task") == "Take the migration lock and open the run in the ledger"
               for e in events)
    conn = pg.connect(reference_db)
    with conn.cursor() as cur:
        cur.execute("SELECT kind, status FROM migration_ops.runs")
        assert cur.fetchall() == [("migrate", "succeeded")]
    conn.close()
