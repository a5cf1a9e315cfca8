#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_backup
short_description: Dump a database with a manifest taken from the same snapshot, check before, prune after
description:
  - O(state=present) takes a full logical backup with C(pg_dump) (custom format, or directory format with
    parallel jobs) and writes a manifest beside it (C(<backup>.manifest.json)). The manifest holds the server
    and C(pg_dump) versions, the Alembic revision, the exact row count and a content checksum of every table,
    and, per table, its columns, the largest value of a single-column integer primary key and the names of its
    write-time columns (C(created_at), C(updated_at), ...) with the snapshot's time (C(snapshot_at)), which is how
    a rollback finds rows written after the backup,
    the size and the sha256 of the file(s), and the run id. Counts and checksums are taken inside the
    C(REPEATABLE READ) transaction whose snapshot C(pg_dump --snapshot) dumps, so they describe exactly the
    dumped data, while C(pg_dump) runs.
  - The backup is written under a temporary name and renamed only when C(pg_dump) succeeded and the manifest is
    written; on any failure nothing is left behind. Files are 0600 in a 0700 directory; names hold the
    database, version, run id and UTC timestamp.
  - Before dumping (and alone with O(state=preflight)) it checks connectivity, that C(pg_dump)'s major version is
    at least the server's, that the backup directory will outlive the job (see O(allow_ephemeral_dir)), and that
    it has the database size times O(disk_margin) free.
  - When O(run_id) already has a verified backup of this database in O(backup_dir), O(state=present) reuses it
    and reports no change (a rerun of the same run does not dump twice).
  - O(state=pruned) keeps the newest O(retain) verified backups of the database and deletes older ones and
    failed ones, but never a backup of a run that is still running in the ledger.
  - The tool's own ledger schema (O(ops_schema)) is not part of the backup; a restore carries the live ledger over.
  - The password goes to C(pg_dump) through C(PGPASSWORD), never through its arguments.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Runs the preflight checks and says what it would dump or delete; writes nothing.
  diff_mode:
    support: none
