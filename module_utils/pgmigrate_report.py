# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared code of the report phase (runbook 6 and 7): run-level metrics, Pushgateway push,
secret redaction for notifications, backfill progress reading and the SVG chart.

No third-party library: modules must run with only Ansible and psycopg2.
"""
from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from html import escape
from typing import Any

from ansible.module_utils.pgmigrate_http import http_request

RUN_STATUS_CODES = {"running": 0, "succeeded": 1, "failed": 2, "rolled_back": 3, "rollback_failed": 4}
RUNBOOK_PHASES = ("plan", "backup", "schema", "data", "deploy", "validate", "report", "rollback")


# ---------------------------------------------------------------------------------
# Run-level metrics (pgmigrate_run.prom) and the Pushgateway
# ---------------------------------------------------------------------------------
def run_metrics(run: dict, status: str, phase: str | None, environment: str, now: float,
                validation: dict | None = None, database: str = "") -> list[dict]:
    """The run-level metric families, in pgmigrate_metrics.render() form.  ``database`` (one per database of a
    fleet) keeps the series of several databases apart in one Prometheus."""
    version = run.get("version") or "unknown"
    base = {"version": version, "environment": environment, "database": database}
    phases = run.get("phases") or {}
    failed_phases = [name for name, info in phases.items() if isinstance(info, dict) and info.get("status") == "failed"]
    errors = len(failed_phases) + (1 if status in ("failed", "rollback_failed") and not failed_phases else 0)
    code = RUN_STATUS_CODES.get(status, 2)
    current = phase or next((n for n, i in reversed(list(phases.items())) if isinstance(i, dict)), "plan")
    known = list(RUNBOOK_PHASES) + [p for p in phases if p not in RUNBOOK_PHASES]
    metrics = [
        {"name": "pgmigrate_run_info", "help": "The migration run this file describes (value always 1).",
         "samples": [({**base, "run_id": run.get("id") or 0, "from_version": run.get("from_version") or "",
                       "kind": run.get("kind") or "migrate"}, 1)]},
        {"name": "pgmigrate_run_status",
         "help": "Run status: 0 running, 1 succeeded, 2 failed, 3 rolled back, 4 rollback failed.",
         "samples": [(base, code)]},
        {"name": "pgmigrate_run_failed", "help": "1 when the run failed (or its rollback failed), else 0.",
         "samples": [(base, 1 if status in ("failed", "rollback_failed") else 0)]},
        {"name": "pgmigrate_run_errors_total", "help": "Errors the run met (failed phases).", "type": "counter",
         "samples": [(base, errors)]},
        {"name": "pgmigrate_run_current_phase", "help": "1 for the phase the run is in (or ended in), else 0.",
         "samples": [({**base, "phase": name}, 1 if name == current else 0) for name in known]},
        {"name": "pgmigrate_phase_duration_seconds", "help": "Duration of each finished phase of the run.",
         "samples": [({**base, "phase": name, "status": info.get("status", "")}, float(info["duration_s"]))
                     for name, info in phases.items()
                     if isinstance(info, dict) and info.get("duration_s") is not None]},
        {"name": "pgmigrate_run_started_timestamp_seconds", "help": "When the run started (Unix time).",
         "samples": [(base, run.get("started_epoch") or now)]},
        {"name": "pgmigrate_run_last_update_timestamp_seconds", "help": "When this file was written (Unix time).",
         "samples": [(base, round(now, 3))]},
    ]
    if validation and validation.get("summary"):
        summary = validation["summary"]
        metrics.append({"name": "pgmigrate_validation_checks", "help": "Validation checks of the run by status.",
                        "samples": [({**base, "status": s}, int(summary.get(s, 0) or 0))
                                    for s in ("passed", "failed", "error", "skipped", "warnings")]})
    return metrics


def push_to_gateway(url: str, job: str, grouping: dict, text: str, timeout: float) -> str | None:
    """PUT the metrics to a Pushgateway group; returns None when accepted, else the problem.  A value with a
    slash (host:port/db) goes base64-encoded, as the Pushgateway's URL scheme asks."""
    path = "/metrics/job/" + urllib.parse.quote(job, safe="")
    for key, raw in grouping.items():
        value = str(raw)
        if "/" in value:
            encoded = base64.urlsafe_b64encode(value.encode()).decode()
            path += f"/{urllib.parse.quote(key, safe='')}@base64/{encoded}"
        else:
            path += f"/{urllib.parse.quote(key, safe='')}/{urllib.parse.quote(value, safe='') or '_'}"
    answer = http_request(url.rstrip("/") + path, method="PUT", data=text.encode(),
                          headers={"Content-Type": "text/plain; version=0.0.4"}, timeout=timeout)
    if answer.status == 0:
        return answer.error
    if 200 <= answer.status < 300:
        return None
    return f"HTTP {answer.status}: {answer.body[:200].decode(errors='replace')}"


