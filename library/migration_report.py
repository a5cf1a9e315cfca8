#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_report
short_description: Write the migration's validation report, Markdown report, chart, history line and data model
description:
  - Reads the run from the run ledger and the live catalog (read-only) and writes, under O(report_dir)/<version>/,
    C(migration_validation_<YYYYMMDD>.txt) and C(.json) (runbook 4), C(migration_report_<YYYYMMDD>.md) filled with
    measured facts (records migrated, errors met and resolved, downtime, durations per phase, backup used,
    revisions, contacts; runbook 7.1.2) and C(migration_report_<YYYYMMDD>.svg), a chart of the backfill's rows/s
    and batch duration over time and of the API latency before and after.
  - Appends the run's line to O(docs_dir)/MIGRATION_HISTORY.md (once per run; a second report of the same run
    replaces its line) and regenerates O(docs_dir)/DATA_MODEL.md from the live catalog (runbook 7.1.1).
  - Files whose content would not change are not written (C(changed) is truthful).
  - The file names carry the date and the run (C(<YYYYMMDD>-run<id>)), so two runs of the same day never overwrite
    each other's report; a second report of the same run rewrites its own files.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Builds every file and reports which would change; writes nothing.
  diff_mode:
    support: none
options:
  run_id:
    description: The run to report on (from M(migration_lock)). Unset in check mode.
    type: int
  version:
    description: Version of the plan.
    type: str
    required: true
  plan:
    description: The migration plan (title, from_version, contacts, backfills, downtime, schema revisions).
    type: dict
    required: true
  environment:
    description: Environment name (the inventory's).
    type: str
    default: default
  outcome:
    description:
      - How the run ends (the report phase closes it with this status). V(rolled_back) and V(rollback_failed) are
        written by the rollback role; the report then has a Rollback section from the ledger's C(rollback) phase
        (what was undone, how, what was left, data discarded).
    type: str
    choices: [succeeded, failed, rolled_back, rollback_failed]
    default: succeeded
  validation:
    description:
      - The validate phase's result (checks, summary, performance). Unset means the one recorded in the ledger
        (the validate phase's C(validation) fact).
    type: dict
  report_dir:
    description: Directory of the reports; the files go to a subdirectory named after O(version).
    type: path
    required: true
  docs_dir:
    description: Directory of C(MIGRATION_HISTORY.md) and C(DATA_MODEL.md). Unset means neither is written.
    type: path
  log_dir:
    description: Directory of the backfill's progress files (C(backfill-<name>.jsonl)) for the chart.
    type: path
  date:
    description: Date in the file names, C(YYYYMMDD), followed by C(-run<id>) when the run is known. Unset means today
      (UTC).
    type: str
  data_model:
    description: Regenerate C(DATA_MODEL.md) from the live catalog.
    type: bool
    default: true
'''

EXAMPLES = r'''
- name: Write the report and the history
  migration_report:
    run_id: "{{ pgmigrate_run_id }}"
    version: "{{ pgmigrate_version }}"
    plan: "{{ pgmigrate_plan }}"
    environment: "{{ pgmigrate_environment }}"
    report_dir: "{{ pgmigrate_report_dir }}"
    docs_dir: "{{ pgmigrate_project_dir }}/docs"
    log_dir: "{{ pgmigrate_log_dir }}"
  register: __report_written
'''

RETURN = r'''
files:
  description: Paths of the files, by kind (validation_txt, validation_json, report_md, chart_svg, history, data_model).
  returned: always
  type: dict
written:
  description: Paths of the files that were (or in check mode would be) written because their content changed.
  returned: always
  type: list
  elements: str
summary:
  description:
    - The report's measured facts, for notifications and later tasks (records_migrated, errors, downtime,
      duration_s, phases, backup, revisions, validation, performance, rollback).
  returned: always
  type: dict
'''

import datetime
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate_report import chart_svg, read_progress
from ansible.module_utils.pgmigrate_validate import describe_catalog

from ansible.module_utils.pgmigrate import (
    alembic_revision,
    connect,
    connection_argument_spec,
    ops_schema_exists,
    read_run,
    sql,
)
from ansible.module_utils.pgmigrate_batch import read_passes

HISTORY_HEADER = ("# Migration history\n\nOne line per migration run, appended by the report phase "
                  "(`roles/report`). Newest last.\n\n"
                  "| date (UTC) | environment | database | version | run | outcome | duration | records migrated | "
                  "validation | report |\n|---|---|---|---|---|---|---|---|---|---|\n")
RUNBOOK_ORDER = {name: i for i, name in enumerate(
    ("plan", "backup", "schema", "data", "deploy", "validate", "report", "rollback"))}


def facts_of(run: dict, phase: str) -> dict:
    info = run.get("phases", {}).get(phase)
    return info.get("facts", {}) if isinstance(info, dict) else {}


def migration_runs(cur, schema: str, version: str) -> list[dict]:
    """The runs of this migration: every run to ``version`` since the last one that was rolled back
    (work done before a rollback was undone by it)."""
    cur.execute(sql.SQL("SELECT id, kind, status FROM {}.runs WHERE version = %s AND id > coalesce((SELECT max(id) "
                        "FROM {}.runs WHERE version = %s AND status = 'rolled_back'), 0) ORDER BY id").format(
        sql.Identifier(schema), sql.Identifier(schema)), (version, version))
    return [{"id": r[0], "kind": r[1], "status": r[2]} for r in cur.fetchall()]


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return max((datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)).total_seconds(), 0.0)


def backfill_figures(plan: dict, run_id: int | None, passes: list[dict]) -> list[dict]:
    """Per backfill of the plan: what this run did and what the migration did as a whole (every
    execution of every run of it, killed and resumed ones included), from the pass records that
    each batch's own transaction updated (migration_ops.batch_passes)."""
    figures = []
    for backfill in plan.get("backfills") or []:
        name = backfill.get("name")
        mine = [x for x in passes if x["backfill"] == name]
        this_run = [x for x in mine if run_id is not None and x["run_id"] == run_id]
        started = min((x["started_at"] for x in this_run), default=None)
        ended = max((x["finished_at"] or x["started_at"] for x in this_run), default=None)
        wall = _seconds(started, ended)
        done = sum(x["rows_done"] for x in this_run)
        figures.append({
            "name": name, "table": backfill.get("table"),
            "rows_updated": sum(x["rows_updated"] for x in this_run), "rows_done": done,
            "batches": sum(x["batches"] for x in this_run),
            "status": ("not run" if not this_run else "failed" if any(x["status"] == "failed" for x in this_run)
                       else "interrupted" if any(x["status"] == "interrupted" for x in this_run)
                       else "running" if any(x["status"] == "running" for x in this_run) else "done"),
            "duration_s": round(wall, 1) if this_run else None,
            "mean_rate": round(done / wall, 1) if wall > 0 else None,
            "migration_rows_updated": sum(x["rows_updated"] for x in mine),
            "migration_runs": sorted({x["run_id"] for x in mine if x["run_id"] is not None}),
            "interrupted_executions": sum(1 for x in mine if x["status"] == "interrupted"),
            "source": "ledger (batch_passes)"})
    return figures


def summarise(p: dict, run: dict, validation: dict, passes: list[dict], runs: list[dict],
              revision: str | None) -> dict:
    plan = p["plan"]
    checks = validation.get("checks") or []
    backfills = backfill_figures(plan, run.get("id") or p["run_id"], passes)
    if backfills:
        records = sum(b["migration_rows_updated"] for b in backfills)
        records_this_run = sum(b["rows_updated"] for b in backfills)
        ids = sorted({i for b in backfills for i in b["migration_runs"]})
        records_source = (f"rows the plan's backfills updated in the runs of this migration "
                          f"({', '.join('#' + str(i) for i in ids) or 'none yet'}; killed and resumed ones "
                          f"included); this run: {records_this_run:,}")
    else:
        records, records_this_run, records_source = None, None, "the plan has no backfills"
    phases = run.get("phases", {})
    failed_phases = [n for n, i in phases.items() if isinstance(i, dict) and i.get("status") == "failed"]
    ledger_backfills = facts_of(run, "data").get("backfills")
    retries = sum(int(b.get("retries") or 0) for b in ledger_backfills if isinstance(b, dict)) \
        if isinstance(ledger_backfills, list) else 0
    warnings = [c["name"] for c in checks if c.get("severity") == "warning" and c.get("status") in ("failed", "error")]
    errors = []
    if retries:
        errors.append(f"{retries} backfill batch retries, resolved (the backfills finished)")
    for name in failed_phases:
        errors.append(f"phase {name} failed: {facts_of(run, name).get('error', 'see the ledger')}")
    if run.get("error"):
        errors.append(f"ledger: {run['error']}")
    for name in warnings:
        errors.append(f"validation warning: {name}")
    deploy = facts_of(run, "deploy")
    if deploy.get("downtime_s") is not None:
        downtime = f"{deploy['downtime_s']} s measured during the switch"
    else:
        downtime = (f"not measured by this run (no deploy phase figures); the plan expects: "
                    f"{plan.get('downtime', {}).get('expected', '?')}")
    backup = facts_of(run, "backup")
    summary = validation.get("summary") or {}
    return {
        "run_id": run.get("id") or p["run_id"], "version": p["version"], "from_version": plan.get("from_version"),
        "title": plan.get("title"), "environment": p["environment"], "outcome": p["outcome"],
        "operator": run.get("operator"), "started_at": run.get("started_at"), "duration_s": run.get("elapsed_s"),
        "records_migrated": records, "records_migrated_this_run": records_this_run,
        "records_source": records_source, "backfills": backfills,
        "migration_runs": runs,
        "errors": errors, "downtime": downtime,
        # In runbook order (jsonb keeps its keys sorted by length, not by meaning).
        "phases": {n: {"status": i.get("status"), "duration_s": i.get("duration_s")}
                   for n, i in sorted(phases.items(), key=lambda kv: RUNBOOK_ORDER.get(kv[0], len(RUNBOOK_ORDER)))
                   if isinstance(i, dict)},
        "backup": {"path": run.get("backup_path") or backup.get("path") or backup.get("backup_path"),
                   "verified": run.get("backup_verified") if run.get("backup_verified") is not None
                   else backup.get("verified")},
        "revisions": {"from": run.get("from_revision") or plan.get("schema", {}).get("from_revision"),
                      "to": run.get("to_revision") or plan.get("schema", {}).get("revision"), "live": revision},
        "validation": {"passed": validation.get("passed"), "total": summary.get("total", len(checks)),
                       "passed_checks": summary.get("passed"), "failed": summary.get("failed"),
                       "error": summary.get("error"), "skipped": summary.get("skipped"),
                       "warnings": summary.get("warnings")},
        "performance": validation.get("performance") or {},
        "contacts": plan.get("contacts") or [],
        "rollback": rollback_summary(run),
    }


def rollback_summary(run: dict) -> dict | None:
    """The rollback of the run as the ledger recorded it (rollback role), or None."""
    info = run.get("phases", {}).get("rollback")
    if not isinstance(info, dict):
        return None
    facts = info.get("facts", {})
    return {"status": info.get("status"), "automatic": facts.get("automatic"), "strategy": facts.get("strategy"),
            "undone": facts.get("undone") or [], "notes": facts.get("notes") or [], "error": facts.get("error"),
            "rollback_run_id": facts.get("rollback_run_id"), "revision_after": facts.get("revision_after"),
            "losses": facts.get("losses") or {}}


def validation_text(s: dict, validation: dict, generated: str) -> str:
    lines = [f"Migration validation report: {s['title']} ({s['from_version']} -> {s['version']})",
             f"Run #{s['run_id']}, environment {s['environment']}, generated {generated}",
             f"Verdict: {'PASSED' if validation.get('passed') else 'FAILED'} "
             f"({s['validation']['passed_checks']} of {s['validation']['total']} checks passed)", ""]
    for c in validation.get("checks") or []:
        flag = c.get("status", "?").upper() + (" (warning)" if c.get("severity") == "warning" else "")
        lines.append(f"[{flag:<18}] {c.get('name')} ({c.get('kind')}): {c.get('message', '')}")
        if c.get("sample_keys"):
            lines.append(f"{'':21}sample keys: {c['sample_keys']}")
    perf = s.get("performance") or {}
    if perf.get("p95_ms") is not None:
        lines += ["", f"Performance: {perf.get('message') or ''}"]
    for note in validation.get("notes") or []:
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def _fmt(value, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,}{suffix}" if isinstance(value, int) else f"{value:,.1f}{suffix}"
    return f"{value}{suffix}"


def report_markdown(s: dict, validation: dict, files: dict, generated: str) -> str:
    out = [f"# Migration report: {s['title']}", "",
           f"**{s['from_version']} → {s['version']}**, run #{s['run_id']} in `{s['environment']}`, "
           f"operator {s.get('operator') or '-'}, started {s.get('started_at') or '-'}; generated {generated}.", "",
           "## Summary", "",
           f"- Outcome: **{s['outcome']}**; validation "
           f"{'passed' if validation.get('passed') else 'did NOT pass'} "
           f"({_fmt(s['validation']['passed_checks'])} of {_fmt(s['validation']['total'])} checks)",
           f"- Records migrated: **{_fmt(s['records_migrated'])}** ({s['records_source']})",
           f"- Total duration so far: {_fmt(s['duration_s'], ' s')}",
           f"- Downtime: {s['downtime']}",
           f"- Errors met and resolved: {'; '.join(s['errors']) if s['errors'] else 'none'}",
           "", "## Phases", "", "| phase | status | duration |", "|---|---|---|"]
    for name, info in s["phases"].items():
        out.append(f"| {name} | {info.get('status')} | {_fmt(info.get('duration_s'), ' s')} |")
    rb = s.get("rollback")
    if rb:
        out += ["", "## Rollback", "",
                f"- {'Automatic' if rb.get('automatic') else 'Stand-alone'} rollback "
                f"(run #{rb.get('rollback_run_id') or '-'}): "
                f"**{rb.get('status')}**" + (f"; error: {rb['error']}" if rb.get("error") else ""),
                f"- Database: {rb.get('strategy') or 'nothing to undo'}; Alembic revision after: "
                f"{rb.get('revision_after') or '-'}"]
        out += [f"- Undone: {step}" for step in rb["undone"]] or ["- Undone: nothing (nothing had changed)"]
        out += [f"- Left as it is: {note}" for note in rb["notes"]]
        out += [f"- Discarded (accepted): {name}: {v.get('rows')} row(s)" for name, v in rb["losses"].items()]
    backup = s["backup"]
    rev = s["revisions"]
    out += ["", "## Backup and revisions", "",
            f"- Backup used: {('`' + backup['path'] + '`') if backup.get('path') else 'none recorded'}"
            f" (verified by a restore: {_fmt(backup.get('verified'))})",
            f"- Alembic revision: {rev.get('from') or '-'} → {rev.get('to') or '-'} "
            f"(live now: {rev.get('live') or '-'})",
            "", "## Data migration", ""]
    if s["backfills"]:
        out += ["| backfill | this run | rows updated (run) | rows walked (run) | batches (run) | duration (run) "
                "| mean rows/s (run) | rows updated (migration) | runs |",
                "|---|---|---|---|---|---|---|---|---|"]
        for b in s["backfills"]:
            out.append(f"| {b['name']} | {b['status']} | {_fmt(b.get('rows_updated'))} | {_fmt(b.get('rows_done'))} | "
                       f"{_fmt(b.get('batches'))} | {_fmt(b.get('duration_s'), ' s')} | {_fmt(b.get('mean_rate'))} | "
                       f"{_fmt(b.get('migration_rows_updated'))} | "
                       f"{', '.join('#' + str(i) for i in b['migration_runs']) or '-'} |")
    else:
        out.append("The plan has no backfills.")
    out += ["", "## Validation", "", "| check | kind | status | finding |", "|---|---|---|---|"]
    for c in validation.get("checks") or []:
        status = c.get("status") + (" (warning)" if c.get("severity") == "warning" else "")
        out.append(f"| {c.get('name')} | {c.get('kind')} | {status} | {str(c.get('message', '')).replace('|', '/')} |")
    for note in validation.get("notes") or []:
        out.append(f"\n> {note}")
    perf = s["performance"]
    out += ["", "## Performance (bounded load on the API)", ""]
    if perf.get("p95_ms") is not None:
        before = perf.get("before") or {}
        out += ["| | p50 ms | p95 ms | p99 ms | requests | errors |", "|---|---|---|---|---|---|",
                f"| before | {_fmt(before.get('p50_ms'))} | {_fmt(before.get('p95_ms'))} | "
                f"{_fmt(before.get('p99_ms'))} | {_fmt(before.get('requests'))} | {_fmt(before.get('errors'))} |",
                f"| after | {_fmt(perf.get('p50_ms'))} | {_fmt(perf.get('p95_ms'))} | {_fmt(perf.get('p99_ms'))} | "
                f"{_fmt(perf.get('requests'))} | {_fmt(perf.get('errors'))} |", "",
                f"{perf.get('message', '')}"]
    else:
        out.append(perf.get("message") or "Not measured (no application URL configured).")
    chart = os.path.basename(files["chart_svg"])
    out += ["", "## Chart", "", f"![backfill rate, batch duration and API latency]({chart})",
            "", "## Contacts (runbook 8)", ""]
    for c in s["contacts"]:
        reach = ", ".join(x for x in (c.get("email"), c.get("phone"), c.get("slack")) if x)
        out.append(f"- {c.get('role')}: {c.get('name')}{(' (' + reach + ')') if reach else ''}")
    if not s["contacts"]:
        out.append("- The plan names no contacts.")
    out += ["", "## Files", "", f"- Validation: `{os.path.basename(files['validation_txt'])}`, "
            f"`{os.path.basename(files['validation_json'])}`"]
    return "\n".join(out) + "\n"


def data_model_markdown(tables: list[dict], dbname: str, revision: str | None) -> str:
    out = ["# Data model", "",
           f"Generated by the report phase from the live catalog of `{dbname}` at Alembic revision "
           f"`{revision or 'none'}`. Do not edit by hand: the next migration's report rewrites it.", ""]
    for t in tables:
        out += [f"## {t['schema']}.{t['name']}", ""]
        if t.get("comment"):
            out += [t["comment"], ""]
        out += ["| column | type | null | default |", "|---|---|---|---|"]
        for c in t["columns"]:
            out.append(f"| {c['name']} | {c['type']} | {'yes' if c['nullable'] else 'no'} | "
                       f"{(c['default'] or '').replace('|', '/')} |")
        if t["indexes"]:
            out += ["", "Indexes:", ""] + [f"- `{i['name']}`: `{i['definition']}`" for i in t["indexes"]]
        if t["constraints"]:
            out += ["", "Constraints:", ""] + [f"- `{c['name']}` ({c['type']}): `{c['definition']}`"
                                                 for c in t["constraints"]]
        out.append("")
    return "\n".join(out)


def history_text(existing: str | None, s: dict, dbname: str, report_md: str, docs_dir: str) -> str:
    text = existing if existing else HISTORY_HEADER
    key = f"| {s['environment']} | {dbname} | {s['version']} | #{s['run_id']} |"
    link = os.path.relpath(report_md, docs_dir)
    val = s["validation"]
    line = (f"| {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')} {key} {s['outcome']} | "
            f"{_fmt(s['duration_s'], ' s')} | {_fmt(s['records_migrated'])} | "
            f"{_fmt(val.get('passed_checks'))}/{_fmt(val.get('total'))} passed | [report]({link}) |")
    lines = text.rstrip("\n").split("\n")
    kept = [entry for entry in lines if key not in entry]
    return "\n".join(kept + [line]) + "\n"


def write_if_changed(module, path: str, content: str, written: list[str], mode: int = 0o644) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == content:
                return
    except OSError:
        pass
    written.append(path)
    if module.check_mode:
        return
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        module.fail_json(msg=f"cannot write {path}: {exc}; check report_dir / docs_dir and their permissions")


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        run_id=dict(type="int"),
        version=dict(type="str", required=True),
        plan=dict(type="dict", required=True),
        environment=dict(type="str", default="default"),
        outcome=dict(type="str", default="succeeded",
                     choices=["succeeded", "failed", "rolled_back", "rollback_failed"]),
        validation=dict(type="dict"),
        report_dir=dict(type="path", required=True),
        docs_dir=dict(type="path"),
        log_dir=dict(type="path"),
        date=dict(type="str"),
        data_model=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    date = p["date"] or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    if len(date) != 8 or not date.isdigit():
        module.fail_json(msg=f"date must be YYYYMMDD, got {date!r}")
    conn = connect(module)
    conn.set_session(readonly=True)
    try:
        with conn.cursor() as cur:
            run = read_run(cur, p["ops_schema"], p["run_id"]) or {}
            runs = migration_runs(cur, p["ops_schema"], p["version"]) if ops_schema_exists(cur, p["ops_schema"]) else []
            passes = read_passes(cur, p["ops_schema"], names=[b.get("name") for b in p["plan"].get("backfills") or []],
                                 run_ids=[r["id"] for r in runs])
            revision = alembic_revision(cur)
            tables = describe_catalog(cur, [p["ops_schema"]]) if p["docs_dir"] and p["data_model"] else []
            cur.execute("SELECT current_database()")
            dbname = cur.fetchone()[0]
    except Exception as exc:
        module.fail_json(msg=f"migration_report could not read the ledger or the catalog: {str(exc).strip()}")
    finally:
        conn.rollback()
        conn.close()
    if p["run_id"] and not run:
        module.fail_json(msg=f"run #{p['run_id']} is not in the ledger ({p['ops_schema']}.runs); check report_run_id")
    validation = p["validation"] or facts_of(run, "validate").get("validation") or {}
    # The chart: this run's lines of the plan's backfills only (the log keeps every run's lines).
    names = {b.get("name") for b in p["plan"].get("backfills") or []}
    progress = {name: [r for r in records if r.get("run_id") == (run.get("id") or p["run_id"])]
                for name, records in (read_progress(p["log_dir"]) if p["log_dir"] else {}).items() if name in names}
    progress = {name: records for name, records in progress.items() if records}
    summary = summarise(p, run, validation, passes, runs, revision)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    base = os.path.join(p["report_dir"], p["version"])
    run_id = run.get("id") or p["run_id"]
    stamp = f"{date}-run{run_id}" if run_id else date  # same-day runs never overwrite each other's report
    files = {"validation_txt": os.path.join(base, f"migration_validation_{stamp}.txt"),
             "validation_json": os.path.join(base, f"migration_validation_{stamp}.json"),
             "report_md": os.path.join(base, f"migration_report_{stamp}.md"),
             "chart_svg": os.path.join(base, f"migration_report_{stamp}.svg")}
    written: list[str] = []
    write_if_changed(module, files["validation_txt"], validation_text(summary, validation, generated), written)
    document = {"generated_at": generated, "database": dbname, "summary": summary, "validation": validation}
    as_json = json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"
    write_if_changed(module, files["validation_json"], as_json, written)
    write_if_changed(module, files["chart_svg"], chart_svg(progress, summary["performance"],
                                                           f"Migration {p['version']}, run #{summary['run_id']}"),
                     written)
    write_if_changed(module, files["report_md"], report_markdown(summary, validation, files, generated), written)
    if p["docs_dir"]:
        files["history"] = os.path.join(p["docs_dir"], "MIGRATION_HISTORY.md")
        try:
            with open(files["history"], encoding="utf-8") as fh:
                existing = fh.read()
        except OSError:
            existing = None
        write_if_changed(module, files["history"],
                         history_text(existing, summary, dbname, files["report_md"], p["docs_dir"]), written)
        if p["data_model"]:
            files["data_model"] = os.path.join(p["docs_dir"], "DATA_MODEL.md")
            write_if_changed(module, files["data_model"], data_model_markdown(tables, dbname, revision), written)
    module.exit_json(changed=bool(written), files=files, written=written, summary=summary,
                     msg=f"report for run #{summary['run_id']}: {len(written)} files written under {base}")


if __name__ == "__main__":
    main()
