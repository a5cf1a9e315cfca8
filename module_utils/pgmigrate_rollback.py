# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a rollback of a run must undo, read from the ledger and the database (read-only).

- The run: by id, or the newest migration run of a version.
- What it changed: the deploy phase's facts (colours, configuration backup), the schema
  (live Alembic revision against the run's from_revision), the data (rows its backfills
  updated, from migration_ops.batch_passes, which every batch commits, so a killed run counts).
- How the database goes back: a downgrade or a restore of the run's verified backup, as the
  plan's rollback.restore_backup says, unless the operator forces one.
- What that would lose: rows written after the backup (a restore), values in columns a
  downgrade drops written after the backup, measured against the backup's manifest
  (watermarks: the largest integer primary key and the write-time columns of each table
  at the backup's snapshot).
"""
from __future__ import annotations

from ansible.module_utils.pgmigrate import (
    RUN_COLUMNS,
    alembic_revision,
    ops_schema_exists,
    read_runs,
    resolve_table,
    sql,
)
from ansible.module_utils.pgmigrate_backup import (
    SYSTEM_SCHEMAS,
    BackupError,
    check_files,
    list_tables,
    manifest_path,
    read_manifest,
)

MIGRATION_KINDS = ("migrate", "phase")
STRATEGIES = ("auto", "downgrade", "restore")


class RollbackRefused(Exception):
    """The rollback cannot be done as asked; the message says why and what to do."""


def find_run(cur, schema: str, run_id: int | None, version: str | None) -> dict | None:
    if run_id:
        found = read_runs(cur, schema, sql.SQL("id = %s"), (run_id,), limit=1)
    else:
        found = read_runs(cur, schema, sql.SQL("version = %s AND kind = ANY(%s)"), (version, list(MIGRATION_KINDS)),
                          limit=1)
    return found[0] if found else None


def rows_updated_by_run(cur, schema: str, run_id: int) -> int:
    """Rows the run's backfills committed (every batch updates its pass, so a killed run counts too)."""
    if resolve_table(cur, "batch_passes", schema=schema) is None:
        return 0
    cur.execute(sql.SQL("SELECT coalesce(sum(rows_updated), 0) FROM {}.batch_passes WHERE run_id = %s").format(
        sql.Identifier(schema)), (run_id,))
    return int(cur.fetchone()[0])


def phase(run: dict, name: str) -> dict:
    info = run["phases"].get(name)
    return info if isinstance(info, dict) else {}


def deploy_steps(run: dict) -> tuple[list[dict], list[str]]:
    """The way back of the deploy phase, only from the facts it recorded (interface (c) of the deploy issue).

    The deploy records its colours and configuration backup before it switches, and switch_started_at
    when the switch begins: traffic goes back whenever a switch may have happened (the phase succeeded, or
    it failed or was killed after the switch began). A rolling update records each instance's release
    before it changes it (instances_previous): those instances go back one at a time."""
    info = phase(run, "deploy")
    facts = info.get("facts") or {}
    status = info.get("status") or "not reached"
    if facts.get("strategy") == "rolling" and not facts.get("colour_from"):
        return rolling_steps(facts, status)
    if not facts.get("colour_from") and not facts.get("config_backup"):
        return [], [f"deploy: nothing to switch back (the deploy phase recorded {status} and no colours)"]
    steps, notes = [], []
    switched = status == "succeeded" or bool(facts.get("switch_started_at"))
    if facts.get("colour_from") and switched:
        steps.append({"step": "switch_back", "colour": facts["colour_from"], "from_colour": facts.get("colour_to"),
                      "version": facts.get("version_from"), "strategy": facts.get("strategy"),
                      "runtime": facts.get("runtime"), "instances": facts.get("instances") or [],
                      "what": f"traffic back to {facts['colour_from']} ({facts.get('version_from') or '?'}), "
                              f"{facts.get('colour_to') or 'the new colour'} stopped"})
    elif facts.get("colour_from"):
        notes.append(f"deploy: nothing to switch back (the deploy phase {status} before its switch began: "
                     f"{facts['colour_from']} kept the traffic)")
    else:
        notes.append(f"deploy: nothing to switch back (no colour was live before the deploy phase, {status})")
    if facts.get("config_backup"):
        steps.append({"step": "config_restore", "path": facts["config_backup"],
                      "what": f"previous configuration restored from {facts['config_backup']}"})
    return steps, notes


def rolling_steps(facts: dict, status: str) -> tuple[list[dict], list[str]]:
    """A rolling update's way back: each instance it changed, in the update's order, to its previous release."""
    previous = facts.get("instances_previous") or {}
    order = [n for n in facts.get("instances") or [] if n in previous] + \
        sorted(n for n in previous if n not in (facts.get("instances") or []))
    back = [{"name": n, "version": previous[n].get("version"), "config_backup": previous[n].get("config_backup")}
            for n in order if (previous[n] or {}).get("version")]
    notes = [f"deploy: {n} had no release before the rolling update ({status}): left as it is"
             for n in order if not (previous[n] or {}).get("version")]
    if not back:
        return [], notes or [f"deploy: nothing to roll back (the rolling update, {status}, changed no instance)"]
    return [{"step": "roll_back", "instances": back, "strategy": "rolling", "runtime": facts.get("runtime"),
             "what": "instances rolled back one at a time (those out of the upstream first): " + ", ".join(
                 f"{i['name']} to {i['version']}" + (" (previous configuration restored)" if i["config_backup"]
                                                     else "") for i in back)}], notes


def backup_problem(run: dict, database: str) -> tuple[dict | None, str | None]:
    """The run's backup manifest, or why it cannot be restored."""
    path = run.get("backup_path")
    if not path:
        return None, f"run #{run['id']} recorded no backup (its backup phase did not run or was disabled)"
    try:
        manifest = read_manifest(manifest_path(path))
        if manifest.get("verified") is not True:
            return manifest, (f"the run's backup {path} is not verified (its manifest says verified="
                              f"{manifest.get('verified')}): it was never proven to restore")
        if manifest.get("database") != database:
            return manifest, f"the run's backup {path} is a backup of {manifest.get('database')}, not of {database}"
        check_files(path, manifest)
    except BackupError as exc:
        return None, f"the run's backup cannot be used: {exc}"
    return manifest, None


def _ident(name: str):
    schema, table = name.split(".", 1)
    return sql.Identifier(schema, table)


def table_exists(cur, name: str) -> bool:
    schema, table = name.split(".", 1)
    return resolve_table(cur, table, schema=schema) is not None


def live_columns(cur, name: str) -> list[str]:
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", (_ident(name).as_string(cur),))
    return [r[0] for r in cur.fetchall()]


def newer_rows_filter(cur, mark: dict, snapshot_at: str | None, live: list[str]) -> sql.Composable | None:
    """WHERE condition of the rows written after the backup's snapshot, or None when the manifest cannot tell."""
    parts = []
    if mark.get("key") and mark["key"] in live:
        if mark.get("max_key") is None:
            parts.append(sql.SQL("{} IS NOT NULL").format(sql.Identifier(mark["key"])))
        else:
            parts.append(sql.SQL("{} > {}").format(sql.Identifier(mark["key"]), sql.Literal(int(mark["max_key"]))))
    if snapshot_at:
        for col in mark.get("write_time_columns") or []:
            if col in live:
                parts.append(sql.SQL("{} > {}::timestamptz").format(sql.Identifier(col), sql.Literal(snapshot_at)))
    return sql.SQL(" OR ").join(parts) if parts else None


def count(cur, name: str, where: sql.Composable | None = None) -> int:
    stmt = sql.SQL("SELECT count(*) FROM {}").format(_ident(name))
    if where is not None:
        stmt += sql.SQL(" WHERE ") + sql.SQL("(") + where + sql.SQL(")")
    cur.execute(stmt)
    return int(cur.fetchone()[0])


def restore_losses(cur, manifest: dict, excluded: list[str]) -> dict:
    """Rows a restore of the backup would discard: {'schema.table': {'rows': N, 'why': '...'}}."""
    marks = manifest.get("watermarks") or {}
    snapshot_at = manifest.get("snapshot_at")
    losses = {}
    for name, fp in sorted((manifest.get("tables") or {}).items()):
        if not table_exists(cur, name):
            continue
        live = live_columns(cur, name)
        mark = marks.get(name)
        where = newer_rows_filter(cur, mark, snapshot_at, live) if mark else None
        now = count(cur, name)
        newer = count(cur, name, where) if where is not None else 0
        # Rows beyond the backup's count are new even when no key or time column shows which.
        lost = max(newer, now - int(fp["rows"]))
        if lost > 0:
            how = (f"{mark['key']} > {mark['max_key']}" if mark and mark.get("key") else "")
            times = ", ".join(f"{c} > {snapshot_at}" for c in (mark or {}).get("write_time_columns") or [] if c in live)
            why = " or ".join(x for x in (how, times) if x) or "more rows than the backup holds"
            losses[name] = {"rows": lost, "why": f"written after the backup ({why}); the backup has {fp['rows']}, "
                                                 f"the table has {now}"}
    in_backup = set(manifest.get("tables") or {})
    for schema, table in list_tables(cur, list(excluded)):
        name = f"{schema}.{table}"
        if name in in_backup or schema in SYSTEM_SCHEMAS:
            continue
        rows = count(cur, name)
        if rows:
            losses[name] = {"rows": rows, "why": "table created after the backup (the restore drops it)"}
    return losses


def downgrade_losses(cur, manifest: dict) -> dict:
    """Values written after the backup in columns the backup did not have (a downgrade drops them)."""
    marks = manifest.get("watermarks") or {}
    snapshot_at = manifest.get("snapshot_at")
    losses = {}
    for name, mark in sorted(marks.items()):
        if not table_exists(cur, name):
            continue
        live = live_columns(cur, name)
        added = [c for c in live if c not in (mark.get("columns") or [])]
        where = newer_rows_filter(cur, mark, snapshot_at, live)
        if not added or where is None:
            continue
        for col in added:
            filled = count(cur, name, sql.SQL("{} IS NOT NULL AND ({})").format(sql.Identifier(col), where))
            if filled:
                losses[f"{name}.{col}"] = {"rows": filled, "why": f"column {col} added by the migration holds values "
                                                                  "in rows written after the backup; the downgrade "
                                                                  "drops the column"}
    return losses


def describe_losses(losses: dict) -> str:
    return "; ".join(f"{name}: {v['rows']:,} row(s) ({v['why']})" for name, v in losses.items())


def plan_rollback(cur, database: str, p: dict, judge: bool = True) -> dict:
    """Everything the rollback will do, in order, or RollbackRefused (judge=False: only find the run)."""
    schema = p["ops_schema"]
    result = {"run": None, "steps": [], "notes": [], "strategy": None, "strategy_reason": None,
              "losses": {}, "nothing_to_do": False, "live_revision": alembic_revision(cur)}
    if not ops_schema_exists(cur, schema):
        result.update(nothing_to_do=True, reason=f"{database} has no run ledger ({schema}.runs): pgmigrate-ops never "
                                                 "migrated it, so there is nothing to roll back")
        return result
    run = find_run(cur, schema, p["run_id"], p["version"])
    if run is None:
        wanted = f"run #{p['run_id']}" if p["run_id"] else f"a migration run of version {p['version']}"
        result.update(nothing_to_do=True, reason=f"the ledger of {database} holds no {wanted}: nothing to roll back "
                                                 f"(list the runs: SELECT id, version, status FROM {schema}.runs)")
        return result
    if p["version"] and run["version"] != p["version"]:
        raise RollbackRefused(f"run #{run['id']} migrated to {run['version']}, not to {p['version']}: give the "
                              f"matching -e version={run['version']}, or leave -e version out with -e run_id")
    result["run"] = {k: run[k] for k in RUN_COLUMNS if k != "phases"}
    result["run"]["phases"] = {k: (v.get("status") if isinstance(v, dict) else None) for k, v in run["phases"].items()}
    if run["kind"] not in MIGRATION_KINDS:
        raise RollbackRefused(f"run #{run['id']} is a {run['kind']} run, not a migration: there is nothing of it to "
                              "roll back; give the id of the migration run (-e run_id=N)")
    if run["status"] == "rolled_back":
        undone = phase(run, "rollback").get("facts") or {}
        when = phase(run, "rollback").get("finished_at")
        result.update(nothing_to_do=True, reason=(
            f"run #{run['id']} ({run['version']}) was already rolled back at {when} by run "
            f"#{undone.get('rollback_run_id', '?')}: nothing to do"))
        return result
    if not judge:
        return result

    steps, notes = deploy_steps(run)
    result["notes"] += notes
    from_rev = run.get("from_revision") or (phase(run, "plan").get("facts") or {}).get("alembic_revision")
    live = result["live_revision"]
    rows = rows_updated_by_run(cur, schema, run["id"])
    schema_moved = bool(from_rev) and live != from_rev
    result.update(from_revision=from_rev, rows_updated=rows)
    if not schema_moved and rows == 0:
        result["notes"].append(f"database: nothing to undo (the schema is at the run's from-revision "
                               f"{from_rev or live or 'none'} and its backfills updated no row)")
    else:
        strategy, why = choose_strategy(p, rows, schema_moved)
        result.update(strategy=strategy, strategy_reason=why)
        manifest, problem = backup_problem(run, database)
        if strategy == "restore":
            if problem:
                hint = (" Roll back the schema instead with -e rollback_strategy=downgrade (the data the backfills "
                        f"wrote, {rows:,} row(s), stays unless it is in columns the downgrade drops), or restore "
                        "another verified backup with playbooks/restore.yml -e backup=..." if schema_moved else
                        " Restore another verified backup with playbooks/restore.yml -e backup=...")
                raise RollbackRefused(f"a restore is needed ({why}) but {problem}. Nothing was changed.{hint}")
            losses = restore_losses(cur, manifest, manifest.get("excluded_schemas") or [schema])
            steps.append({"step": "restore", "backup_path": run["backup_path"],
                          "revision": manifest.get("alembic_revision"),
                          "what": f"database restored from the verified backup {run['backup_path']} "
                                  f"(revision {manifest.get('alembic_revision') or 'none'}, "
                                  f"{sum(t['rows'] for t in manifest['tables'].values()):,} rows in "
                                  f"{len(manifest['tables'])} tables)"})
            verb = "discard"
        else:
            if not schema_moved:
                raise RollbackRefused(
                    f"the schema is already at the run's from-revision {from_rev}, but its backfills updated "
                    f"{rows:,} row(s), which a downgrade cannot undo: roll back with -e rollback_strategy=restore "
                    "(the run's verified backup). Nothing was changed.")
            losses = downgrade_losses(cur, manifest) if manifest else {}
            if not manifest:
                result["notes"].append(f"database: {problem}; values written since the migration into columns the "
                                       "downgrade drops cannot be counted without the backup's manifest")
            steps.append({"step": "downgrade", "from": live, "to": from_rev,
                          "what": f"schema downgraded from {live} to {from_rev}"})
            verb = "drop the values of"
        result["losses"] = losses
        if losses and not p["discard_new_rows"]:
            total = sum(v["rows"] for v in losses.values())
            raise RollbackRefused(
                f"the {strategy} would {verb} {total:,} row(s) written after the backup of run #{run['id']}: "
                f"{describe_losses(losses)}. Nothing was changed. Keep them (export them, or roll forward), or "
                "accept losing them with -e rollback_discard_new_rows=true (or rollback.discard_new_rows: true in "
                "the plan)" + (", or keep the rows with -e rollback_strategy=downgrade" if strategy == "restore"
                               and schema_moved else ""))
    result["steps"] = list(reversed_order(steps))
    if not result["steps"]:
        result.update(nothing_to_do=True, reason=f"run #{run['id']} ({run['version']}, {run['status']}) changed "
                                                 "nothing that is still in place: nothing to roll back")
    return result


def choose_strategy(p: dict, rows: int, schema_moved: bool) -> tuple[str, str]:
    if p["strategy"] in ("downgrade", "restore"):
        return p["strategy"], f"rollback_strategy={p['strategy']} was asked for"
    policy = p["restore_backup"]
    if policy == "always":
        return "restore", "the plan's rollback.restore_backup is always"
    if policy == "never":
        return "downgrade", "the plan's rollback.restore_backup is never"
    if rows > 0:
        return "restore", (f"the plan restores the backup if_data_changed, and the run's backfills updated "
                           f"{rows:,} row(s)")
    return "downgrade", "the plan restores the backup if_data_changed, and the run's backfills updated no row"


def reversed_order(steps: list[dict]) -> list[dict]:
    """Undo in reverse order of the runbook: traffic first, then configuration, then the database."""
    rank = {"switch_back": 0, "roll_back": 0, "config_restore": 1, "downgrade": 2, "restore": 2}
    return sorted(steps, key=lambda s: rank[s["step"]])
