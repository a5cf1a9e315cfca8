#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_ledger
short_description: Record phases and facts of a migration run in the run ledger
description:
  - Writes to the run ledger in the tool's schema of the target database (created by M(migration_lock)).
  - With O(phase) and O(phase_status), records a phase of the run (start, end, duration, facts).
  - With O(fields), sets ledger columns such as the backup path or the Alembic revisions.
  - With O(status), sets the run's status (for example V(rolled_back) after a rollback).
  - Every write also refreshes the lock's heartbeat, which is how a long run shows it is alive.
  - O(state=query) returns runs of a version without writing, for example the phase durations of the last
    successful run of the same plan.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Writes nothing; reports what it would record.
  diff_mode:
    support: none
options:
  state:
    description: V(present) records; V(query) only reads.
    type: str
    choices: [present, query]
    default: present
  run_id:
    description: The run to record into (from M(migration_lock)). Required with O(state=present).
    type: int
  phase:
    description: Phase name (plan, backup, schema, data, deploy, validate, report, rollback).
    type: str
  phase_status:
    description:
      - What happened to the phase.
      - Left out (with O(facts)), the facts are merged into the phase's record and its status and times stay as
        they are. A phase so records what it is about to change before it changes it (the deploy phase's colours
        and configuration backup), so that a failure or a killed run after that point can be undone.
    type: str
    choices: [started, succeeded, failed, skipped, not_implemented]
  facts:
    description: Facts of the phase to keep with it (merged into the phase's record).
    type: dict
    default: {}
  fields:
    description: Ledger columns to set.
    type: dict
    default: {}
    suboptions:
      from_revision: {description: Alembic revision before the run., type: str}
      to_revision: {description: Alembic revision after the run., type: str}
      backup_path: {description: Path of the run's backup., type: str}
      backup_verified: {description: Whether the backup was proven to restore., type: bool}
  status:
    description: New status of the run.
    type: str
    choices: [running, succeeded, failed, rolled_back, rollback_failed]
  error:
    description: Error text to append to the run.
    type: str
  version:
    description: With O(state=query), the version whose runs to return.
    type: str
  limit:
    description: With O(state=query), how many runs to return, newest first.
    type: int
    default: 5
'''

EXAMPLES = r'''
- name: Record that the backup phase started
  migration_ledger:
    login_db: football_prediction
    run_id: "{{ __plan_run_id }}"
    phase: backup
    phase_status: started

- name: Record what the deploy is about to change, before the switch (the phase stays started)
  migration_ledger:
    login_db: football_prediction
    run_id: "{{ pgmigrate_run_id }}"
    phase: deploy
    facts:
      colour_from: blue
      colour_to: green
      switch_started_at: "2026-03-01T02:10:00Z"

- name: Record the verified backup
  migration_ledger:
    login_db: football_prediction
    run_id: "{{ __plan_run_id }}"
    phase: backup
    phase_status: succeeded
    fields:
      backup_path: /var/backups/football_prediction/football_prediction-2.0.0-run42.dump
      backup_verified: true

- name: Read the last runs of this version
  migration_ledger:
    login_db: football_prediction
    state: query
    version: 2.0.0
'''

RETURN = r'''
run:
  description: The run's ledger row after the call (with O(state=present)).
  returned: when state is present and not in check mode
  type: dict
runs:
  description: Runs of O(version), newest first, each with its phases.
  returned: when state is query
  type: list
  elements: dict
last_success:
  description: The newest succeeded run of O(version) (phase durations for the preflight estimate), or null.
  returned: when state is query
  type: dict
'''

import json

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.pgmigrate import connect, connection_argument_spec, ops_schema_exists, read_runs, sql

ALLOWED_FIELDS = ("from_revision", "to_revision", "backup_path", "backup_verified")
def record(module, cur, schema: str, p: dict) -> dict:
    s = sql.Identifier(schema)
    cur.execute(sql.SQL("SELECT phases, status FROM {}.runs WHERE id = %s FOR UPDATE").format(s), (p["run_id"],))
    row = cur.fetchone()
    if row is None:
        module.fail_json(msg=f"run #{p['run_id']} does not exist in {schema}.runs; open a run with migration_lock")
    phases = row[0] or {}
    changes = []
    if p["phase"]:
        if not p["phase_status"] and not p["facts"]:
            module.fail_json(msg="phase_status (or facts, to add to the phase's record) is required with phase")
        entry = dict(phases.get(p["phase"], {}))
        cur.execute("SELECT clock_timestamp()")
        now = cur.fetchone()[0]
        if not p["phase_status"]:
            pass  # facts only: the status and the times stay as they are
        elif p["phase_status"] == "started":
            entry = {"status": "started", "started_at": now.isoformat()}
        else:
            entry["status"] = p["phase_status"]
            entry["finished_at"] = now.isoformat()
            if entry.get("started_at"):
                from datetime import datetime
                entry["duration_s"] = round((now - datetime.fromisoformat(entry["started_at"])).total_seconds(), 3)
        if p["facts"]:
            entry.setdefault("facts", {}).update(p["facts"])
        phases[p["phase"]] = entry
        changes.append(sql.SQL("phases = %s::jsonb"))
    params: list = [json.dumps(phases)] if p["phase"] else []
    for key, value in (p["fields"] or {}).items():
        if key not in ALLOWED_FIELDS:
            module.fail_json(msg=f"fields.{key} is not a ledger column; use one of {', '.join(ALLOWED_FIELDS)}")
        changes.append(sql.SQL("{} = %s").format(sql.Identifier(key)))
        params.append(value)
    if p["status"]:
        changes.append(sql.SQL("status = %s"))
        params.append(p["status"])
        if p["status"] != "running":
            changes.append(sql.SQL("finished_at = clock_timestamp()"))
    if p["error"]:
        changes.append(sql.SQL("error = coalesce(error || '; ', '') || %s"))
        params.append(p["error"])
    if not changes:
        module.fail_json(msg="nothing to record: give phase + phase_status, fields, status or error")
    if module.check_mode:
        return {"changed": True, "msg": f"would record into run #{p['run_id']}"}
    cur.execute(sql.SQL("UPDATE {}.runs SET {} WHERE id = %s").format(s, sql.SQL(", ").join(changes)),
                params + [p["run_id"]])
    cur.execute(sql.SQL("UPDATE {}.lock SET heartbeat_at = clock_timestamp() WHERE run_id = %s").format(s),
                (p["run_id"],))
    run = read_runs(cur, schema, sql.SQL("id = %s"), (p["run_id"],), 1)[0]
    return {"changed": True, "run": run}


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="present", choices=["present", "query"]),
        run_id=dict(type="int"),
        phase=dict(type="str"),
        phase_status=dict(type="str", choices=["started", "succeeded", "failed", "skipped", "not_implemented"]),
        facts=dict(type="dict", default={}),
        fields=dict(type="dict", default={}, options=dict(
            from_revision=dict(type="str"), to_revision=dict(type="str"), backup_path=dict(type="str"),
            backup_verified=dict(type="bool"))),
        status=dict(type="str", choices=["running", "succeeded", "failed", "rolled_back", "rollback_failed"]),
        error=dict(type="str"),
        version=dict(type="str"),
        limit=dict(type="int", default=5),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "present", ["run_id"]), ("state", "query", ["version"])])
    p = module.params
    p["fields"] = {k: v for k, v in (p["fields"] or {}).items() if v is not None}
    schema = p["ops_schema"]
    conn = connect(module)
    try:
        with conn.cursor() as cur:
            if p["state"] == "query":
                if not ops_schema_exists(cur, schema):
                    result = {"changed": False, "runs": [], "last_success": None}
                else:
                    runs = read_runs(cur, schema, sql.SQL("version = %s"), (p["version"],), p["limit"])
                    ok = read_runs(cur, schema, sql.SQL("version = %s AND status = 'succeeded'"), (p["version"],), 1)
                    result = {"changed": False, "runs": runs, "last_success": ok[0] if ok else None}
            else:
                if not ops_schema_exists(cur, schema):
                    if module.check_mode:
                        module.exit_json(changed=True, msg="would record (the ledger does not exist yet)")
                    module.fail_json(msg=f"no run ledger in schema {schema}; open a run with migration_lock first")
                result = record(module, cur, schema, p)
        conn.rollback() if module.check_mode else conn.commit()
    except Exception as exc:
        conn.rollback()
        module.fail_json(msg=f"migration_ledger failed: {exc}")
    finally:
        conn.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