# ---------------------------------------------------------------------------------
# Secrets never reach a message
# ---------------------------------------------------------------------------------
_SECRET_PAIR = re.compile(r"(?i)\b(password|passwd|pwd|pgpassword|token|secret|api[_-]?key)(\s*[=:]\s*)"
                          r"(\"[^\"]*\"|'[^']*'|\S+)")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@]+):([^@\s/]+)@")
_URL = re.compile(r"(?i)\bhttps?://[^\s)>\"']+")


def redact(text: str, secrets: list[str] | None = None, hide_url_paths_of: list[str] | None = None) -> str:
    """Remove secrets: the given values, key=value secrets, URL passwords and the paths of hook URLs."""
    if not text:
        return text
    for secret in sorted((s for s in secrets or [] if s and len(str(s)) >= 4), key=len, reverse=True):
        text = text.replace(str(secret), "***")
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    hosts = {urllib.parse.urlparse(u).netloc for u in hide_url_paths_of or [] if u}

    def strip_path(match: re.Match) -> str:
        parsed = urllib.parse.urlparse(match.group(0))
        return f"{parsed.scheme}://{parsed.netloc}/***" if parsed.netloc in hosts and parsed.path.strip("/") else \
            match.group(0)

    return _URL.sub(strip_path, text) if hosts else text


def redact_data(data: Any, secrets: list[str], hooks: list[str]) -> Any:
    if isinstance(data, str):
        return redact(data, secrets, hooks)
    if isinstance(data, dict):
        return {k: redact_data(v, secrets, hooks) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_data(v, secrets, hooks) for v in data]
    return data


# ---------------------------------------------------------------------------------
# Backfill progress (JSON lines written by pg_batch_update) and the chart
# ---------------------------------------------------------------------------------
def read_progress(log_dir: str) -> dict[str, list[dict]]:
    """{backfill: [progress records]} from <log_dir>/backfill-<name>.jsonl (bad lines skipped)."""
    found: dict[str, list[dict]] = {}
    if not log_dir or not os.path.isdir(log_dir):
        return found
    for entry in sorted(os.listdir(log_dir)):
        if not (entry.startswith("backfill-") and entry.endswith(".jsonl")):
            continue
        records = []
        with open(os.path.join(log_dir, entry), encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        name = entry[len("backfill-"):-len(".jsonl")]
        if records:
            found[records[-1].get("backfill") or name] = records
    return found


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _polyline(points: list[tuple[float, float]], box: tuple[int, int, int, int], colour: str) -> str:
    x0, y0, width, height = box
    if not points:
        return ""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    xmin, xmax = min(xs), max(xs) or 1
    ymax = max(ys) or 1
    span = (xmax - xmin) or 1
    xy = [(x0 + (x - xmin) / span * width, y0 + height - y / ymax * height) for x, y in points]
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    # Dots on the measured points when there are few of them (a short backfill has two or three).
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in xy
                   ) if len(xy) <= 60 else ""
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>' + dots


