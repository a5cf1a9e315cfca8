#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_preflight
short_description: State the migration estimate the runbook asks for before anything changes
description:
  - Read-only look at the target database for a migration plan (runbook 2.1.1), in one C(READ ONLY) transaction.
  - Reports the server version and the settings that matter to a migration, the database size, the size and
    estimated rows of each table the plan touches, the rows each backfill will touch (the planner's estimate from
    C(EXPLAIN), cheap; the table's row estimate when the backfill's columns do not exist yet), the current Alembic
    revision, and the free disk space where the backup goes.
  - Says whether the plan is already applied (RV(already_applied)), that is whether the database is at the
    plan's C(schema.revision) (or the plan changes no schema) and no row matches any backfill's C(where) filter
    any more, checked exactly with one C(EXISTS) per backfill bounded by O(pending_timeout). A rerun of a
    finished migration then changes nothing, and the backup role takes no backup for it. A backfill without a
    C(where) filter, a plan with C(schema.tool=sql), or a check that times out is never taken as applied.
  - Checks that the health holds of each backfill (C(max_replication_lag_s), C(hold_on_autovacuum),
    C(max_archive_backlog)) can see with the connecting role's privileges. A hold that cannot is a warning; when the
    backfill lists it in C(required_holds) the module fails, so the migration stops in the plan phase, before the
    backup and the schema change, with the privilege to grant.
  - Never changes anything, in or out of check mode.
  - Every SQL fragment of the plan (backfill C(set) and C(where), check C(where), C(predicate) and C(sql)) is parsed
    with PostgreSQL's grammar (pglast) before the module connects, as M(migration_plan) does; a fragment that is
    not exactly one expression (or one SELECT for C(sql)) fails the module, naming the field, and nothing is run.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  plan:
    description: The migration plan (as returned by M(migration_plan)).
    type: dict
    required: true
  backup_dir:
    description:
      - Directory on this host where the backup will be written; its free space is reported.
      - Unless O(allow_ephemeral_backup_dir) is set, or the plan turns the backup off, the module fails (before it
        connects) when this directory will not outlive the job (inside an AWX or ansible-runner private data
        directory, or on a tmpfs or ramfs).
    type: path
  allow_ephemeral_backup_dir:
    description: Accept a O(backup_dir) that will not outlive the job.
    type: bool
    default: false
  pending_timeout:
    description:
      - Seconds each backfill's exact C(EXISTS) check may take (only run when the schema is already at the plan's
        revision); one that takes longer counts as rows left to do.
    type: float
    default: 5.0
  disk_margin:
    description:
      - Free space the backup needs in O(backup_dir), as a multiple of the database size; RV(disk.enough) says
        whether it is there. The plan role passes C(plan_disk_margin), which defaults to the backup role's
        C(backup_disk_margin), so the estimate and the backup's own check agree.
    type: float
    default: 1.2
'''

EXAMPLES = r'''
- name: Estimate the migration
  pg_preflight:
    login_db: "{{ pgmigrate_db_name }}"
    plan: "{{ __plan_loaded.plan }}"
    backup_dir: "{{ pgmigrate_backup_dir }}"
  register: __plan_preflight
'''

RETURN = r'''
server:
  description: Server version and the settings that matter to a migration.
  returned: always
  type: dict
  sample: {version: "15.18", version_num: 150018, settings: {lock_timeout: "0", statement_timeout: "0"}}
database:
  description: Name and size of the database, and its current Alembic revision (null when it has none).
  returned: always
  type: dict
  sample: {name: football_prediction, size_bytes: 52428800, size: 50 MB, alembic_revision: v1_0_0}
tables:
  description: Tables the plan touches with estimated rows and total size (missing tables have C(exists=false)).
  returned: always
  type: list
  elements: dict
backfills:
  description: Rows each backfill will touch (estimate) and how that was estimated.
  returned: always
  type: list
  elements: dict
holds:
  description: The connecting role's privileges that the health holds need, and each backfill's holds that cannot
    see with them (with why and what to grant).
  returned: always
  type: dict
  sample: {privileges: {role: football, pg_read_all_stats: false, pg_ls_archive_statusdir: false},
           blind: [{backfill: predictions_accuracy, hold: replication_lag, required: true, message: "..."}]}
already_applied:
  description: Whether the plan has nothing left to change in this database (see the description).
  returned: always
  type: bool
  sample: false
already_applied_reason:
  description: Why the plan is, or is not, taken as already applied.
  returned: always
  type: str
  sample: "the database is at v2_0_0 and no row is left to backfill (predictions_accuracy)"
