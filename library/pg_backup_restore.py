#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_backup_restore
short_description: Restore a verified backup over a database without ever leaving it half-restored
description:
  - Refuses a backup whose manifest does not say it was proven to restore (M(pg_backup_verify)), a backup of
    another database, and a file whose size or sha256 differs from the manifest.
  - Restores into a new database next to the target, checks every table's row count and checksum against the
    manifest there, carries the live run ledger (O(ops_schema)) of the target over, and only then swaps the
    names in one transaction (C(ALTER DATABASE ... RENAME)). Until that moment the target is untouched; a
    failure before it drops the new database and leaves the target as it was.
  - Other sessions on the target block the swap. They are terminated only with O(terminate_sessions=true);
    otherwise the module fails and names them, before restoring anything.
  - After the swap it counts the rows of every table of the target again. The replaced database is kept under a
    new name (O(keep_replaced)) or dropped.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Checks the manifest, the files and the sessions; says what it would do; changes nothing.
  diff_mode:
    support: none
options:
  backup_path:
    description: The verified backup file (or directory) to restore.
    type: path
    required: true
  manifest_path:
    description: Its manifest. Defaults to O(backup_path) followed by C(.manifest.json).
    type: path
  target_db:
    description: Database to restore over. Defaults to O(login_db).
    type: str
  maintenance_db:
    description: Database to connect to while creating, renaming and dropping databases.
    type: str
    default: postgres
  terminate_sessions:
    description: Terminate other sessions on the target right before the swap. Without it, they make the module fail.
    type: bool
    default: false
  keep_replaced:
    description: Keep the replaced database under a new name (reported as RV(replaced_db)) instead of dropping it.
    type: bool
    default: true
  run_id:
    description: Ledger id of the run (part of the temporary database's name).
    type: int
  jobs:
    description: Parallel C(pg_restore) jobs.
    type: int
    default: 2
  pg_restore_path:
    description: The C(pg_restore) to use.
    type: str
    default: pg_restore
  pg_dump_path:
    description: The C(pg_dump) used to carry the run ledger over.
    type: str
    default: pg_dump
notes:
  - The login role must own the target database and have C(CREATEDB) (renaming needs both).
  - Database-level settings (C(ALTER DATABASE ... SET)) and grants on the database itself are not carried over.
'''

EXAMPLES = r'''
- name: Restore the run's backup over the database
  pg_backup_restore:
    backup_path: /srv/backups/football_prediction-2.0.0-run42-20261125T101500Z.dump
    terminate_sessions: false
  register: __backup_restore
'''

RETURN = r'''
restored:
  description: Whether the target now holds the backup's content.
  returned: always
  type: bool
replaced_db:
  description: Name the previous database was kept under (null when dropped or when there was none).
  returned: when the swap happened
  type: str
temp_db:
  description: Name of the database the backup was restored into before the swap.
  returned: when the restore ran
  type: str
tables:
  description: Per table, rows and checksum after the restore (compared with the manifest).
  returned: when the restore ran
  type: dict
terminated_sessions:
  description: Sessions that were terminated (pid, user, application).
  returned: always
  type: list
  elements: dict
durations:
  description: Seconds per step.
  returned: always
  type: dict
commands:
  description: The commands that ran (argv lists; never a password).
  returned: always
  type: list
  elements: list
'''

import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.pgmigrate import connect, connection_argument_spec, libpq_env, ops_schema_exists, sql
from ansible.module_utils.pgmigrate_backup import (
    BackupError,
    check_files,
    compare_fingerprints,
    create_database_like,
    database_fingerprints,
    drop_database,
    find_tool,
    manifest_path,
    read_manifest,
    run_tool,
    safe_part,
    scratch_name,
    tail,
    timed,
    utc_stamp,
)


def other_sessions(cur, db: str) -> list[dict]:
    cur.execute("SELECT pid, usename, application_name, state FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
    return [dict(zip(("pid", "user", "application", "state"), r)) for r in cur.fetchall()]


def describe_sessions(sessions: list[dict]) -> str:
    return ", ".join(f"pid {s['pid']} ({s['user']}, {s['application'] or 'no application name'})"
                     for s in sessions[:5]) + (f" and {len(sessions) - 5} more" if len(sessions) > 5 else "")


def database_exists(cur, db: str) -> bool:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
    return cur.fetchone() is not None


class Restore:
    def __init__(self, module) -> None:
        self.module = module
        self.p = module.params
        self.commands: list = []
        self.durations: dict = {}
        self.started = time.monotonic()
        self.result: dict = {"changed": False, "restored": False, "terminated_sessions": [],
                             "backup_path": self.p["backup_path"], "target_db": self.p["target_db"]}

    def finish(self, **extra) -> dict:
        self.durations["total_s"] = round(time.monotonic() - self.started, 3)
        return dict(self.result, durations=self.durations, commands=self.commands, **extra)

    def fingerprints(self, db: str, manifest: dict) -> dict:
        conn = connect(self.module, dbname=db)
        try:
            return database_fingerprints(conn, manifest)
        finally:
            conn.close()

    def carry_ledger(self, target: str, new: str, pg_dump: str, pg_restore: str) -> bool:
        """Copy the live ledger schema of the target into the new database (the backup has none)."""
        schema = self.p["ops_schema"]
        conn = connect(self.module, dbname=target)
        try:
            with conn.cursor() as cur:
                present = ops_schema_exists(cur, schema)
            conn.rollback()
        finally:
            conn.close()
        if not present:
            return False
        new_conn = connect(self.module, dbname=new, autocommit=True)
        try:
            with new_conn.cursor() as cur:
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        finally:
            new_conn.close()
        with tempfile.TemporaryDirectory() as tmp:
            dump_file = os.path.join(tmp, "ledger.dump")
            argv = [pg_dump, "--no-password", "--format=custom", f"--schema={schema}", f"--file={dump_file}"]
            self.commands.append(argv)
            proc = run_tool(argv, libpq_env(self.p, dbname=target))
            if proc.returncode != 0:
                raise BackupError(f"could not copy the run ledger ({schema}) of {target}: {tail(proc.stderr)}")
            argv = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={new}", dump_file]
            self.commands.append(argv)
            proc = run_tool(argv, libpq_env(self.p, dbname=new))
            if proc.returncode != 0:
                raise BackupError(f"could not carry the run ledger ({schema}) into {new}: {tail(proc.stderr)}")
        return True

    def run(self, manifest: dict, admin, pg_restore: str, pg_dump: str) -> None:
        target = self.p["target_db"]
        new = scratch_name(f"{target[:30]}_restore", self.p["run_id"])
        self.result["temp_db"] = new
        with admin.cursor() as cur:
            exists = database_exists(cur, target)
            create_database_like(cur, new, manifest)
        swapped = False
        try:
            argv = [pg_restore, "--no-password", "--exit-on-error", f"--jobs={self.p['jobs']}", f"--dbname={new}",
                    self.p["backup_path"]]
            self.commands.append(argv)
            proc = timed(self.durations, "restore_s", run_tool, argv, libpq_env(self.p, dbname=new))
            if proc.returncode != 0:
                raise BackupError(f"pg_restore into {new} failed (rc={proc.returncode}): {tail(proc.stderr)}; "
                                  f"{target} was not touched")
            restored = timed(self.durations, "check_s", self.fingerprints, new, manifest)
            self.result["tables"] = restored
            problems = compare_fingerprints(manifest["tables"], restored)
            if problems:
                raise BackupError(f"the restored copy differs from the manifest: {problems[0]}; {target} was not "
                                  "touched")
            if exists:
                self.result["ledger_carried"] = self.carry_ledger(target, new, pg_dump, pg_restore)
            self.swap(admin, target, new, exists)
            swapped = True
        finally:
            if not swapped:
                with admin.cursor() as cur:
                    drop_database(cur, new)
        self.result.update(changed=True)
        after = self.fingerprints(target, manifest)
        problems = compare_fingerprints(manifest["tables"], after, only_counts=True)
        if problems:
            raise BackupError(f"after the swap {target} differs from the manifest: {problems[0]}; the previous "
                              f"database is {self.result.get('replaced_db') or 'gone'}")
        self.result["restored"] = True
        self.result["counts_after_swap"] = {t: v["rows"] for t, v in after.items()}

    def swap(self, admin, target: str, new: str, exists: bool) -> None:
        replaced = f"{safe_part(target)[:35]}_replaced_{utc_stamp().lower()}"[:63]
        with admin.cursor() as cur:
            if exists:
                sessions = other_sessions(cur, target)
                if sessions and not self.p["terminate_sessions"]:
                    raise BackupError(f"{len(sessions)} other session(s) are connected to {target}: "
                                      f"{describe_sessions(sessions)}. Stop them, or rerun with "
                                      "terminate_sessions=true (-e terminate_sessions=true); nothing was changed")
                cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(target)))
                try:
                    self.terminate(cur, target)
                    admin.autocommit = False
                    cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(target), sql.Identifier(replaced)))
                    cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(new), sql.Identifier(target)))
                    admin.commit()
                except Exception:
                    admin.rollback()
                    admin.autocommit = True
                    cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(target)))
                    raise
                admin.autocommit = True
                if self.p["keep_replaced"]:
                    cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                        sql.Identifier(replaced)))
                    self.result["replaced_db"] = replaced
                else:
                    drop_database(cur, replaced)
                    self.result["replaced_db"] = None
            else:
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(new),
                                                                             sql.Identifier(target)))
                self.result["replaced_db"] = None

    def terminate(self, cur, target: str) -> None:
        for _attempt in range(50):
            sessions = other_sessions(cur, target)
            if not sessions:
                return
            if not self.p["terminate_sessions"]:
                raise BackupError(f"sessions connected to {target} while restoring: {describe_sessions(sessions)}; "
                                  "rerun with terminate_sessions=true")
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (target,))
            self.result["terminated_sessions"].extend(s for s in sessions
                                                      if s not in self.result["terminated_sessions"])
            time.sleep(0.1)
        raise BackupError(f"sessions on {target} did not end after pg_terminate_backend; nothing was changed")


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        backup_path=dict(type="path", required=True),
        manifest_path=dict(type="path"),
        target_db=dict(type="str"),
        maintenance_db=dict(type="str", default="postgres"),
        terminate_sessions=dict(type="bool", default=False),
        keep_replaced=dict(type="bool", default=True),
        run_id=dict(type="int"),
        jobs=dict(type="int", default=2),
        pg_restore_path=dict(type="str", default="pg_restore"),
        pg_dump_path=dict(type="str", default="pg_dump"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    p["backup_path"] = p["backup_path"].rstrip(os.sep) or os.sep
    p["manifest_path"] = p["manifest_path"] or manifest_path(p["backup_path"])
    p["target_db"] = p["target_db"] or p["login_db"]
    if not p["target_db"]:
        module.fail_json(msg="target_db (or login_db) is required: the database to restore over")
    r = Restore(module)
    try:
        manifest = read_manifest(p["manifest_path"])
        if manifest.get("verified") is not True:
            raise BackupError(f"{p['backup_path']} was never proven to restore (its manifest says verified="
                              f"{manifest.get('verified')}); refusing to restore it over {p['target_db']}. Verify it "
                              "with pg_backup_verify first, or choose a verified backup")
        if manifest["database"] != p["target_db"]:
            raise BackupError(f"{p['backup_path']} is a backup of {manifest['database']}, not of {p['target_db']}; "
                              "refusing to restore it there")
        check_files(p["backup_path"], manifest)
        pg_restore = find_tool(module, "pg_restore", p["pg_restore_path"])
        pg_dump = find_tool(module, "pg_dump", p["pg_dump_path"])
        admin = connect(module, dbname=p["maintenance_db"], autocommit=True)
        try:
            with admin.cursor() as cur:
                sessions = other_sessions(cur, p["target_db"]) if database_exists(cur, p["target_db"]) else []
            if sessions and not p["terminate_sessions"]:
                raise BackupError(f"{len(sessions)} other session(s) are connected to {p['target_db']}: "
                                  f"{describe_sessions(sessions)}. Stop them (the application, psql), or rerun with "
                                  "terminate_sessions=true (-e terminate_sessions=true); nothing was changed")
            if module.check_mode:
                module.exit_json(**r.finish(changed=True, msg=(
                    f"would restore {p['backup_path']} (verified {manifest.get('verified_at')}, revision "
                    f"{manifest.get('alembic_revision')}) into a new database, check it, carry the ledger over and "
                    f"swap it in for {p['target_db']}" + (f", terminating {len(sessions)} session(s)"
                                                          if sessions else ""))))
            r.run(manifest, admin, pg_restore, pg_dump)
        finally:
            admin.close()
    except BackupError as exc:
        module.fail_json(**r.finish(msg=f"restore refused or failed: {exc}"))
    except Exception as exc:
        module.fail_json(**r.finish(msg=f"restore failed: {exc}; check {p['target_db']} and databases named "
                                        f"{r.result.get('temp_db')}/{r.result.get('replaced_db')}"))
    kept = f"; the previous database is kept as {r.result['replaced_db']}" if r.result.get("replaced_db") else ""
    module.exit_json(**r.finish(msg=f"{p['target_db']} restored from {p['backup_path']} (revision "
                                    f"{manifest.get('alembic_revision')}); counts re-checked after the swap{kept}"))


if __name__ == "__main__":
    main()
