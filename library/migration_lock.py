#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_lock
short_description: Take or release the one-migration-at-a-time lock of a database
description:
  - Keeps a run ledger (one row per run) and a lock in the tool's own schema of the target database
    (O(ops_schema), created on first use).
  - O(state=present) opens a run in the ledger and takes the lock in one transaction. When another run holds
    the lock the module fails and names that run. A lock whose owner is gone (its C(ansible-playbook) process
    no longer exists on this control host, or it sent no heartbeat for O(stale_after) seconds) is reported as
    stale and is broken only with O(break_lock=true); the run that held it is marked failed.
  - A run is alive while any of its database sessions is connected (sessions named
    C(pgmigrate-ops run <id> ...), or holding a backfill's advisory lock); such a lock is never called stale,
    even when its playbook is gone, and the refusal names those sessions.
  - O(state=absent) releases the lock held by O(run_id) and closes that run with O(run_status).
    It never releases a lock held by another run.
  - O(state=query) reports the lock and its owner without changing anything.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Reports whether the lock could be taken or released; writes nothing.
  diff_mode:
    support: none
options:
  state:
    description: Whether the lock should be held (V(present)) or released (V(absent)), or only looked at (V(query)).
    type: str
    choices: [present, absent, query]
    default: present
  lock_name:
    description: Name of the lock; one database can have independent locks for independent jobs.
    type: str
    default: migration
  version:
    description: Application version the run migrates to. Required with O(state=present).
    type: str
  kind:
    description: What the run does.
    type: str
    choices: [migrate, rollback, backup, restore, phase]
    default: migrate
  from_version:
    description: Version the database is at before the run (from the plan).
    type: str
  operator:
    description: Who runs the migration (recorded in the ledger). Defaults to the C(USER) of the control node.
    type: str
  run_id:
    description:
      - Run that holds (or should hold) the lock. With O(state=present) and the lock already held by this run,
        nothing changes and the heartbeat is refreshed. Required with O(state=absent).
    type: int
  run_status:
    description: Final status written to the run on release.
    type: str
    choices: [succeeded, failed, rolled_back, rollback_failed]
    default: succeeded
  error:
    description: Error text recorded with the run on release (for failed runs).
    type: str
  break_lock:
    description:
      - Break a stale lock (owner gone) and take it. A lock whose owner is alive is never broken.
    type: bool
    default: false
  stale_after:
    description:
      - Seconds without a heartbeat after which a lock whose owner cannot be checked (another control host)
        counts as stale.
    type: int
    default: 3600
'''

EXAMPLES = r'''
- name: Take the migration lock and open the run
  migration_lock:
    login_host: "{{ pgmigrate_db_host }}"
    login_user: "{{ pgmigrate_db_user }}"
    login_password: "{{ pgmigrate_db_password }}"
    login_db: "{{ pgmigrate_db_name }}"
    version: 2.0.0
    from_version: 1.0.0
  register: __plan_lock
  no_log: false

- name: Release the lock and mark the run succeeded
  migration_lock:
    login_db: football_prediction
    state: absent
    run_id: "{{ __plan_lock.run_id }}"
    run_status: succeeded

- name: Break the lock a killed run left behind
  migration_lock:
    login_db: football_prediction
    version: 2.0.0
    break_lock: true
'''

RETURN = r'''
run_id:
  description: Ledger id of the run that holds the lock after the call (null in check mode before a run exists).
  returned: always
  type: int
  sample: 42
lock:
  description: The lock row as it is after the call (null when free).
  returned: always
  type: dict
  sample: {run_id: 42, version: 2.0.0, operator: alice, control_host: ops-1, control_pid: 4711,
           acquired_at: "2026-11-25T10:00:00+00:00", heartbeat_age_s: 3.2, stale: false}
broken:
  description: The stale lock that was broken, if any.
  returned: when a stale lock was broken
  type: dict
ops_schema_created:
  description: Whether this call created the ledger schema.
  returned: always
  type: bool
'''

import getpass
import os

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.pgmigrate import (
    RUN_APP_PREFIX,
    connect,
    connection_argument_spec,
    ensure_ops_schema,
    ops_schema_exists,
    sql,
)
from ansible.module_utils.pgmigrate_owner import find_owner_pid, hostname, pid_alive, process_start

ADVISORY_KEY = "pgmigrate-ops:ledger"


def read_lock(cur, schema: str, lock_name: str, for_update: bool = False) -> dict | None:
    query = sql.SQL(
        "SELECT l.run_id, r.version, l.operator, l.control_host, l.control_pid, l.control_pid_start, "
        "l.acquired_at, extract(epoch FROM clock_timestamp() - l.heartbeat_at)::float8, r.kind "
        "FROM {s}.lock l JOIN {s}.runs r ON r.id = l.run_id WHERE l.lock_name = %s"
    ).format(s=sql.Identifier(schema))
    if for_update:
        query = query + sql.SQL(" FOR UPDATE OF l")
    cur.execute(query, (lock_name,))
    row = cur.fetchone()
    if row is None:
        return None
    return {"run_id": row[0], "version": row[1], "operator": row[2], "control_host": row[3],
            "control_pid": row[4], "control_pid_start": row[5], "acquired_at": row[6].isoformat(),
            "heartbeat_age_s": round(row[7], 1), "kind": row[8]}


def staleness(lock: dict, stale_after: int) -> str | None:
    """Why the lock's owner is considered gone, or None while it may be alive."""
    if lock["control_host"] == hostname() and lock["control_pid"]:
        if not pid_alive(lock["control_pid"], lock["control_pid_start"]):
            return f"its ansible-playbook process {lock['control_pid']} on {lock['control_host']} is gone"
        return None
    if lock["heartbeat_age_s"] > stale_after:
        return f"no heartbeat for {int(lock['heartbeat_age_s'])} s (stale_after={stale_after})"
    return None


BACKFILL_ADVISORY_CLASS = "pgmigrate-ops:backfill"  # module_utils/pgmigrate_batch.py ADVISORY_CLASS


def live_sessions(cur, run_id: int) -> list[dict]:
    """Database sessions that still work for the run: named after it (application_name), or holding a
    backfill's advisory lock in this database.  While one is connected, the run is alive."""
    cur.execute(
        "SELECT a.pid, a.application_name, a.state, a.backend_start, a.query_start FROM pg_stat_activity a "
        "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND (a.application_name LIKE %s "
        "OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted "
        "AND l.classid = hashtext(%s)::oid)) ORDER BY a.backend_start",
        (f"{RUN_APP_PREFIX}{int(run_id)} %", BACKFILL_ADVISORY_CLASS))
    return [{"pid": r[0], "application_name": r[1], "state": r[2],
             "backend_start": r[3].isoformat() if r[3] else None,
             "query_start": r[4].isoformat() if r[4] else None} for r in cur.fetchall()]


def describe_sessions(sessions: list[dict]) -> str:
    return "; ".join(f"server pid {s['pid']} ({s['application_name'] or 'no application_name'}, "
                     f"{s['state'] or 'state hidden'}, connected since {s['backend_start'] or '?'})"
                     for s in sessions)


def describe(lock: dict) -> str:
    return (f"run #{lock['run_id']} ({lock['kind']} to {lock['version']}, operator {lock['operator']}, "
            f"ansible-playbook pid {lock['control_pid']} on {lock['control_host']}, "
            f"since {lock['acquired_at']}, last heartbeat {lock['heartbeat_age_s']} s ago)")


def acquire(module, cur, schema: str, p: dict) -> dict:
    result = {"changed": False, "run_id": None, "lock": None, "ops_schema_created": False}
    if not ops_schema_exists(cur, schema):
        if module.check_mode:
            result.update(changed=True, msg=f"would create schema {schema} and take lock {p['lock_name']!r}")
            return result
        result["ops_schema_created"] = ensure_ops_schema(cur, schema)
    lock = read_lock(cur, schema, p["lock_name"], for_update=not module.check_mode)
    if lock and p["run_id"] and lock["run_id"] == p["run_id"]:
        if not module.check_mode:
            cur.execute(sql.SQL("UPDATE {}.lock SET heartbeat_at = clock_timestamp() WHERE lock_name = %s")
                        .format(sql.Identifier(schema)), (p["lock_name"],))
        result.update(run_id=lock["run_id"], lock=lock, msg=f"run #{lock['run_id']} already holds the lock")
        return result
    if lock:
        why = staleness(lock, p["stale_after"])
        sessions = live_sessions(cur, lock["run_id"]) if why is not None else []
        if sessions:
            lock.update(stale=False, live_sessions=sessions)
            module.fail_json(msg=f"database {p['login_db']} is locked by {describe(lock)}: its playbook is gone "
                                 f"({why}), but the run still works in the database: "
                                 f"{describe_sessions(sessions)}. The lock is not stale and is not broken, "
                                 "break_lock or not. A backfill whose playbook died stops by itself at its next "
                                 "batch boundary within seconds; wait for these sessions to end (or end them with "
                                 "SELECT pg_terminate_backend(pid)), then rerun", lock=lock)
        lock["stale"] = why is not None
        if why is None:
            module.fail_json(msg=f"database {p['login_db']} is locked by {describe(lock)}; a second migration is "
                                 "refused. Wait for that run to finish (watch it in "
                                 f"{schema}.runs), or if it was killed, its lock becomes breakable once its owner "
                                 "is gone.", lock=lock)
        if not p["break_lock"]:
            module.fail_json(msg=f"stale migration lock: {describe(lock)} looks dead ({why}). Check that nothing "
                                 "is still migrating, then rerun with -e break_lock=true to break it.", lock=lock)
        result["broken"] = dict(lock, reason=why)
        if module.check_mode:
            result.update(changed=True, msg=f"would break the stale lock of run #{lock['run_id']} ({why})")
            return result
        s = sql.Identifier(schema)
        cur.execute(sql.SQL("DELETE FROM {}.lock WHERE lock_name = %s").format(s), (p["lock_name"],))
        cur.execute(sql.SQL("UPDATE {}.runs SET status = 'failed', finished_at = clock_timestamp(), "
                            "error = coalesce(error || '; ', '') || %s WHERE id = %s AND status = 'running'")
                    .format(s), (f"lock broken by {p['operator']} on {hostname()}: {why}", lock["run_id"]))
    if module.check_mode:
        result.update(changed=True, msg=f"would open a {p['kind']} run to {p['version']} and take lock "
                                        f"{p['lock_name']!r}")
        return result
    owner_pid = find_owner_pid()
    s = sql.Identifier(schema)
    cur.execute(sql.SQL("INSERT INTO {}.runs (kind, version, from_version, to_version, operator, control_host, "
                        "control_pid) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id").format(s),
                (p["kind"], p["version"], p["from_version"], p["version"], p["operator"], hostname(), owner_pid))
    run_id = cur.fetchone()[0]
    cur.execute(sql.SQL("INSERT INTO {}.lock (lock_name, run_id, operator, control_host, control_pid, "
                        "control_pid_start) VALUES (%s, %s, %s, %s, %s, %s)").format(s),
                (p["lock_name"], run_id, p["operator"], hostname(), owner_pid,
                 process_start(owner_pid) if owner_pid else None))
    result.update(changed=True, run_id=run_id, lock=read_lock(cur, schema, p["lock_name"]),
                  msg=f"run #{run_id} opened and lock {p['lock_name']!r} taken")
    return result


def release(module, cur, schema: str, p: dict) -> dict:
    result = {"changed": False, "run_id": p["run_id"], "lock": None, "ops_schema_created": False}
    if not ops_schema_exists(cur, schema):
        result["msg"] = "no ledger schema: nothing to release"
        return result
    s = sql.Identifier(schema)
    lock = read_lock(cur, schema, p["lock_name"], for_update=not module.check_mode)
    if lock and lock["run_id"] != p["run_id"]:
        module.fail_json(msg=f"refusing to release lock {p['lock_name']!r}: it is held by {describe(lock)}, "
                             f"not by run #{p['run_id']}", lock=lock)
    cur.execute(sql.SQL("SELECT status FROM {}.runs WHERE id = %s").format(s), (p["run_id"],))
    row = cur.fetchone()
    if row is None:
        module.fail_json(msg=f"run #{p['run_id']} does not exist in {schema}.runs")
    needs_close = row[0] == "running"
    if not lock and not needs_close:
        result["msg"] = f"run #{p['run_id']} is already {row[0]} and holds no lock"
        return result
    result["changed"] = True
    if module.check_mode:
        result["msg"] = f"would release the lock and mark run #{p['run_id']} {p['run_status']}"
        return result
    if lock:
        cur.execute(sql.SQL("DELETE FROM {}.lock WHERE lock_name = %s AND run_id = %s").format(s),
                    (p["lock_name"], p["run_id"]))
    if needs_close:
        cur.execute(sql.SQL("UPDATE {}.runs SET status = %s, finished_at = clock_timestamp(), "
                            "error = coalesce(%s, error) WHERE id = %s").format(s),
                    (p["run_status"], p["error"], p["run_id"]))
    result["msg"] = f"lock released; run #{p['run_id']} marked {p['run_status']}"
    return result


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="present", choices=["present", "absent", "query"]),
        lock_name=dict(type="str", default="migration"),
        version=dict(type="str"),
        kind=dict(type="str", default="migrate", choices=["migrate", "rollback", "backup", "restore", "phase"]),
        from_version=dict(type="str"),
        operator=dict(type="str"),
        run_id=dict(type="int"),
        run_status=dict(type="str", default="succeeded",
                        choices=["succeeded", "failed", "rolled_back", "rollback_failed"]),
        error=dict(type="str"),
        break_lock=dict(type="bool", default=False),
        stale_after=dict(type="int", default=3600),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "present", ["version"]), ("state", "absent", ["run_id"])],
        supports_check_mode=True,
    )
    p = module.params
    p["operator"] = p["operator"] or os.environ.get("USER") or getpass.getuser()
    schema = p["ops_schema"]
    conn = connect(module)
    try:
        with conn.cursor() as cur:
            # Serialise ledger changes: two runs starting at the same instant must not both win.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (ADVISORY_KEY,))
            if p["state"] == "present":
                result = acquire(module, cur, schema, p)
            elif p["state"] == "absent":
                result = release(module, cur, schema, p)
            else:
                lock = read_lock(cur, schema, p["lock_name"]) if ops_schema_exists(cur, schema) else None
                if lock:
                    why = staleness(lock, p["stale_after"])
                    sessions = live_sessions(cur, lock["run_id"]) if why is not None else []
                    lock.update(stale=why is not None and not sessions, stale_reason=why, live_sessions=sessions)
                result = {"changed": False, "run_id": lock["run_id"] if lock else None, "lock": lock,
                          "ops_schema_created": False}
        if module.check_mode:
            conn.rollback()
        else:
            conn.commit()
    except Exception as exc:  # psycopg2.Error and friends: report, never a traceback
        conn.rollback()
        module.fail_json(msg=f"migration_lock failed: {exc}")
    finally:
        conn.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