disk:
  description:
    - Free bytes where the backup goes, and whether that holds the database size times O(disk_margin)
      (C(enough)); C(problem) says what is missing and what to change, null when enough.
  returned: when backup_dir is given
  type: dict
  sample: {backup_dir: /var/backups/pgmigrate, measured_at: /var/backups, free_bytes: 1073741824, free: 1.0 GB,
           needed_bytes: 62914560, disk_margin: 1.2, enough: true, problem: null}
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible.module_utils.pgmigrate import alembic_revision, connect, connection_argument_spec, resolve_table, sql
from ansible.module_utils.pgmigrate import pretty_bytes as pretty
from ansible.module_utils.pgmigrate_holds import (
    blind_holds,
    configured_holds,
    hint_for_warning,
    read_privileges,
    refusal,
)
from ansible.module_utils.pgmigrate_paths import DEFAULT_DISK_MARGIN, ephemeral_reason, free_space
from ansible.module_utils.pgmigrate_sql import HAS_PGLAST, PGLAST_IMP_ERR, plan_sql_errors, wrap

SETTINGS = ("server_version", "lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout",
            "max_wal_size", "maintenance_work_mem", "work_mem", "shared_buffers", "wal_level", "archive_mode",
            "max_connections", "autovacuum", "synchronous_commit")


def table_facts(cur, name: str) -> dict:
    found = resolve_table(cur, name)
    if not found:
        return {"name": name, "exists": False}
    cur.execute("SELECT greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid) "
                "FROM pg_class c WHERE c.oid = %s", (found["oid"],))
    rows, size = cur.fetchone()
    return {"name": f"{found['schema']}.{found['table']}", "exists": True, "rows_estimate": rows,
            "total_bytes": size, "total": pretty(size)}


def backfill_estimate(cur, backfill: dict) -> dict:
    table = table_facts(cur, backfill["table"])
    out = {"name": backfill["name"], "table": backfill["table"]}
    if not table["exists"]:
        return dict(out, rows_estimate=None, method="table does not exist yet")
    where = backfill.get("where")
    if not where:
        return dict(out, rows_estimate=table["rows_estimate"], method="all rows (no where filter)")
    cur.execute("SAVEPOINT estimate")
    try:
        # The filter is SQL from the plan by design (operator-owned configuration), parsed as exactly one
        # expression before the module connected, run by EXPLAIN only, inside a READ ONLY transaction.
        cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(
            sql.Identifier(*table["name"].split(".", 1)), sql.SQL(wrap(where))))
        rows = int(cur.fetchone()[0][0]["Plan"]["Plan Rows"])
        cur.execute("RELEASE SAVEPOINT estimate")
        return dict(out, rows_estimate=rows, method="planner estimate of the where filter")
    except Exception as exc:  # columns created by this migration do not exist yet
        cur.execute("ROLLBACK TO SAVEPOINT estimate")
        return dict(out, rows_estimate=table["rows_estimate"],
                    method=f"all rows of the table (filter not plannable before the schema phase: "
                           f"{str(exc).splitlines()[0]})")


def backfill_pending(cur, backfill: dict, timeout_s: float) -> bool | None:
    """Whether any row still matches the backfill's where filter: exact, read-only, bounded by timeout_s.

    None when it cannot be known (no filter: every row is the backfill's; the table is missing; the check
    failed or took too long)."""
    table = resolve_table(cur, backfill["table"])
    where = backfill.get("where")
    if not table or not where:
        return None
    cur.execute("SAVEPOINT pending")
    try:
        cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(timeout_s * 1000)}ms",))
        # The filter is the plan's SQL, parsed as exactly one expression before the module connected.
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(
            sql.Identifier(table["schema"], table["table"]), sql.SQL(wrap(where))))
        pending = bool(cur.fetchone()[0])
        cur.execute("ROLLBACK TO SAVEPOINT pending")  # also undoes the local statement_timeout
        return pending
    except Exception:
        cur.execute("ROLLBACK TO SAVEPOINT pending")
        return None


def already_applied(cur, plan: dict, revision: str | None, timeout_s: float) -> tuple[bool, str]:
    """Whether the plan has nothing left to change: schema at its revision, no row left to backfill."""
    schema = plan.get("schema") or {}
    tool = schema.get("tool", "alembic") if plan.get("schema") is not None else "none"
    if tool == "sql":
        return False, "the plan's schema change is SQL files, whose state the database does not record"
    if tool == "alembic" and revision != schema.get("revision"):
        return False, (f"the database is at {revision or 'no Alembic revision'}, "
                       f"the plan's revision is {schema.get('revision')}")
    at = f"the database is at {revision}" if tool == "alembic" else "the plan changes no schema"
    left = []
    for backfill in plan.get("backfills", []):
        pending = backfill_pending(cur, backfill, timeout_s)
        if pending is None:
            return False, (f"{at}, but backfill {backfill['name']} cannot be checked for rows left to do "
                           "(no where filter, a missing table, or the check took too long)")
        if pending:
            left.append(backfill["name"])
    if left:
        return False, f"{at}, and rows are left to backfill ({', '.join(left)})"
    names = ", ".join(b["name"] for b in plan.get("backfills", [])) or "the plan has none"
    return True, f"{at} and no row is left to backfill ({names})"