def _axes(box: tuple[int, int, int, int], title: str, ymax: float, unit: str, xlabel: str) -> str:
    x0, y0, width, height = box
    return (f'<text x="{x0}" y="{y0 - 8}" font-size="13" font-weight="bold">{escape(title)}</text>'
            f'<line x1="{x0}" y1="{y0 + height}" x2="{x0 + width}" y2="{y0 + height}" stroke="#555"/>'
            f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + height}" stroke="#555"/>'
            f'<text x="{x0 - 6}" y="{y0 + 10}" font-size="10" text-anchor="end">{ymax:,.0f} {escape(unit)}</text>'
            f'<text x="{x0 - 6}" y="{y0 + height}" font-size="10" text-anchor="end">0</text>'
            f'<text x="{x0 + width}" y="{y0 + height + 14}" font-size="10" text-anchor="end">{escape(xlabel)}</text>')


def chart_svg(progress: dict[str, list[dict]], performance: dict | None, title: str) -> str:
    """A hand-written SVG: backfill rows/s and batch duration over time, latency before/after."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    width, panel_h = 760, 150
    parts = [f'<text x="20" y="24" font-size="15" font-weight="bold">{escape(title)}</text>']
    y = 60
    for metric, label, unit in (("rate", "Backfill rate", "rows/s"), ("batch_ms", "Batch duration", "ms")):
        box = (90, y, width - 140, panel_h)
        series = []
        for i, (name, records) in enumerate(sorted(progress.items())):
            t0 = _number(records[0].get("ts")) or 0
            points = []
            for n, record in enumerate(records):
                value = _number(record.get(metric))
                ts = _number(record.get("ts"))
                if value is not None:
                    points.append(((ts - t0) if ts is not None else float(n), value))
            if points:
                series.append((name, points, colours[i % len(colours)]))
        ymax = max((v for _, pts, _ in series for _, v in pts), default=0)
        span = max((pts[-1][0] for _, pts, _ in series), default=0)
        parts.append(_axes(box, label, ymax, unit, f"{span:,.0f} s"))
        if not series:
            parts.append(f'<text x="{box[0] + 10}" y="{y + panel_h / 2}" font-size="12" fill="#777">'
                         "no backfill progress recorded for this run</text>")
        for k, (name, points, colour) in enumerate(series):
            parts.append(_polyline(points, box, colour))
            parts.append(f'<text x="{box[0] + box[2] - 4}" y="{y + 14 + 13 * k}" font-size="11" '
                         f'text-anchor="end" fill="{colour}">{escape(name)}</text>')
        y += panel_h + 50
    # Latency before/after: grouped bars.
    box = (90, y, width - 140, panel_h)
    perf = performance or {}
    before = perf.get("before") or {}
    bars = [(f"{q} before", _number(before.get(f"{q}_ms")), "#7f7f7f") for q in ("p50", "p95")]
    bars += [(f"{q} after", _number(perf.get(f"{q}_ms")), "#1f77b4") for q in ("p50", "p95")]
    bars = [bars[0], bars[2], bars[1], bars[3]]
    ymax = max((v for _, v, _ in bars if v is not None), default=0)
    parts.append(_axes(box, "API latency under the bounded load", ymax, "ms", ""))
    if ymax <= 0:
        parts.append(f'<text x="{box[0] + 10}" y="{y + panel_h / 2}" font-size="12" fill="#777">'
                     "no latency measured (no application URL configured)</text>")
    else:
        slot = box[2] / len(bars)
        for i, (label, value, colour) in enumerate(bars):
            if value is None:
                continue
            h = value / ymax * panel_h
            x = box[0] + i * slot + slot * 0.2
            parts.append(f'<rect x="{x:.1f}" y="{y + panel_h - h:.1f}" width="{slot * 0.6:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"/>')
            parts.append(f'<text x="{x + slot * 0.3:.1f}" y="{y + panel_h - h - 4:.1f}" font-size="10" '
                         f'text-anchor="middle">{value:g} ms</text>')
            parts.append(f'<text x="{x + slot * 0.3:.1f}" y="{y + panel_h + 14}" font-size="10" '
                         f'text-anchor="middle">{escape(label)}</text>')
    height = y + panel_h + 40
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>' + "".join(parts) + "</svg>\n")
