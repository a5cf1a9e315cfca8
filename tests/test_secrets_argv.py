"""No secret on a command line (issue 10, item 7): the playbooks that run libpq tools or the application's
test command pass the password through a 0600 PGPASSFILE, never a task-level PGPASSWORD that Ansible puts
on the ``/bin/sh -c`` command line (``ps``, ``-vvv`` and AWX job output). Real ansible-playbook runs at
``-vvv`` while a watcher reads every process's command line."""
from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

from conftest import ROOT, VENV_BIN, run_playbook
from proc_watch import CmdlineWatcher
from psycopg2 import sql
from test_alembic_migrate import revision

FIXTURES = ROOT / "tests" / "fixtures"
APP_SETTINGS = FIXTURES / "alembic_app_settings"


def passfiles(output: str) -> list[str]:
    return sorted(set(re.findall(r"PGPASSFILE=(\S+?pgpass)\b", output)))


def assert_no_secret(pg, output: str, seen: CmdlineWatcher) -> None:
    assert pg.password not in output
    assert seen.containing(pg.password) == []
    assert seen.saw("PGPASSFILE=")  # the watcher saw the shell command lines that used to carry PGPASSWORD
    for path in passfiles(output):
        assert not Path(path).exists() and not Path(path).parent.exists()  # removed afterwards


def test_cycle_restore_passes_the_password_by_file(pg, tmp_path):
    db = pg.create_database()
    env = pg.env(db)
    subprocess.run([str(VENV_BIN / "alembic"), "-c", str(APP_SETTINGS / "alembic.ini"), "upgrade", "g1"], env=env,
                   check=True, capture_output=True, cwd=ROOT)
    dump = tmp_path / "g1.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump)], env=env, check=True)
    with CmdlineWatcher() as seen:
        res = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                           {**pg.conn_vars(db), "schema_migrate_alembic_dir": str(APP_SETTINGS),
                            "schema_migrate_cycle_backup": str(dump)}, "-vvv")
    assert res.rc == 0, res.output[-3000:]
    assert "1. upgrade +1: g1 -> g2 ok" in res.output  # the restore worked: the scratch copy started at g1
    assert_no_secret(pg, res.output, seen)
    assert len(passfiles(res.output)) == 1
    assert revision(pg, db) == "g1"
    pg.drop_database(db)


def run_test_command(pg, tmp_path, command: str, *args: str, login: dict | None = None):
    out = tmp_path / f"checks-{uuid.uuid4().hex[:8]}.json"
    with CmdlineWatcher() as seen:
        res = run_playbook(ROOT / "tests" / "playbooks" / "validate_test_command.yml", tmp_path,
                           {**pg.conn_vars("pgmigrate_test"), **(login or {}), "validate_test_command": command,
                            "checks_file": str(out)}, *args)
    assert res.rc == 0, res.output[-3000:]
    (check,) = json.loads(out.read_text())
    return check, res, seen


def test_test_command_gets_the_password_by_file_and_its_failure_is_recorded(pg, tmp_path):
    ok, res, seen = run_test_command(pg, tmp_path, "psql -X -At -c \"SELECT 'who=' || current_user\"", "-vvv")
    assert (ok["status"], ok["rc"]) == ("passed", 0) and f"who={pg.user}" in ok["message"]  # it reached the db
    assert_no_secret(pg, res.output, seen)

    bad, res, seen = run_test_command(pg, tmp_path, "psql -X -At -c 'SELECT no_such_column'")
    assert (bad["status"], bad["rc"], bad["severity"]) == ("failed", 1, "error")
    assert 'column "no_such_column" does not exist' in bad["message"] and "non-zero return code" in bad["message"]
    assert pg.password not in res.output

    missing, res, _ = run_test_command(pg, tmp_path, "/nonexistent/run-tests")
    assert (missing["status"], missing["rc"]) == ("failed", 2)  # ENOENT, with the command module's own message
    assert "Error executing command" in missing["message"]


def test_test_command_password_with_pgpass_special_characters(pg, tmp_path):
    """A colon or a backslash in the password is escaped in the password file (.pgpass syntax)."""
    user, password = f"odd_{uuid.uuid4().hex[:8]}", "se:cr\\et:" + uuid.uuid4().hex[:6]
    conn = pg.admin_connect()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,))
    conn.close()
    check, res, seen = run_test_command(pg, tmp_path, "psql -X -At -c \"SELECT 'who=' || current_user\"",
                                        login={"pgmigrate_db_user": user, "pgmigrate_db_password": password})
    assert (check["status"], check["rc"]) == ("passed", 0) and f"who={user}" in check["message"], check
    assert password not in res.output and seen.containing(password) == []
