# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report: one entry per database, the summary of them all, the fleet metrics.

fleet.yml runs the whole runbook on every database of ``pgmigrate_db``, canary first, then in
waves.  Each database writes its own entry (``<fleet_dir>/databases/<name>.json``) and, under a
lock beside them, renders the summary from every entry present: so the databases of one run, the
slices of an AWX job slicing (one job each) and reruns all end in the same two files
(``fleet_report.json`` and ``fleet_report.md``) and one metrics file."""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import tempfile

from ansible.module_utils.pgmigrate_metrics import write_textfile

# How a database ended in a fleet run (the run's ledger status where it has one).
FAILED = ("failed", "rolled_back", "rollback_failed")
STATUSES = ("running", "succeeded", "already_at_target", "not_started") + FAILED
_SAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    return _SAFE_RE.sub("_", str(name)) or "_"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _write_json(path: str, data: dict) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".md", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_entries(fleet_dir: str) -> dict[str, dict]:
    out = {}
    directory = os.path.join(fleet_dir, "databases")
    if not os.path.isdir(directory):
        return out
    for fname in sorted(os.listdir(directory)):
        if not fname.endswith(".json") or fname.startswith("."):
            continue
        try:
            with open(os.path.join(directory, fname), encoding="utf-8") as fh:
                entry = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and entry.get("name"):
            out[entry["name"]] = entry
    return out


def run_figures(run: dict | None) -> dict | None:
    """What the fleet report keeps of a ledger run."""
    if not run:
        return None
    phases = run.get("phases") or {}
    data = (phases.get("data") or {}).get("facts") or {}
    rollback = phases.get("rollback") if isinstance(phases.get("rollback"), dict) else None
    failed = [n for n, i in phases.items() if isinstance(i, dict) and i.get("status") == "failed" and n != "rollback"]
    duration = None
    if run.get("started_at") and run.get("finished_at"):
        duration = round((datetime.datetime.fromisoformat(run["finished_at"])
                          - datetime.datetime.fromisoformat(run["started_at"])).total_seconds(), 1)
    rows = data.get("rows_updated")
    return {
        "id": run.get("id"), "status": run.get("status"), "from_revision": run.get("from_revision"),
        "to_revision": run.get("to_revision"), "rows_backfilled": int(rows) if isinstance(rows, (int, float)) else None,
        "started_at": run.get("started_at"), "finished_at": run.get("finished_at"), "duration_s": duration,
        "backup": {"path": run.get("backup_path"), "verified": run.get("backup_verified")},
        "failed_phase": failed[0] if failed else None, "error": run.get("error"),
        "rollback": None if rollback is None else {
            "status": rollback.get("status"), "automatic": (rollback.get("facts") or {}).get("automatic"),
            "strategy": (rollback.get("facts") or {}).get("strategy"),
            "rollback_run_id": (rollback.get("facts") or {}).get("rollback_run_id"),
            "revision_after": (rollback.get("facts") or {}).get("revision_after"),
            "undone": (rollback.get("facts") or {}).get("undone") or [],
            "error": (rollback.get("facts") or {}).get("error")},
    }


def summarise(entries: dict[str, dict], version: str, max_fail_percentage: int) -> dict:
    databases = sorted(entries.values(), key=lambda e: (e.get("invocation", ""), e.get("wave") or 0, e["name"]))
    totals = {s: 0 for s in STATUSES}
    for e in databases:
        totals[e["status"]] = totals.get(e["status"], 0) + 1
    # A wave stops the fleet when more of its databases failed than the threshold allows; the databases of
    # the later waves of the same run are then not started.  A wave whose failures stay within the threshold
    # lets the fleet go on ("continued").
    stopped, continued = [], []
    waves: dict[tuple, list[dict]] = {}
    for e in databases:
        waves.setdefault((e.get("invocation"), e.get("wave")), []).append(e)
    for (invocation, wave), members in sorted(waves.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
        size = max([m.get("wave_size") or len(members) for m in members])
        failed = [m["name"] for m in members if m["status"] in FAILED]
        limit = members[0].get("max_fail_percentage", max_fail_percentage)
        later = sorted(e["name"] for e in databases if e.get("invocation") == invocation
                       and (e.get("wave") or 0) > (wave or 0) and e["status"] == "not_started")
        if failed and later and len(failed) * 100.0 / size > limit:
            stopped.append({"invocation": invocation, "wave": wave, "wave_size": size, "failed": failed,
                            "max_fail_percentage": limit, "not_started": later})
        elif failed and len(failed) * 100.0 / size <= limit:
            continued.append({"invocation": invocation, "wave": wave, "wave_size": size, "failed": failed,
                              "max_fail_percentage": limit})
    return {"version": version, "generated_at": utc_now(), "databases": databases, "totals": totals,
            "stopped": stopped, "continued": continued, "max_fail_percentage": max_fail_percentage}


def _fmt(value, unit: str = "") -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def cell(text) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def rollback_text(run: dict | None) -> str:
    rb = (run or {}).get("rollback")
    if not rb:
        return "-"
    how = "automatic" if rb.get("automatic") else "stand-alone"
    text = (f"rollback {rb.get('status')} ({how}, {rb.get('strategy') or '-'}; "
            f"revision after: {rb.get('revision_after') or '-'})")
    if rb.get("error"):
        text += f": {cell(rb['error'])}"
    return text


def markdown(summary: dict) -> str:
    t = summary["totals"]
    lines = [f"# Fleet migration report: {summary['version']}", "",
             f"Generated {summary['generated_at']}. {len(summary['databases'])} database(s): "
             + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in t.items() if n) + ".", ""]
    for stop in summary["stopped"]:
        lines += [f"**The fleet stopped after wave {stop['wave']}**: {len(stop['failed'])} of {stop['wave_size']} "
                  f"database(s) failed ({', '.join(stop['failed'])}), more than pgmigrate_fleet_max_fail_percentage="
                  f"{stop['max_fail_percentage']}%; not started: {', '.join(stop['not_started'])}.", ""]
    for went_on in summary.get("continued", []):
        lines += [f"Wave {went_on['wave']}: {len(went_on['failed'])} of {went_on['wave_size']} database(s) failed "
                  f"({', '.join(went_on['failed'])}), within pgmigrate_fleet_max_fail_percentage="
                  f"{went_on['max_fail_percentage']}%: the fleet went on.", ""]
    app = summary.get("application")
    if app:
        hosts = ", ".join(app.get("hosts") or []) or "none"
        lines += [f"Application hosts (pgmigrate_app: {hosts}): **{app['status']}**"
                  + (f": {app['reason']}" if app.get("reason") else "")
                  + (f" (deployed: {', '.join(app['deployed'])})" if app.get("deployed") else "") + ".", ""]
    lines += ["| database | wave | status | revision from -> to | rows backfilled | duration | backup | rollback |",
              "|---|---|---|---|---|---|---|---|"]
    for e in summary["databases"]:
        run = e.get("run") or {}
        backup = (run.get("backup") or {})
        backup_text = "-" if not backup.get("path") else (
            f"{backup['path']} ({'proven' if backup.get('verified') else 'NOT proven'})")
        status = e["status"].replace("_", " ")
        if run.get("failed_phase"):
            status += f" ({run['failed_phase']} phase failed)"
        elif e.get("error"):
            status += f": {cell(e['error'])}"
        lines.append(f"| {e['name']} | {_fmt(e.get('wave'))} | {status} | {run.get('from_revision') or '-'} -> "
                     f"{run.get('to_revision') or '-'} | {_fmt(run.get('rows_backfilled'))} | "
                     f"{_fmt(run.get('duration_s'), ' s')} | {backup_text} | {rollback_text(run)} |")
    lines += ["", "Per-database reports: each database's own report directory (pgmigrate_report_dir). "
              "Ledger: migration_ops.runs of each database.", ""]
    return "\n".join(lines)


STATUS_CODES = {"running": 0, "succeeded": 1, "failed": 2, "rolled_back": 3, "rollback_failed": 4,
                "already_at_target": 5, "not_started": 6}


def metrics(summary: dict, environment: str) -> list[dict]:
    base = {"version": summary["version"], "environment": environment}
    status, rows, duration, wave = [], [], [], []
    for e in summary["databases"]:
        labels = dict(base, database=e["name"])
        run = e.get("run") or {}
        status.append((dict(labels, status=e["status"]), STATUS_CODES.get(e["status"], -1)))
        rows.append((labels, run.get("rows_backfilled")))
        duration.append((labels, run.get("duration_s")))
        wave.append((labels, e.get("wave")))
    return [
        {"name": "pgmigrate_fleet_database_status", "type": "gauge", "samples": status,
         "help": "Status of each database of the fleet (0 running, 1 succeeded, 2 failed, 3 rolled back, "
                 "4 rollback failed, 5 already at the target, 6 not started)."},
        {"name": "pgmigrate_fleet_database_rows_backfilled", "type": "gauge", "samples": rows,
         "help": "Rows the backfills of the database's run updated."},
        {"name": "pgmigrate_fleet_database_duration_seconds", "type": "gauge", "samples": duration,
         "help": "Duration of the database's migration run."},
        {"name": "pgmigrate_fleet_database_wave", "type": "gauge", "samples": wave,
         "help": "Wave the database migrated in (1 is the canary)."},
        {"name": "pgmigrate_fleet_databases", "type": "gauge",
         "samples": [(dict(base, status=s), n) for s, n in summary["totals"].items()],
         "help": "Databases of the fleet by status."},
    ]


def record(fleet_dir: str, entry: dict, fleet: list[str], invocation: str, waves: list[list[str]],
           version: str, max_fail_percentage: int, metrics_file: str, environment: str) -> dict:
    """Write ``entry`` and a not_started entry for every database of this run that has none yet, then render
    the summary, its Markdown and the metrics from every entry, all under one lock."""
    os.makedirs(os.path.join(fleet_dir, "databases"), exist_ok=True)
    with open(os.path.join(fleet_dir, ".fleet.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        entries = read_entries(fleet_dir)
        previous = entries.get(entry["name"])
        if previous and previous.get("invocation") == invocation and previous.get("started_at"):
            entry.setdefault("started_at", previous["started_at"])
        entries[entry["name"]] = entry
        _write_json(os.path.join(fleet_dir, "databases", safe_name(entry["name"]) + ".json"), entry)
        wave_of = {h: i for i, wave in enumerate(waves, 1) for h in wave}
        for name in fleet:
            old = entries.get(name)
            if old is None or old.get("invocation") != invocation:
                placeholder = {"name": name, "invocation": invocation, "status": "not_started",
                               "wave": wave_of.get(name), "wave_size": len(waves[wave_of[name] - 1]) if name in wave_of
                               else None, "max_fail_percentage": max_fail_percentage, "updated_at": utc_now(),
                               "run": None, "previous": old}
                entries[name] = placeholder
                _write_json(os.path.join(fleet_dir, "databases", safe_name(name) + ".json"), placeholder)
        return render(fleet_dir, entries, version, max_fail_percentage, metrics_file, environment)


def render(fleet_dir: str, entries: dict[str, dict], version: str, max_fail_percentage: int, metrics_file: str,
           environment: str) -> dict:
    """Write the summary, its Markdown and the metrics (the caller holds the fleet lock)."""
    summary = summarise(entries, version, max_fail_percentage)
    summary["application"] = read_application(fleet_dir)
    files = {"json": os.path.join(fleet_dir, "fleet_report.json"),
             "md": os.path.join(fleet_dir, "fleet_report.md"), "metrics": metrics_file}
    _write_json(files["json"], summary)
    _write_text(files["md"], markdown(summary))
    write_textfile(metrics_file, metrics(summary, environment))
    return {"summary": summary, "files": files}


def read_application(fleet_dir: str) -> dict | None:
    try:
        with open(os.path.join(fleet_dir, "application.json"), encoding="utf-8") as fh:
            app = json.load(fh)
    except (OSError, ValueError):
        return None
    return app if isinstance(app, dict) else None


def record_application(fleet_dir: str, app: dict, invocation: str, version: str, max_fail_percentage: int,
                       metrics_file: str, environment: str) -> dict:
    """Write how the application hosts (pgmigrate_app) of this fleet run ended: skipped (with the reason),
    deployed (the hosts deployed so far, one at a time, are merged) or failed; then render the report."""
    os.makedirs(fleet_dir, exist_ok=True)
    with open(os.path.join(fleet_dir, ".fleet.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        previous = read_application(fleet_dir) or {}
        deployed = list(app.get("deployed") or [])
        if previous.get("invocation") == invocation:
            deployed = [h for h in previous.get("deployed") or [] if h not in deployed] + deployed
        hosts = list(app.get("hosts") or [])
        status = app["status"]
        if status == "deployed" and set(deployed) != set(hosts):
            status = "deploying"
        record_ = {"invocation": invocation, "status": status, "hosts": hosts, "deployed": deployed,
                   "reason": app.get("reason"), "updated_at": utc_now()}
        _write_json(os.path.join(fleet_dir, "application.json"), record_)
        written = render(fleet_dir, read_entries(fleet_dir), version, max_fail_percentage, metrics_file, environment)
    return {"application": record_, **written}