def hold_facts(cur, backfills: list) -> dict:
    """Which holds of which backfill cannot see with this role's privileges."""
    privileges = read_privileges(cur)
    blind = []
    for backfill in backfills:
        required = backfill.get("required_holds") or []
        for kind, message in blind_holds(configured_holds(backfill), privileges).items():
            blind.append({"backfill": backfill["name"], "hold": kind, "required": kind in required,
                          "message": message})
    return {"privileges": privileges, "blind": blind}


def check_holds(module, backfills: list, holds: dict) -> None:
    """Warn for every blind hold; stop the plan phase when a backfill requires one of them."""
    refusals = []
    for backfill in backfills:
        mine = {b["hold"]: b["message"] for b in holds["blind"] if b["backfill"] == backfill["name"]}
        text = refusal(backfill["name"], backfill.get("required_holds") or [], mine)
        if text:
            refusals.append(text)
    for b in holds["blind"]:
        if not b["required"]:
            module.warn(f"backfill {b['backfill']}: {b['message']}{hint_for_warning(b['hold'])}")
    if refusals:
        module.fail_json(msg="The plan requires health holds this login cannot see, so the migration stops in the "
                             "plan phase, before the backup and the schema change: " + " | ".join(refusals),
                         holds=holds)


def refuse_ephemeral_backup_dir(module, plan: dict) -> None:
    """Stop in the plan phase when the backup would not outlive the job (nothing is locked or written yet)."""
    backup_dir = module.params["backup_dir"]
    if not backup_dir or module.params["allow_ephemeral_backup_dir"]:
        return
    if not (plan.get("backup") or {}).get("enabled", True):
        return
    reason = ephemeral_reason(backup_dir)
    if reason:
        module.fail_json(msg=f"backup directory refused: {reason}, so the backup would be gone while the ledger "
                             "still points at it. Set pgmigrate_backup_dir to persistent storage (default "
                             "/var/backups/pgmigrate; under AWX a volume mounted into the execution environment), "
                             "or, if that is intended, -e pgmigrate_backup_allow_ephemeral=true. Nothing was changed.")


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(plan=dict(type="dict", required=True), backup_dir=dict(type="path"),
                         allow_ephemeral_backup_dir=dict(type="bool", default=False),
                         pending_timeout=dict(type="float", default=5.0),
                         disk_margin=dict(type="float", default=DEFAULT_DISK_MARGIN))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    plan = module.params["plan"]
    if module.params["disk_margin"] <= 0:
        module.fail_json(msg=f"disk_margin must be > 0 (got {module.params['disk_margin']}); set plan_disk_margin "
                             "(default backup_disk_margin)")
    refuse_ephemeral_backup_dir(module, plan)
    if not HAS_PGLAST:
        module.fail_json(msg=missing_required_lib("pglast"), exception=PGLAST_IMP_ERR)
    refused = plan_sql_errors(plan)
    if refused:
        module.fail_json(msg=f"the plan's SQL is refused ({len(refused)} fragment{'s' if len(refused) > 1 else ''}): "
                             + "; ".join(refused), errors=refused)
    conn = connect(module)
    result: dict = {"changed": False}
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (list(SETTINGS),))
            settings = {n: (f"{s}{u}" if u and u not in ("B",) and s not in ("0", "-1") else s)
                        for n, s, u in cur.fetchall()}
            cur.execute("SELECT current_setting('server_version_num')::int, current_database(), "
                        "pg_database_size(current_database())")
            version_num, dbname, dbsize = cur.fetchone()
            result["server"] = {"version": settings.pop("server_version", ""), "version_num": version_num,
                                "settings": settings}
            revision = alembic_revision(cur)
            result["database"] = {"name": dbname, "size_bytes": dbsize, "size": pretty(dbsize),
                                  "alembic_revision": revision}
            names = list(dict.fromkeys((plan.get("database") or {}).get("tables", [])
                                       + [b["table"] for b in plan.get("backfills", [])]))
            result["tables"] = [table_facts(cur, n) for n in names]
            result["backfills"] = [backfill_estimate(cur, b) for b in plan.get("backfills", [])]
            result["holds"] = hold_facts(cur, plan.get("backfills", []))
            result["already_applied"], result["already_applied_reason"] = already_applied(
                cur, plan, revision, module.params["pending_timeout"])
        conn.rollback()
    except Exception as exc:
        module.fail_json(msg=f"preflight query failed: {exc}")
    finally:
        conn.close()
    check_holds(module, plan.get("backfills", []), result["holds"])
    backup_dir = module.params["backup_dir"]
    if backup_dir:
        result["disk"] = free_space(backup_dir, result["database"]["size_bytes"], module.params["disk_margin"],
                                    "disk_margin (plan_disk_margin, default backup_disk_margin)")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
