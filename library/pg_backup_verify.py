#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_backup_verify
short_description: Prove that a backup restores, table by table
description:
  - Proves a backup taken by M(pg_backup) in four steps, stopping at the first that fails.
  - 1. The backup file (or every file of a directory dump) exists, is not empty, and has the size and sha256
    recorded in its manifest.
  - 2. C(pg_restore --list) reads its table of contents, and every table of the manifest has its data in it.
  - 3. A full C(pg_restore) into a scratch database (a new name made of O(scratch_prefix), the run id and random
    characters) succeeds.
  - 4. Every table of the scratch database has the manifest's exact row count and content checksum, and no table
    is missing or extra.
  - The scratch database is dropped afterwards, also when a step fails. With O(keep_scratch=true) a proven copy is
    kept instead (RV(scratch_kept)); the backup phase rehearses the schema migration and the plan's SQL on it
    before the target changes, and drops it after.
  - The manifest then records the outcome (C(verified) true or false, when, and how long each step took).
  - A backup whose manifest already says it was verified and whose sha256 still matches is not restored again
    (no change), unless O(force=true).
  - Fails with a message naming the problem (missing file, empty file, size or sha256 mismatch, unreadable table
    of contents, failed restore, or the first table whose count or checksum differs).
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Checks the files' sha256 and reads the table of contents; does not restore and writes nothing.
  diff_mode:
    support: none
