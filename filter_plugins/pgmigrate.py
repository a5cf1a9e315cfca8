# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn module results into lines an operator reads."""
from __future__ import annotations


def _pretty(num) -> str:
    try:
        num = float(num)
    except (TypeError, ValueError):
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(num) < 1024 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num}"


def estimate_lines(preflight: dict, plan: dict, last_success: dict | None = None) -> list[str]:
    """The runbook 2.1.1 estimate as readable lines."""
    db = preflight.get("database", {})
    server = preflight.get("server", {})
    lines = [
        f"Plan {plan.get('version')}: {plan.get('title')} ({plan.get('type')}, from {plan.get('from_version')}, "
        f"downtime expected: {plan.get('downtime', {}).get('expected')})",
        f"Server PostgreSQL {server.get('version')}; database {db.get('name')} is {db.get('size')} "
        f"at Alembic revision {db.get('alembic_revision') or 'none'} (plan goes to "
        f"{plan.get('schema', {}).get('revision')})",
    ]
    settings = server.get("settings", {})
    if settings:
        lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    for table in preflight.get("tables", []):
        if table.get("exists"):
            lines.append(f"Table {table['name']}: ~{table['rows_estimate']:,} rows, {table['total']}")
        else:
            lines.append(f"Table {table['name']}: does not exist")
    for bf in preflight.get("backfills", []):
        rows = bf.get("rows_estimate")
        lines.append(f"Backfill {bf['name']} on {bf['table']}: ~{rows:,} rows ({bf['method']})"
                     if rows is not None else f"Backfill {bf['name']}: {bf['method']}")
    disk = preflight.get("disk")
    if disk:
        verdict = "enough" if disk.get("enough") else "NOT ENOUGH"
        lines.append(f"Backup dir {disk['backup_dir']}: {disk['free']} free, needs ~{_pretty(disk['needed_bytes'])} "
                     f"(database size x {disk.get('disk_margin', '?')}): {verdict}")
    if last_success:
        phases = last_success.get("phases") or {}
        durations = ", ".join(f"{name} {info.get('duration_s', '?')} s" for name, info in phases.items()
                              if isinstance(info, dict) and info.get("duration_s") is not None)
        lines.append(f"Last successful run of this plan: #{last_success.get('id')} at "
                     f"{last_success.get('finished_at')}: {durations or 'no phase timings'}")
    else:
        lines.append("No earlier successful run of this plan: no measured phase durations yet")
    return lines


class FilterModule:
    def filters(self):
        return {"pgmigrate_estimate_lines": estimate_lines}
