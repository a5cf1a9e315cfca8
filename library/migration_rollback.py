#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_rollback
short_description: Work out what the rollback of a migration run must undo, and refuse what would lose data
description:
  - Read-only. Reads the run ledger (the run O(run_id), or the newest migration run of O(version)) and the database,
    and returns the steps that return the system to where the run started, in reverse order of the runbook
    (traffic back to the previous colour, previous configuration, then the database).
  - The deploy steps come only from the facts the run's deploy phase recorded (C(colour_from), C(colour_to),
    C(config_backup), ...); a deploy phase that recorded none has nothing to switch back, which RV(notes) says.
    The deploy records its colours and configuration backup before its switch and C(switch_started_at) when the
    switch begins, so traffic goes back whenever a switch may have happened (the phase succeeded, or failed or was
    killed after the switch began), and the configuration backup is put back whenever there is one.
  - A rolling update records each instance's release (and configuration backup) before it changes it
    (C(instances_previous)); the step V(roll_back) takes those instances back to their releases one at a time.
  - The database goes back by an Alembic downgrade to the run's C(from_revision) or by restoring the run's verified
    backup. O(strategy) forces one; V(auto) follows the plan's C(rollback.restore_backup) (O(restore_backup)) -
    V(always), V(never), or V(if_data_changed), which restores when the run's backfills updated rows (counted in
    C(migration_ops.batch_passes), committed per batch, so a killed run counts too).
  - Refuses (fails, nothing changed) when the backup a restore needs is missing, damaged or unverified, when a
    downgrade cannot undo what the run did, and when the rollback would lose data written after the backup - rows a
    restore would discard, or values a downgrade would drop with the columns the migration added. Rows written after
    the backup are found against the backup's manifest (per table, the largest single-column integer primary key
    and the write-time columns at the backup's snapshot, else the row count). The refusal names every table and
    its row count; O(discard_new_rows=true) accepts the loss.
  - A run already rolled back, a version without a run, or a run that changed nothing still in place is reported
    with RV(nothing_to_do) (not a failure).
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Reads only, in and out of check mode.
  diff_mode:
    support: none
options:
  state:
    description:
      - V(plan) works out the steps (and refuses what cannot be done). V(find) only finds the run (to load its
        plan first) and returns RV(run) and RV(nothing_to_do) without judging anything.
    type: str
    choices: [plan, find]
    default: plan
  run_id:
    description: The run to roll back. Either this or O(version).
    type: int
  version:
    description: Version whose newest migration run to roll back (with O(run_id), it must be that run's version).
    type: str
  strategy:
    description: How the database goes back. V(auto) follows O(restore_backup).
    type: str
    choices: [auto, downgrade, restore]
    default: auto
  restore_backup:
    description: The plan's C(rollback.restore_backup), used with O(strategy=auto).
    type: str
    choices: [never, if_data_changed, always]
    default: if_data_changed
  discard_new_rows:
    description: Accept losing data written after the backup (rows a restore discards, values a downgrade drops).
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Work out what the rollback of the newest 2.0.0 run must undo
  migration_rollback:
    login_db: football_prediction
    version: 2.0.0
    restore_backup: "{{ plan.rollback.restore_backup | default('if_data_changed') }}"
  register: __rollback_plan

- name: Force a restore of run 42's backup, accepting the loss of newer rows
  migration_rollback:
    login_db: football_prediction
    run_id: 42
    strategy: restore
    discard_new_rows: true
'''

RETURN = r'''
run:
  description: The run to roll back (ledger columns; phases as their statuses), or null when there is none.
  returned: always
  type: dict
nothing_to_do:
  description: Whether there is nothing to roll back (RV(reason) says why).
  returned: always
  type: bool
reason:
  description: Why there is nothing to roll back.
  returned: when nothing_to_do
  type: str
steps:
  description: The steps to undo, in order; each has C(step) (switch_back, roll_back, config_restore, downgrade,
    restore) and C(what), plus its arguments (C(colour), C(instances), C(path), C(to), C(backup_path)).
  returned: always
  type: list
  elements: dict
  sample: [{step: restore, backup_path: /srv/backups/fp-2.0.0-run42.dump, revision: v1_0_0,
            what: "database restored from the verified backup ..."}]
strategy:
  description: V(downgrade) or V(restore), or null when the database has nothing to undo.
  returned: always
  type: str
strategy_reason:
  description: Why that strategy.
  returned: always
  type: str
losses:
  description: Data the rollback discards (accepted with O(discard_new_rows)), per table or table.column, with rows
    and why.
  returned: always
  type: dict
notes:
  description: What is left as it is, and why (for example a deploy phase that recorded no colours).
  returned: always
  type: list
  elements: str
live_revision:
  description: The database's Alembic revision now.
  returned: always
  type: str
from_revision:
  description: The revision the run started from (where a downgrade goes).
  returned: when the run is found
  type: str
rows_updated:
  description: Rows the run's backfills updated.
  returned: when the run is found
  type: int
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate_rollback import RollbackRefused, plan_rollback

from ansible.module_utils.pgmigrate import connect, connection_argument_spec


def summary(result: dict) -> str:
    if result["nothing_to_do"]:
        return f"Nothing to roll back: {result['reason']}"
    if not result["steps"]:
        run = result["run"]
        return f"found run #{run['id']} ({run['version']}, {run['status']})"
    run = result["run"]
    return (f"rollback of run #{run['id']} ({run['version']}, {run['status']}): "
            + "; then ".join(s["what"] for s in result["steps"])
            + (f" [{result['strategy_reason']}]" if result["strategy"] else ""))


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="plan", choices=["plan", "find"]),
        run_id=dict(type="int"),
        version=dict(type="str"),
        strategy=dict(type="str", default="auto", choices=["auto", "downgrade", "restore"]),
        restore_backup=dict(type="str", default="if_data_changed", choices=["never", "if_data_changed", "always"]),
        discard_new_rows=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_one_of=[("run_id", "version")])
    p = module.params
    if p["run_id"] is not None and p["run_id"] < 1:
        module.fail_json(msg=f"run_id must be a positive ledger id, got {p['run_id']}; see migration_ops.runs")
    conn = connect(module)
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            database = cur.fetchone()[0]
            result = plan_rollback(cur, database, p, judge=p["state"] == "plan")
    except RollbackRefused as exc:
        conn.rollback()
        module.fail_json(msg=f"rollback refused: {exc}")
    except Exception as exc:
        conn.rollback()
        module.fail_json(msg=f"migration_rollback could not read the ledger or the database: {str(exc).strip()}")
    finally:
        conn.close()
    module.exit_json(changed=False, msg=summary(result), **result)


if __name__ == "__main__":
    main()