options:
  backup_path:
    description: The backup file (custom format) or directory (directory format).
    type: path
    required: true
  manifest_path:
    description: Its manifest. Defaults to O(backup_path) followed by C(.manifest.json).
    type: path
  run_id:
    description:
      - Ledger id of the run. Used in the scratch database's name, and when given, the manifest must belong to
        this run (the gate checks this run's backup, not an older one).
    type: int
  scratch_prefix:
    description: Prefix of the scratch database's name.
    type: str
    default: pgmigrate_verify
  jobs:
    description: Parallel C(pg_restore) jobs.
    type: int
    default: 2
  pg_restore_path:
    description: The C(pg_restore) to use (a path or a name on C(PATH)).
    type: str
    default: pg_restore
  force:
    description: Restore again even when the manifest says the backup was verified and its sha256 matches.
    type: bool
    default: false
  update_manifest:
    description: Record the outcome in the manifest.
    type: bool
    default: true
  keep_scratch:
    description:
      - Keep the scratch database when the backup is proven (it is dropped when any step fails), for the backup
        phase's rehearsal; the caller drops it (RV(scratch_db)). Restores even a backup whose manifest already says
        it was verified, since the rehearsal needs the copy.
    type: bool
    default: false
notes:
  - The login role needs C(CREATEDB) for the scratch database. O(login_db) is only the database to connect to
    while creating and dropping it.
'''

EXAMPLES = r'''
- name: Prove this run's backup restores
  pg_backup_verify:
    backup_path: "{{ __backup_dump.backup_path }}"
    run_id: "{{ pgmigrate_run_id }}"
  register: __backup_verify
'''

RETURN = r'''
verified:
  description: Whether the backup is proven to restore.
  returned: always
  type: bool
backup_path:
  description: The backup that was checked.
  returned: always
  type: str
manifest_path:
  description: Its manifest.
  returned: always
  type: str
steps:
  description: Each step and its outcome (files, toc, restore, tables).
  returned: always
  type: list
  elements: dict
  sample: [{step: files, ok: true, detail: "sha256 3f2a... matches (812 kB)"}]
tables:
  description: Per table, the manifest's and the restored rows and checksums and whether they match.
  returned: when the restore ran
  type: dict
scratch_db:
  description: Name of the scratch database (dropped again, unless RV(scratch_kept)).
  returned: when the restore ran
  type: str
scratch_dropped:
  description: Whether the scratch database was dropped.
  returned: when the restore ran
  type: bool
scratch_kept:
  description: Whether the proven scratch database was kept for the caller (O(keep_scratch)).
  returned: when the restore ran
  type: bool
durations:
  description: Seconds per step (files_s, toc_s, restore_s, tables_s, total_s).
  returned: always
  type: dict
commands:
  description: The commands that ran (argv lists; they never contain a password).
  returned: always
  type: list
  elements: list
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.pgmigrate import connect, connection_argument_spec, libpq_env
from ansible.module_utils.pgmigrate_backup import (
    BackupError,
    check_files,
    create_database_like,
    database_fingerprints,
    drop_database,
    find_tool,
    manifest_path,
    proof_binding,
    read_manifest,
    restore_problem,
    run_tool,
    safe_part,
    scratch_name,
    tail,
    timed,
    toc_problem,
    tool_version,
    utc_now_iso,
    write_manifest,
)


class Verification:
    def __init__(self, module) -> None:
        self.module = module
        self.p = module.params
        self.steps: list[dict] = []
        self.durations: dict = {}
        self.commands: list = []
        self.result: dict = {"changed": False, "verified": False, "backup_path": self.p["backup_path"],
                             "manifest_path": self.p["manifest_path"]}
        self.started = time.monotonic()

    def step(self, name: str, ok: bool, detail: str) -> None:
        self.steps.append({"step": name, "ok": ok, "detail": detail})

    def finish(self, **extra) -> dict:
        self.durations["total_s"] = round(time.monotonic() - self.started, 3)
        return dict(self.result, steps=self.steps, durations=self.durations, commands=self.commands, **extra)

    # ------------------------------------------------------------------ steps
    def check_toc(self, manifest: dict, pg_restore: str) -> None:
        self.commands.append([pg_restore, "--list", self.p["backup_path"]])
        problem, entries = toc_problem(pg_restore, self.p["backup_path"], manifest["tables"], libpq_env(self.p))
        if problem:
            raise BackupError(problem)
        self.step("toc", True, f"pg_restore --list read {entries} entries; data of all "
                               f"{len(manifest['tables'])} tables present")

    def restore_and_compare(self, manifest: dict, pg_restore: str) -> None:
        name = scratch_name(self.p["scratch_prefix"], self.p["run_id"])
        self.result.update(scratch_db=name, scratch_dropped=False, scratch_kept=False)
        admin = connect(self.module, autocommit=True)
        created = proven = False
        try:
            with admin.cursor() as cur:
                try:
                    create_database_like(cur, name, manifest)
                except Exception as exc:
                    raise BackupError(f"cannot create the scratch database {name}: {str(exc).strip()}; the login "
                                      "role needs CREATEDB (ALTER ROLE ... CREATEDB)") from exc
            created = True
            argv = [pg_restore, "--no-password", "--exit-on-error", "--no-owner", "--no-privileges",
                    f"--jobs={self.p['jobs']}", f"--dbname={name}", self.p["backup_path"]]
            self.commands.append(argv)
            proc = timed(self.durations, "restore_s", run_tool, argv, libpq_env(self.p, dbname=name))
            if proc.returncode != 0:
                raise BackupError(f"pg_restore into the scratch database failed (rc={proc.returncode}): "
                                  f"{tail(proc.stderr)}")
            self.step("restore", True, f"restored into scratch database {name} in {self.durations['restore_s']} s")
            timed(self.durations, "tables_s", self.compare_tables, manifest, name)
            proven = True
        finally:
            if created and proven and self.p["keep_scratch"]:
                self.result["scratch_kept"] = True
            elif created:
                self.result["scratch_dropped"] = drop_scratch(admin, name)
            admin.close()

    def compare_tables(self, manifest: dict, name: str) -> None:
        conn = connect(self.module, dbname=name)
        try:
            restored = database_fingerprints(conn, manifest)
        finally:
            conn.close()
        expected = manifest["tables"]
        self.result["tables"] = {
            t: {"manifest_rows": expected.get(t, {}).get("rows"), "restored_rows": restored.get(t, {}).get("rows"),
                "manifest_checksum": expected.get(t, {}).get("checksum"),
                "restored_checksum": restored.get(t, {}).get("checksum"),
                "match": expected.get(t) == restored.get(t)}
            for t in sorted(set(expected) | set(restored))}
        problem = restore_problem(expected, restored)
        if problem:
            raise BackupError(problem)
        rows = sum(t["rows"] for t in restored.values())
        self.step("tables", True, f"{len(restored)} tables, {rows} rows: counts and checksums equal the manifest")


def scratch_exists(module, name: str) -> bool:
    admin = connect(module, autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        admin.close()


def drop_kept_scratch(module, name: str, prefix: str) -> None:
    """Drop a scratch copy an earlier proof kept (only a name of the scratch prefix, never another database)."""
    if not name.startswith(safe_part(prefix)[:40].lower() + "_") or name == module.params.get("login_db"):
        return
    admin = connect(module, autocommit=True)
    try:
        drop_scratch(admin, name)
    finally:
        admin.close()


def drop_scratch(admin, name: str) -> bool:
    """Drop the scratch database; False (never an exception) when it cannot be dropped."""
    try:
        with admin.cursor() as cur:
            drop_database(cur, name)
    except Exception:
        return False
    return True


def record(path: str, manifest: dict, ok: bool, v: Verification, error: str | None) -> None:
    manifest = dict(manifest, verified=ok, verified_at=utc_now_iso() if ok else manifest.get("verified_at"))
    manifest["verification"] = {"ok": ok, "at": utc_now_iso(), "error": error, "how": "restored after the dump",
                                "steps": v.steps, "durations": v.durations,
                                "scratch_db": v.result.get("scratch_db") if v.result.get("scratch_kept") else None,
                                "binding": proof_binding(manifest) if ok else None}
    if not ok:
        manifest["verified_at"] = None
    write_manifest(path, manifest)


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        backup_path=dict(type="path", required=True),
        manifest_path=dict(type="path"),
        run_id=dict(type="int"),
        scratch_prefix=dict(type="str", default="pgmigrate_verify"),
        jobs=dict(type="int", default=2),
        pg_restore_path=dict(type="str", default="pg_restore"),
        force=dict(type="bool", default=False),
        update_manifest=dict(type="bool", default=True),
        keep_scratch=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    p["backup_path"] = p["backup_path"].rstrip(os.sep) or os.sep
    p["manifest_path"] = p["manifest_path"] or manifest_path(p["backup_path"])
    if p["jobs"] < 1:
        module.fail_json(msg="jobs must be >= 1")
    v = Verification(module)
    manifest = None
    try:
        if os.path.exists(p["manifest_path"]):
            manifest = read_manifest(p["manifest_path"])
        if not os.path.lexists(p["backup_path"]):
            raise BackupError(f"backup file {p['backup_path']} is missing; it was moved or deleted after the dump "
                              "(take a new backup)")
        manifest = manifest or read_manifest(p["manifest_path"])
        if p["run_id"] is not None and manifest.get("run_id") != p["run_id"]:
            raise BackupError(f"{p['backup_path']} belongs to run #{manifest.get('run_id')}, not to run "
                              f"#{p['run_id']}: the gate needs this run's backup")
        digests = timed(v.durations, "files_s", check_files, p["backup_path"], manifest)
        v.step("files", True, f"size {digests['size_bytes']} bytes and sha256 {digests['sha256'][:12]}... match "
                              "the manifest")
        proven = (manifest.get("verification") or {})
        if manifest.get("verified") is True and not p["force"]:
            if proven.get("binding") == proof_binding(manifest):
                kept = proven.get("scratch_db")
                rows = sum(t["rows"] for t in manifest["tables"].values())
                said = (f"{p['backup_path']} restores (proven {proven.get('how') or 'earlier'}, at "
                        f"{manifest.get('verified_at')}): {len(manifest['tables'])} tables, {rows} rows, counts and "
                        "checksums equal the manifest; its sha256 and tables still match that proof")
                if not p["keep_scratch"]:
                    module.exit_json(**v.finish(verified=True, msg=f"{said}; not restored again (force=true to redo)"))
                if kept and scratch_exists(module, kept):
                    v.result.update(scratch_db=kept, scratch_kept=True, scratch_dropped=False)
                    v.step("restore", True, f"the proof's restore {kept} ({proven.get('how') or 'earlier'}) is kept")
                    module.exit_json(**v.finish(verified=True, msg=f"{said}; its restored copy {kept} is kept for the "
                                                                   "rehearsal"))
            else:
                # The manifest (its tables, size or sha256) changed since the proof: that proof proves nothing about
                # it. A copy the proof kept is dropped; the backup is proven again from the start.
                v.step("binding", False, "the manifest changed since the backup was proven; proving it again")
                if proven.get("scratch_db"):
                    drop_kept_scratch(module, proven["scratch_db"], p["scratch_prefix"])
        pg_restore = find_tool(module, "pg_restore", p["pg_restore_path"])
        restore_tool = tool_version(pg_restore)
        if restore_tool["major"] < int((manifest.get("pg_dump") or {}).get("major") or 0):
            raise BackupError(f"{pg_restore} is version {restore_tool['version']} but the backup was written by "
                              f"pg_dump {manifest['pg_dump']['version']}; use a pg_restore at least that new")
        timed(v.durations, "toc_s", v.check_toc, manifest, pg_restore)
        if module.check_mode:
            module.exit_json(**v.finish(changed=True, msg=f"would restore {p['backup_path']} into a scratch "
                                                          "database and compare every table with the manifest"))
        v.restore_and_compare(manifest, pg_restore)
    except BackupError as exc:
        error = str(exc)
        v.step("failed", False, error)
        # A copy an earlier (streamed) proof kept for the rehearsal is of a backup that is not proven now.
        earlier = ((manifest or {}).get("verification") or {}).get("scratch_db")
        if earlier:
            drop_kept_scratch(module, earlier, p["scratch_prefix"])
        changed = False
        if manifest is not None and p["update_manifest"] and not module.check_mode:
            record(p["manifest_path"], manifest, False, v, error)
            changed = True
        module.fail_json(**v.finish(changed=changed, msg=f"backup verification failed: {error}"))
    except Exception as exc:  # database errors and the like: report, never a traceback
        module.fail_json(**v.finish(msg=f"backup verification failed unexpectedly: {exc}"))
    if p["update_manifest"]:
        record(p["manifest_path"], manifest, True, v, None)
    rows = sum(t["rows"] for t in manifest["tables"].values())
    module.exit_json(**v.finish(changed=True, verified=True,
                                msg=f"{p['backup_path']} restores: {len(manifest['tables'])} tables, {rows} rows, "
                                    "counts and checksums equal the manifest"
                                    + (f"; scratch database {v.result['scratch_db']} kept for the rehearsal"
                                       if v.result.get("scratch_kept") else "")))


if __name__ == "__main__":
    main()