options:
  state:
    description: V(present) dumps, V(preflight) only checks, V(pruned) applies the retention.
    type: str
    choices: [present, preflight, pruned]
    default: present
  backup_dir:
    description: Directory of the backups (created 0700).
    type: path
    required: true
  version:
    description: Version the run migrates to (part of the file name and the manifest).
    type: str
    default: manual
  run_id:
    description: Ledger id of the run (part of the file name and the manifest).
    type: int
  format:
    description: C(pg_dump) format. V(directory) dumps with O(jobs) parallel workers.
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description: Parallel C(pg_dump) workers with O(format=directory).
    type: int
    default: 2
  compress:
    description:
      - C(pg_dump --compress) value (V(0) to V(9) for gzip levels); unset leaves C(pg_dump)'s default (gzip level 6
        for the custom format).
      - The backup role passes V(1) unless told otherwise (C(backup_compress), the plan's C(backup.compress)). On the
        reference database it dumps about three times faster than the default for about a quarter more bytes, and
        the backup is on the maintenance window's critical path.
    type: str
  pg_dump_path:
    description: The C(pg_dump) to use (a path or a name on C(PATH)).
    type: str
    default: pg_dump
  disk_margin:
    description: Free space needed in O(backup_dir), as a multiple of the database size.
    type: float
    default: 1.2
  allow_ephemeral_dir:
    description:
      - Accept a O(backup_dir) that will not outlive the job. By default the module refuses, before it writes
        anything, a directory inside an AWX or ansible-runner private data directory (deleted when the job ends)
        or on a tmpfs or ramfs (lost at the next reboot), since a run's ledger must never point at a backup
        that is gone.
    type: bool
    default: false
  exclude_schemas:
    description: Schemas left out of the backup besides O(ops_schema).
    type: list
    elements: str
    default: []
  lock_timeout:
    description: How long to wait for the share locks that keep tables from being dropped during the dump.
    type: str
    default: 30s
  retain:
    description: With O(state=pruned), how many verified backups of the database to keep.
    type: int
    default: 5
  prove:
    description:
      - Prove the backup while it is being dumped (O(format=custom) only). A thread reads the file as C(pg_dump)
        writes it and pipes it to a C(pg_restore --section=pre-data --section=data) into a new scratch database
        (O(scratch_prefix), the run id and random characters). When pg_dump has ended, the post-data section
        (indexes, constraints) is restored from the complete file with O(jobs) parallel workers while every
        table's count and checksum is read, a table at a time. Then the checks of M(pg_backup_verify) are made on
        the result (the file's size and sha256, the table of contents, both restores' exit statuses, every table's
        count and checksum against the manifest), and the manifest records the proof, bound to its sha256 and
        tables.
        M(pg_backup_verify) then finds it proven and does not restore it again.
      - The proof costs about the dump's own time instead of a second, sequential restore. When the streamed
        proof fails, the backup and its manifest are kept unproven (RV(proof_error)) for M(pg_backup_verify) to
        prove or reject.
    type: bool
    default: false
  keep_scratch:
    description: With O(prove), keep the proven scratch database (RV(scratch_db)) for the backup phase's rehearsal;
      it is dropped when the proof fails.
    type: bool
    default: false
  scratch_prefix:
    description: With O(prove), the prefix of the scratch database's name.
    type: str
    default: pgmigrate_verify
  pg_restore_path:
    description: With O(prove), the C(pg_restore) to use (a path or a name on C(PATH)).
    type: str
    default: pg_restore
'''

EXAMPLES = r'''
- name: Check that a backup can be taken
  pg_backup:
    state: preflight
    backup_dir: "{{ pgmigrate_backup_dir }}"

- name: Dump the database with its manifest
  pg_backup:
    backup_dir: "{{ pgmigrate_backup_dir }}"
    version: 2.0.0
    run_id: "{{ pgmigrate_run_id }}"
    format: custom
    prove: true
  register: __backup_dump

- name: Keep the five newest verified backups
  pg_backup:
    state: pruned
    backup_dir: "{{ pgmigrate_backup_dir }}"
    retain: 5
'''

RETURN = r'''
backup_path:
  description: Path of the backup file (custom) or directory (directory format); with check mode, the path it
    would write.
  returned: with state present
  type: str
  sample: /srv/backups/football_prediction-2.0.0-run42-20261125T101500Z.dump
manifest_path:
  description: Path of the manifest beside the backup.
  returned: with state present
  type: str
manifest:
  description: The manifest (versions, Alembic revision, tables with rows and checksum, size, sha256, run id).
  returned: with state present, not in check mode
  type: dict
reused:
  description: Whether an already verified backup of this run was reused instead of dumping again.
  returned: with state present
  type: bool
preflight:
  description: What was checked before dumping (server and pg_dump versions, database size, free space).
  returned: with state present or preflight
  type: dict
  sample: {server: {version: "15.18", major: 15}, pg_dump: {version: "15.18", major: 15},
           database_size_bytes: 8601600, free_bytes: 5000000000, needed_bytes: 10321920}
duration_s:
  description: Seconds the dump took (with the manifest, and with O(prove) its proof).
  returned: when a dump ran
  type: float
verified:
  description: Whether the backup is proven to restore (with O(prove), by the streamed proof).
  returned: when a dump ran
  type: bool
proof_error:
  description: With O(prove), why the streamed proof failed (the backup is kept, unproven).
  returned: when the streamed proof failed
  type: str
scratch_db:
  description: With O(prove) and O(keep_scratch), the proven scratch database (the caller drops it).
  returned: when the streamed proof succeeded with keep_scratch
  type: str
commands:
  description: The commands that ran (argv lists; they never contain a password).
  returned: always
  type: list
  elements: list
kept:
  description: With O(state=pruned), backups kept.
  returned: with state pruned
  type: list
  elements: str
deleted:
  description: With O(state=pruned), backups deleted (or that would be, in check mode).
  returned: with state pruned
  type: list
  elements: str
'''

import os
import subprocess
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.pgmigrate import (
    alembic_revision,
    connect,
    connection_argument_spec,
    libpq_env,
    ops_schema_exists,
    sql,
)
from ansible.module_utils.pgmigrate import pretty_bytes as pretty
from ansible.module_utils.pgmigrate_backup import (
    CHECKSUM_METHOD,
    MANIFEST_FORMAT,
    PARTIAL_SUFFIX,
    BackupError,
    StreamedProof,
    backup_name,
    database_fingerprints,
    ensure_private_dir,
    file_digests,
    find_run_backups,
    find_tool,
    fingerprint_tables,
    list_tables,
    manifest_path,
    proof_binding,
    remove_path,
    restore_problem,
    scratch_name,
    server_version,
    set_private_modes,
    snapshot_time,
    table_watermarks,
    tail,
    toc_problem,
    tool_version,
    utc_now_iso,
    utc_stamp,
    write_manifest,
)
from ansible.module_utils.pgmigrate_paths import DEFAULT_DISK_MARGIN, ephemeral_reason, free_space


def preflight(module, conn, p: dict) -> dict:
    """Versions, sizes and free space; fails the module with the fix when a backup cannot work."""
    with conn.cursor() as cur:
        server = server_version(cur)
        cur.execute("SELECT pg_database_size(current_database())")
        db_size = cur.fetchone()[0]
    conn.rollback()
    try:
        dump = tool_version(p["pg_dump_path"])
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    if dump["major"] < server["major"]:
        module.fail_json(msg=f"{dump['path']} is version {dump['version']} but the server is "
                             f"{server['version']}: pg_dump must be at least the server's major version "
                             f"({server['major']}). Install postgresql-client-{server['major']} or set "
                             "pg_dump_path (backup_pg_dump_path) to a newer pg_dump.",
                         preflight={"server": server, "pg_dump": dump})
    ephemeral = ephemeral_reason(p["backup_dir"])
    if ephemeral and not p["allow_ephemeral_dir"]:
        module.fail_json(msg=f"backup directory refused: {ephemeral}, so the backup would be gone while the ledger "
                             "still points at it. Set pgmigrate_backup_dir to persistent storage (default "
                             "/var/backups/pgmigrate; under AWX a volume mounted into the execution environment), "
                             "or, if that is intended, -e pgmigrate_backup_allow_ephemeral=true (this module's "
                             "allow_ephemeral_dir). Nothing was written.",
                         preflight={"server": server, "pg_dump": dump, "backup_dir": p["backup_dir"]})
    disk = free_space(p["backup_dir"], db_size, p["disk_margin"], "disk_margin (backup_disk_margin)")
    facts = {"server": server, "pg_dump": dump, "database_size_bytes": db_size, "database_size": pretty(db_size),
             "backup_dir": p["backup_dir"], "measured_at": disk["measured_at"], "free_bytes": disk["free_bytes"],
             "free": disk["free"], "needed_bytes": disk["needed_bytes"], "disk_margin": p["disk_margin"]}
    if not disk["enough"]:
        module.fail_json(msg=f"not enough free space for the backup: {disk['problem']}. Nothing was written.",
                         preflight=facts)
    if os.path.exists(p["backup_dir"]) and not os.access(p["backup_dir"], os.W_OK | os.X_OK):
        module.fail_json(msg=f"backup directory {p['backup_dir']} is not writable by this user; fix its "
                             "ownership or choose another pgmigrate_backup_dir", preflight=facts)
    return facts


def reusable_backup(p: dict, database: str) -> dict | None:
    """A verified backup this run already took (same database and run id), with its file present."""
    if p["run_id"] is None or not os.path.isdir(p["backup_dir"]):
        return None
    for found in find_run_backups(p["backup_dir"], database):
        m = found["manifest"]
        if m.get("run_id") == p["run_id"] and m.get("verified") is True and os.path.exists(m.get("backup_path", "")):
            return found
    return None


def dump(module, conn, p: dict, facts: dict, commands: list) -> dict:
    database = p["login_db"]
    stamp = utc_stamp()
    final = os.path.join(p["backup_dir"], backup_name(database, p["version"], p["run_id"], stamp, p["format"]))
    partial = final + PARTIAL_SUFFIX
    mpath = manifest_path(final)
    excluded = list(dict.fromkeys([p["ops_schema"]] + p["exclude_schemas"]))
    ensure_private_dir(p["backup_dir"])
    if any(os.path.lexists(x) for x in (final, partial, mpath)):
        module.fail_json(msg=f"{final} (or its manifest) already exists; wait a second and rerun")
    os.umask(0o077)
    started = time.monotonic()
    argv = [p["pg_dump_path"], "--no-password", f"--format={p['format']}", f"--file={partial}"]
    if p["format"] == "directory":
        argv.append(f"--jobs={p['jobs']}")
    if p["compress"]:
        argv.append(f"--compress={p['compress']}")
    argv += [f"--exclude-schema={s}" for s in excluded]
    proc = None
    proof = None
    proof_problem = None  # why the streamed proof failed (the backup is then kept unproven)
    with tempfile.TemporaryFile(mode="w+") as stderr_file:
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with conn.cursor() as cur:
                cur.execute("SELECT pg_export_snapshot()")
                snapshot = cur.fetchone()[0]
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (p["lock_timeout"],))
                tables = list_tables(cur, excluded)
                # Share locks for the whole dump: nobody drops or rewrites a table under it.
                for schema, table in tables:
                    cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(schema, table)))
                revision = alembic_revision(cur)
                cur.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                            "WHERE datname = current_database()")
                db_settings = dict(zip(("encoding", "collate", "ctype"), cur.fetchone()))
                argv.append(f"--snapshot={snapshot}")
                commands.append(list(argv))
                proc = subprocess.Popen(argv, env=libpq_env(module.params), stdout=subprocess.DEVNULL,
                                        stderr=stderr_file)
                if p["stream_proof"]:
                    proof, proof_problem = start_proof(module, p, partial, db_settings, commands)
                # Counts and checksums in the same snapshot, while pg_dump works.
                tables_fp = fingerprint_tables(cur, tables)
                # What a rollback compares with to find rows written after the backup (same snapshot).
                watermarks = table_watermarks(cur, tables)
                snapshot_at = snapshot_time(cur)
                rc = proc.wait()
                proc = None
            conn.rollback()
            if proof is not None:
                proof_problem = proof.finish(rc == 0, read_tables=lambda: read_scratch(module, proof, excluded))
            if rc != 0:
                stderr_file.seek(0)
                raise BackupError(f"pg_dump failed (rc={rc}): {tail(stderr_file.read())}")
            set_private_modes(partial)
            os.rename(partial, final)
            digests = file_digests(final)
            if digests["size_bytes"] == 0:
                raise BackupError("pg_dump exited 0 but wrote an empty file")
            manifest = {
                "manifest_format": MANIFEST_FORMAT, "database": database, "version": p["version"],
                "run_id": p["run_id"], "created_at": utc_now_iso(), "backup_path": final, "format": p["format"],
                "server": facts["server"], "pg_dump": {k: facts["pg_dump"][k] for k in ("version", "major")},
                "alembic_revision": revision, "database_settings": db_settings, "snapshot": snapshot,
                "excluded_schemas": excluded,
                "checksum_method": CHECKSUM_METHOD, "tables": tables_fp,
                "snapshot_at": snapshot_at, "watermarks": watermarks, "size_bytes": digests["size_bytes"],
                "sha256": digests["sha256"], "files": digests["files"], "verified": False, "verification": None,
            }
            verification = None
            if proof is not None:
                verification = finish_proof(module, p, proof, proof_problem, manifest, final, started)
                manifest = verification.pop("manifest")
            elif proof_problem:
                verification = {"proof_error": proof_problem, "scratch_kept": False}
            write_manifest(mpath, manifest)
            if proof is not None:
                proof.admin.close()  # after the manifest: a failure writing it still drops the kept copy
        except BaseException as exc:
            if proc is not None:
                proc.kill()
                proc.wait()
            if proof is not None:
                proof.kill()
                proof.drop()
                proof.admin.close()
            conn.rollback()
            for path in (partial, final, mpath):
                remove_path(path)
            if isinstance(exc, Exception):
                module.fail_json(msg=f"backup of {database} failed: {exc}. Nothing was left in {p['backup_dir']}.",
                                 commands=commands)
            raise
    result = {"changed": True, "backup_path": final, "manifest_path": mpath, "manifest": manifest, "reused": False,
              "verified": manifest["verified"], "duration_s": round(time.monotonic() - started, 3),
              "msg": f"dumped {database} ({len(tables_fp)} tables, {pretty(manifest['size_bytes'])}) to {final}"}
    if verification is not None:
        result.update(verification)
        result["msg"] += (f"; proven while dumping: {verification['proof']}" if manifest["verified"]
                          else f"; the streamed proof failed: {verification['proof_error']} (the backup is kept "
                               "unproven: pg_backup_verify proves or rejects it)")
    return result


def start_proof(module, p: dict, partial: str, db_settings: dict, commands: list) -> tuple:
    """The scratch database and the pg_restore the dump is streamed to (see StreamedProof): (the proof, None), or
    (None, why it could not start): the dump goes on without it."""
    admin = connect(module, autocommit=True)
    proof = StreamedProof(admin, p["pg_restore_path"], lambda db: libpq_env(p, dbname=db),
                          scratch_name(p["scratch_prefix"], p["run_id"]), db_settings, jobs=p["jobs"])
    try:
        proof.begin(partial)
    except BackupError as exc:
        proof.kill()
        proof.drop()
        admin.close()
        return None, str(exc)
    except BaseException:
        proof.kill()
        proof.drop()
        admin.close()
        raise
    commands.append(list(proof.argv) + [f"< {partial} (read while pg_dump writes it)"])
    commands.append(list(proof.post_argv) + ["(after pg_dump, while the tables are read)"])
    return proof, None


def read_scratch(module, proof: StreamedProof, excluded: list[str]) -> dict:
    """Every table's count and checksum in the proof's scratch database, a table at a time (its post-data section is
    restored meanwhile)."""
    conn = connect(module, dbname=proof.scratch)
    try:
        return database_fingerprints(conn, {"excluded_schemas": excluded}, table_by_table=True)
    finally:
        conn.close()


def finish_proof(module, p: dict, proof: StreamedProof, problem: str | None, manifest: dict, final: str,
                 started: float) -> dict:
    """The checks of the proof on the streamed restore; the manifest with its outcome (bound to its sha256 and
    tables) and the module's result fields."""
    steps = [{"step": "files", "ok": True, "detail": f"size {manifest['size_bytes']} bytes and sha256 "
                                                    f"{manifest['sha256'][:12]}... computed from the written file"}]
    durations = {"restore_s": proof.restore_s, "data_s": proof.data_s}
    out: dict = {}
    if problem is None:
        t0 = time.monotonic()
        problem, entries = toc_problem(p["pg_restore_path"], final, manifest["tables"], libpq_env(p))
        durations["toc_s"] = round(time.monotonic() - t0, 3)
        if problem is None:
            steps.append({"step": "toc", "ok": True, "detail": f"pg_restore --list read {entries} entries; data "
                                                               f"of all {len(manifest['tables'])} tables present"})
            steps.append({"step": "restore", "ok": True,
                          "detail": f"restored into scratch database {proof.scratch} while dumping "
                                    f"({proof.fed_bytes} bytes streamed; the data restored {proof.data_s} s "
                                    f"after the start, the post-data section with {proof.jobs} jobs "
                                    f"{proof.restore_s} s after it)"})
    if problem is None:
        restored = proof.restored or {}
        durations["tables_s"] = proof.tables_s
        problem = restore_problem(manifest["tables"], restored)
        if problem is None:
            rows = sum(t["rows"] for t in restored.values())
            steps.append({"step": "tables", "ok": True, "detail": f"{len(restored)} tables, {rows} rows: counts "
                                                                  "and checksums equal the manifest"})
    ok = problem is None
    kept = ok and p["keep_scratch"]
    dropped = False if kept else proof.drop()
    if not ok:
        steps.append({"step": "failed", "ok": False, "detail": problem})
    durations["total_s"] = round(time.monotonic() - started, 3)
    now = utc_now_iso()
    manifest = dict(manifest, verified=ok, verified_at=now if ok else None)
    manifest["verification"] = {"ok": ok, "at": now, "error": problem, "how": "streamed while dumping",
                                "steps": steps, "durations": durations,
                                "scratch_db": proof.scratch if kept else None,
                                "binding": proof_binding(manifest) if ok else None}
    out.update(manifest=manifest, proof_steps=steps, proof_durations=durations, scratch_kept=kept,
               scratch_dropped=dropped)
    if kept:
        out["scratch_db"] = proof.scratch
    if ok:
        out["proof"] = (f"restored while dumping into {proof.scratch} and every table's count and checksum "
                        "equals the manifest" + ("; the copy is kept for the rehearsal" if kept else ""))
    else:
        out["proof_error"] = problem
    return out


def run_status(module, p: dict, run_ids: set) -> dict:
    """Ledger status of each run id; a run the ledger does not know counts as finished."""
    if not run_ids:
        return {}
    conn = connect(module)
    try:
        with conn.cursor() as cur:
            if not ops_schema_exists(cur, p["ops_schema"]):
                return {}
            cur.execute(sql.SQL("SELECT id, status FROM {}.runs WHERE id = ANY(%s)").format(
                sql.Identifier(p["ops_schema"])), (sorted(run_ids),))
            return dict(cur.fetchall())
    finally:
        conn.close()


def prune(module, p: dict) -> dict:
    database = p["login_db"]
    if not os.path.isdir(p["backup_dir"]):
        return {"changed": False, "kept": [], "deleted": [], "msg": f"{p['backup_dir']} does not exist"}
    backups = find_run_backups(p["backup_dir"], database)
    statuses = run_status(module, p, {b["manifest"].get("run_id") for b in backups} - {None})
    kept, deleted, protected = [], [], []
    verified_kept = 0
    for b in backups:  # newest first
        m = b["manifest"]
        path = m.get("backup_path") or b["manifest_path"][: -len(".manifest.json")]
        if statuses.get(m.get("run_id")) == "running":
            protected.append(path)
            kept.append(path)
        elif m.get("verified") is True and verified_kept < p["retain"]:
            verified_kept += 1
            kept.append(path)
        else:
            deleted.append(path)
            if not module.check_mode:
                remove_path(path)
                remove_path(b["manifest_path"])
    verb = "would delete" if module.check_mode else "deleted"
    return {"changed": bool(deleted), "kept": kept, "deleted": deleted, "protected_running": protected,
            "msg": f"kept {len(kept)} backup(s) of {database} ({len(protected)} of running runs), "
                   f"{verb} {len(deleted)}"}


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="present", choices=["present", "preflight", "pruned"]),
        backup_dir=dict(type="path", required=True),
        version=dict(type="str", default="manual"),
        run_id=dict(type="int"),
        format=dict(type="str", default="custom", choices=["custom", "directory"]),
        jobs=dict(type="int", default=2),
        compress=dict(type="str"),
        pg_dump_path=dict(type="str", default="pg_dump"),
        disk_margin=dict(type="float", default=DEFAULT_DISK_MARGIN),
        exclude_schemas=dict(type="list", elements="str", default=[]),
        lock_timeout=dict(type="str", default="30s"),
        retain=dict(type="int", default=5),
        allow_ephemeral_dir=dict(type="bool", default=False),
        prove=dict(type="bool", default=False),
        keep_scratch=dict(type="bool", default=False),
        scratch_prefix=dict(type="str", default="pgmigrate_verify"),
        pg_restore_path=dict(type="str", default="pg_restore"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not p["login_db"]:
        module.fail_json(msg="login_db is required: the database to back up (pgmigrate_db_name)")
    if p["jobs"] < 1 or p["retain"] < 1 or p["disk_margin"] <= 0:
        module.fail_json(msg="jobs and retain must be >= 1 and disk_margin > 0")
    if p["state"] == "pruned":
        module.exit_json(commands=[], **prune(module, p))
    p["pg_dump_path"] = find_tool(module, "pg_dump", p["pg_dump_path"])
    # A directory-format dump is written by parallel jobs into many files: it cannot be streamed; pg_backup_verify
    # proves it after the dump.
    p["stream_proof"] = p["prove"] and p["format"] == "custom" and p["state"] == "present"
    if p["stream_proof"]:
        p["pg_restore_path"] = find_tool(module, "pg_restore", p["pg_restore_path"])
    commands: list = []
    conn = connect(module)  # connectivity: fails with "unable to connect to database: ..."
    try:
        facts = preflight(module, conn, p)
        if p["state"] == "preflight":
            module.exit_json(changed=False, preflight=facts, commands=commands,
                             msg=f"a backup of {p['login_db']} can be taken: {facts['free']} free, "
                                 f"{facts['needed_bytes']} bytes needed; pg_dump {facts['pg_dump']['version']} "
                                 f">= server {facts['server']['version']}")
        found = reusable_backup(p, p["login_db"])
        if found:
            m = found["manifest"]
            module.exit_json(changed=False, reused=True, backup_path=m["backup_path"],
                             manifest_path=found["manifest_path"], manifest=m, preflight=facts, commands=commands,
                             msg=f"run #{p['run_id']} already has a verified backup: {m['backup_path']}")
        if module.check_mode:
            would = os.path.join(p["backup_dir"], backup_name(p["login_db"], p["version"], p["run_id"],
                                                              utc_stamp(), p["format"]))
            module.exit_json(changed=True, reused=False, backup_path=would, manifest_path=manifest_path(would),
                             preflight=facts, commands=commands,
                             msg=f"would dump {p['login_db']} ({facts['database_size']}) with pg_dump "
                                 f"{facts['pg_dump']['version']} in {p['format']} format to {would}, "
                                 "with a manifest from the same snapshot")
        result = dump(module, conn, p, facts, commands)
    finally:
        conn.close()
    module.exit_json(preflight=facts, commands=commands, **result)


if __name__ == "__main__":
    main()
