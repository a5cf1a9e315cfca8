#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_fleet
short_description: Where one database of a fleet stands, and its entry in the fleet report
description:
  - Used by C(fleet.yml), which runs the whole runbook on every host of C(pgmigrate_db) (one host, one database),
    canary first, then in waves.
  - O(state=status) reads the database's run ledger and Alembic revision (read-only) and says whether the database
    is already at the target of O(version) (RV(at_target)) - its newest migration run of that version succeeded,
    its revision is still that run's target and no lock is held - so that a rerun of the fleet skips it.
  - O(state=recorded) writes the database's entry (status, wave, from/to revision, rows backfilled, duration,
    backup, rollback, all from its ledger) to C(<fleet_dir>/databases/<name>.json), a C(not_started) entry for each
    database of O(fleet) that has none from this run, and then renders from every entry of O(fleet_dir) the
    fleet summary C(fleet_report.json), C(fleet_report.md) and the fleet metrics O(metrics_file) (label
    C(database)), under a lock, so that the databases of one run, the slices of an AWX sliced job and reruns
    write one report.
  - O(state=application) records, without touching a database, how the fleet's shared application hosts (group
    C(pgmigrate_app)) ended (O(application)) in C(<fleet_dir>/application.json) and renders the fleet report again.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: O(state=status) changes nothing anyway; O(state=recorded) returns the entry and writes nothing.
  diff_mode:
    support: none
