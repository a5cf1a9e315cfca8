# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the validate and report roles: the verdict over all checks and readable lines."""
from __future__ import annotations


def validation_verdict(validation: dict) -> dict:
    """Add the summary (counts per status, blocking checks) and `passed` to a validation.

    A check blocks when it failed or errored with severity error; warnings and skipped
    checks never block, and a skipped check is never counted as passed."""
    checks = validation.get("checks") or []
    summary = {"total": len(checks), "passed": 0, "failed": 0, "error": 0, "skipped": 0, "warnings": 0}
    blocking = []
    for check in checks:
        status = check.get("status", "error")
        summary[status] = summary.get(status, 0) + 1
        if status in ("failed", "error"):
            if check.get("severity", "error") == "warning":
                summary["warnings"] += 1
            else:
                blocking.append(check.get("name"))
    summary["blocking"] = blocking
    return dict(validation, summary=summary, passed=not blocking)


def validation_lines(validation: dict) -> list[str]:
    summary = validation.get("summary") or {}
    lines = [f"Validation {'PASSED' if validation.get('passed') else 'FAILED'}: {summary.get('passed', 0)} passed, "
             f"{summary.get('failed', 0)} failed, {summary.get('error', 0)} errors, {summary.get('skipped', 0)} "
             f"skipped, {summary.get('warnings', 0)} warnings (baseline: {validation.get('baseline_source', '?')})"]
    for check in validation.get("checks") or []:
        flag = check.get("status", "?") + (" (warning)" if check.get("severity") == "warning" else "")
        lines.append(f"{flag}: {check.get('name')}: {check.get('message', '')}")
    lines.extend(f"Note: {note}" for note in validation.get("notes") or [])
    return lines


def notify_summary(summary: dict) -> dict:
    """The report summary's headline facts for a notification (no paths to secrets, no rows)."""
    if not summary:
        return {}
    validation = summary.get("validation") or {}
    perf = summary.get("performance") or {}
    out = {
        "records migrated": summary.get("records_migrated"),
        "duration": f"{summary.get('duration_s')} s" if summary.get("duration_s") is not None else None,
        "validation": f"{validation.get('passed_checks')}/{validation.get('total')} checks passed"
                      + (f", {validation.get('warnings')} warnings" if validation.get("warnings") else ""),
        "downtime": summary.get("downtime"),
        "revision": (summary.get("revisions") or {}).get("live"),
        "latency p95": (f"{(perf.get('before') or {}).get('p95_ms')} -> {perf.get('p95_ms')} ms"
                        if perf.get("p95_ms") is not None else None),
        "errors met": "; ".join(summary.get("errors") or []) or "none",
    }
    return {k: v for k, v in out.items() if v is not None}


class FilterModule:
    def filters(self):
        return {"pgmigrate_validation_verdict": validation_verdict,
                "pgmigrate_validation_lines": validation_lines,
                "pgmigrate_notify_summary": notify_summary}