options:
  state:
    description:
      - V(status) reads where the database stands; V(recorded) writes its entry and the fleet report; V(application)
        writes how the application hosts ended.
    type: str
    choices: [status, recorded, application]
    default: status
  name:
    description: Name of the database in the fleet (the inventory host), unique in the fleet. Required unless
      O(state=application).
    type: str
  version:
    description: Version the fleet migrates to.
    type: str
    required: true
  event:
    description:
      - O(state=recorded) - V(started) (the database's migration starts), V(finished) (it ended; its ledger run
        O(run_id) says how), V(skipped) (already at the target).
    type: str
    choices: [started, finished, skipped]
    default: finished
  run_id:
    description: Ledger id of the database's run of this fleet run (unset when it failed before a run opened).
    type: int
  error:
    description: The failure's message when the database failed before its run recorded it.
    type: str
  fleet_dir:
    description: Directory of the fleet report (the same for every database of the fleet). Required with V(recorded).
    type: path
  fleet:
    description: The databases of this fleet run (C(ansible_play_hosts_all)); those without an entry are not started.
    type: list
    elements: str
    default: []
  waves:
    description: The waves of this fleet run, in order, each a list of database names.
    type: list
    elements: list
    default: []
  invocation:
    description:
      - Identifies this fleet run (one C(ansible-playbook) process). Defaults to the control host, the process id and
        the start time of the C(ansible-playbook) process above the module.
    type: str
  application:
    description:
      - O(state=application) - C(status) (V(skipped), V(deployed) or V(failed)), C(hosts) (the application hosts),
        C(deployed) (the hosts deployed by this task; a fleet run's earlier ones are kept) and C(reason).
    type: dict
  max_fail_percentage:
    description: Share of a wave's databases that may fail before the fleet stops (as C(fleet.yml) applies it).
    type: int
    default: 0
  metrics_file:
    description: File of the fleet metrics. Defaults to C(<fleet_dir>/fleet.prom).
    type: path
  environment:
    description: Value of the C(environment) label of the metrics.
    type: str
    default: default
'''

EXAMPLES = r'''
- name: Find out whether the database is already at the target
  migration_fleet:
    name: "{{ inventory_hostname }}"
    version: "{{ version }}"
  register: __fleet_status

- name: Record the database's outcome in the fleet report
  migration_fleet:
    state: recorded
    name: "{{ inventory_hostname }}"
    version: "{{ version }}"
    run_id: "{{ pgmigrate_run_id | default(omit) }}"
    fleet_dir: /var/lib/pgmigrate/reports/fleet/2.0.0
    fleet: "{{ ansible_play_hosts_all }}"
'''

RETURN = r'''
at_target:
  description: Whether the database is already at the target of the version (O(state=status)).
  returned: always
  type: bool
reason:
  description: Why it is or is not at the target.
  returned: always
  type: str
revision:
  description: The database's Alembic revision (null without an alembic_version table).
  returned: always
  type: str
run:
  description: The figures of the database's run that the fleet report keeps (status, revisions, rows, backup...).
  returned: when the ledger has a run of the version
  type: dict
entry:
  description: The entry written (O(state=recorded)).
  returned: when O(state=recorded)
  type: dict
summary:
  description: The fleet summary as written to C(fleet_report.json).
  returned: when O(state=recorded) and not in check mode
  type: dict
files:
  description: Paths of C(fleet_report.json), C(fleet_report.md) and the metrics file.
  returned: when O(state=recorded) and not in check mode
  type: dict
application:
  description: The application record written (O(state=application)).
  returned: when O(state=application) and not in check mode
  type: dict
'''

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate_fleet import record, record_application, run_figures, utc_now

from ansible.module_utils.pgmigrate import (
    alembic_revision,
    connect,
    connection_argument_spec,
    ops_schema_exists,
    read_run,
    read_runs,
)
from ansible.module_utils.pgmigrate_owner import find_owner_pid, hostname, process_start

try:
    from psycopg2 import sql
except ImportError:  # connect() reports the missing library
    sql = None


def where_it_stands(module) -> dict:
    p = module.params
    conn = connect(module)
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            revision = alembic_revision(cur)
            schema = p["ops_schema"]
            if not ops_schema_exists(cur, schema):
                return {"at_target": False, "reason": "never migrated (no run ledger)", "revision": revision}
            newest = read_runs(cur, schema, sql.SQL("kind = 'migrate' AND version = %s"), (p["version"],), limit=1)
            chosen = read_run(cur, schema, p["run_id"]) if p["run_id"] else (newest[0] if newest else None)
            cur.execute(sql.SQL("SELECT run_id FROM {}.lock").format(sql.Identifier(schema)))
            lock = cur.fetchone()
    finally:
        conn.rollback()
        conn.close()
    out = {"revision": revision, "run": run_figures(chosen)}
    run = newest[0] if newest else None
    if run is None:
        out.update(at_target=False, reason=f"no migration run of {p['version']} in the ledger")
    elif lock is not None:
        out.update(at_target=False, reason=f"run #{lock[0]} holds the migration lock (an interrupted run resumes)")
    elif run["status"] != "succeeded":
        out.update(at_target=False, reason=f"the newest run of {p['version']}, #{run['id']}, is {run['status']}")
    elif run["to_revision"] != revision:
        out.update(at_target=False, reason=f"the revision is {revision}, not {run['to_revision']} that run "
                                           f"#{run['id']} migrated to")
    else:
        out.update(at_target=True, reason=f"run #{run['id']} migrated it to {run['to_revision']} and it is still there")
    return out


def default_invocation() -> str:
    pid = find_owner_pid()
    return f"{hostname()}:{pid}:{process_start(pid) if pid else '-'}"


def record_app(module) -> None:
    p = module.params
    app = p["application"]
    if app.get("status") not in ("skipped", "deployed", "failed"):
        module.fail_json(msg=f"application.status is {app.get('status')!r}: it must be skipped, deployed or failed")
    if module.check_mode:
        module.exit_json(changed=False)
    try:
        written = record_application(p["fleet_dir"], app, p["invocation"] or default_invocation(), p["version"],
                                     p["max_fail_percentage"],
                                     p["metrics_file"] or os.path.join(p["fleet_dir"], "fleet.prom"), p["environment"])
    except OSError as exc:
        module.fail_json(msg=f"cannot write the fleet report in {p['fleet_dir']}: {exc}; check "
                             "pgmigrate_fleet_report_dir and its permissions")
    module.exit_json(changed=True, **written)


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="status", choices=["status", "recorded", "application"]),
        name=dict(type="str"),
        version=dict(type="str", required=True),
        event=dict(type="str", default="finished", choices=["started", "finished", "skipped"]),
        run_id=dict(type="int"),
        error=dict(type="str"),
        fleet_dir=dict(type="path"),
        fleet=dict(type="list", elements="str", default=[]),
        waves=dict(type="list", elements="list", default=[]),
        invocation=dict(type="str"),
        max_fail_percentage=dict(type="int", default=0),
        metrics_file=dict(type="path"),
        environment=dict(type="str", default="default"),
        application=dict(type="dict"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "recorded", ("fleet_dir", "name")), ("state", "status", ("name",)),
                                        ("state", "application", ("fleet_dir", "application"))])
    p = module.params
    if not 0 <= p["max_fail_percentage"] <= 100:
        module.fail_json(msg=f"max_fail_percentage is {p['max_fail_percentage']}: it must be between 0 and 100 "
                             "(pgmigrate_fleet_max_fail_percentage)")
    if p["state"] == "application":
        record_app(module)
    stands = where_it_stands(module)
    if p["state"] == "status":
        module.exit_json(changed=False, **stands)

    waves = [[str(h) for h in wave] for wave in p["waves"]]
    wave = next((i for i, w in enumerate(waves, 1) if p["name"] in w), None)
    run = stands.get("run")
    if p["event"] == "started":
        status = "running"
    elif p["event"] == "skipped":
        status = "already_at_target"
    elif p["run_id"] and run:
        status = run["status"] if run["status"] != "running" else "failed"
    else:
        status = "failed"
    entry = {"name": p["name"], "invocation": p["invocation"] or default_invocation(), "status": status,
             "wave": wave, "wave_size": len(waves[wave - 1]) if wave else None,
             "max_fail_percentage": p["max_fail_percentage"], "updated_at": utc_now(), "run": run,
             "revision_now": stands["revision"], "error": p["error"] if status in ("failed",) else None}
    if p["event"] == "started":
        entry["started_at"] = entry["updated_at"]
    if p["event"] == "started" or (p["event"] == "finished" and not p["run_id"]):
        # The newest run of the version is an earlier one: this fleet run has not (yet) opened its own.
        entry["run"] = None
    if p["event"] == "finished" and status == "failed" and not entry["error"] and run:
        entry["error"] = run.get("error")
    if module.check_mode:
        module.exit_json(changed=False, entry=entry, **stands)
    try:
        written = record(p["fleet_dir"], entry, [str(h) for h in p["fleet"]], entry["invocation"], waves,
                         p["version"], p["max_fail_percentage"],
                         p["metrics_file"] or os.path.join(p["fleet_dir"], "fleet.prom"), p["environment"])
    except OSError as exc:
        module.fail_json(msg=f"cannot write the fleet report in {p['fleet_dir']}: {exc}; check "
                             "pgmigrate_fleet_report_dir and its permissions")
    module.exit_json(changed=True, entry=entry, **stands, **written)


if __name__ == "__main__":
    main()
