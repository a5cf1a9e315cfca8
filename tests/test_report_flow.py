"""The validate and report phases in a demo migration: real ansible-playbook, real PostgreSQL,
the reference API, and real webhook/SMTP receivers on loopback.  The report's numbers are
checked against the database, not against constants."""
from __future__ import annotations

import json
import re

from conftest import run_playbook
from receivers import SmtpReceiver, WebhookReceiver
from validate_helpers import PLAN, query, start_app, stop

HOOK_TOKEN = "T00-hook-S3CRET-token"


def demo_vars(pg, db, tmp_path, **extra) -> dict:
    return {**pg.conn_vars(db), "version": "2.0.0", "pgmigrate_db_sslmode": "disable",
            "pgmigrate_state_dir": str(tmp_path / "state"), "pgmigrate_log_dir": str(tmp_path / "logs"),
            "pgmigrate_report_dir": str(tmp_path / "reports"), "pgmigrate_docs_dir": str(tmp_path / "docs"),
            "pgmigrate_environment": "test", "pgmigrate_app_url": "", "validate_perf_requests": 40,
            "validate_perf_concurrency": 2,
            **extra}


def parse_prom(text: str) -> dict:
    """{(name, frozenset(labels)): value} from the Prometheus text format; fails on a bad line."""
    out = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, f"not Prometheus text format: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def test_demo_migration_writes_the_report_with_real_numbers(pg, reference_db, tmp_path):
    proc, url = start_app(pg, reference_db, version="1.0.0")
    try:
        with WebhookReceiver() as hook, SmtpReceiver() as smtp:
            # The whole runbook; the backup phase is left out for speed (its own tests prove it).
            res = run_playbook("migrate.yml", tmp_path, demo_vars(
                pg, reference_db, tmp_path, pgmigrate_app_url=url, blue_green_enabled=False,
                report_notify_webhook_url=hook.url(f"/services/{HOOK_TOKEN}"),
                report_notify_email_to=["dba@example.com"], report_notify_smtp_host="127.0.0.1",
                report_notify_smtp_port=smtp.port, report_notify_smtp_security="plain"), "--skip-tags", "backup")
            assert res.rc == 0, res.output[-6000:]
            posts, mails = list(hook.posts), list(smtp.mails)
    finally:
        stop(proc)
    run_id, status, lock = query(pg, reference_db, "SELECT id, status, (SELECT count(*) FROM migration_ops.lock) "
                                                   "FROM migration_ops.runs ORDER BY id DESC LIMIT 1")[0]
    assert status == "succeeded" and lock == 0
    migrated = query(pg, reference_db, "SELECT count(*) FROM predictions WHERE feature_importance IS NOT NULL")[0][0]
    total = query(pg, reference_db, "SELECT count(*) FROM predictions")[0][0]
    assert migrated == total == 3000

    day = sorted((tmp_path / "reports" / "2.0.0").glob("migration_validation_*.json"))
    assert len(day) == 1
    stamp = day[0].stem.rsplit("_", 1)[1]
    base = tmp_path / "reports" / "2.0.0"
    data = json.loads(day[0].read_text())
    assert data["validation"]["passed"] is True
    checks = {c["name"]: c for c in data["validation"]["checks"]}
    assert checks["predictions_count_unchanged"]["actual"] == total
    assert checks["feature_importance_filled"]["rows_migrated"] == migrated
    assert checks["smoke_api_matches_database"]["status"] == "passed"
    assert checks["performance_p95"]["status"] in ("passed", "failed")
    assert data["summary"]["records_migrated"] == migrated
    assert data["validation"]["baseline_source"] == f"ledger run {run_id}"

    text = (base / f"migration_validation_{stamp}.txt").read_text()
    assert "Verdict: PASSED" in text and "predictions_count_unchanged" in text
    report = (base / f"migration_report_{stamp}.md").read_text()
    assert f"Records migrated: **{migrated:,}**" in report
    assert f"run #{run_id}" in report
    for contact in PLAN["contacts"]:
        assert contact["email"] in report
    phases = query(pg, reference_db, "SELECT phases FROM migration_ops.runs WHERE id = %s", (run_id,))[0][0]
    assert f"| schema | succeeded | {phases['schema']['duration_s']:,.1f} s |" in report
    assert "v1_0_0 → v2_0_0" in report
    perf = data["validation"]["performance"]
    assert perf["before"]["p95_ms"] is not None and perf["p95_ms"] is not None
    assert f"| after | {perf['p50_ms']:,.1f} |" in report
    svg = (base / f"migration_report_{stamp}.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "<rect x=" in svg

    history = (tmp_path / "docs" / "MIGRATION_HISTORY.md").read_text()
    assert f"| #{run_id} | succeeded |" in history and f"| {migrated:,} |" in history
    model = (tmp_path / "docs" / "DATA_MODEL.md").read_text()
    assert "| model_accuracy | double precision | yes |" in model and "idx_predictions_model_accuracy" in model
    assert "migration_ops" not in model

    metrics = parse_prom((tmp_path / "logs" / "metrics" / "pgmigrate_run.prom").read_text())
    labels = frozenset({("version", "2.0.0"), ("environment", "test"), ("database", "football_db")})
    assert metrics[("pgmigrate_run_status", labels)] == 1 and metrics[("pgmigrate_run_failed", labels)] == 0

    events = [p["json"]["text"] for p in posts]
    assert any("started" in e for e in events) and any("succeeded" in e for e in events)
    assert all(p["path"] == f"/services/{HOOK_TOKEN}" for p in posts)
    assert len(mails) == 2 and "succeeded" in mails[-1]["data"] and str(migrated) in mails[-1]["data"].replace(",", "")
    for message in [p["raw"] for p in posts] + [m["data"] for m in mails]:
        assert pg.password not in message and HOOK_TOKEN not in message
    assert pg.password not in res.output and HOOK_TOKEN not in res.output


def test_failed_validation_fails_the_run_publishes_and_notifies(pg, reference_db, tmp_path):
    with WebhookReceiver() as hook:
        # No schema change, no backfill: the columns the plan expects are missing.
        res = run_playbook("playbooks/validate.yml", tmp_path, demo_vars(
            pg, reference_db, tmp_path, report_notify_webhook_url=hook.url(f"/hooks/{HOOK_TOKEN}")))
        posts = list(hook.posts)
    assert res.rc != 0
    assert "Validation failed" in res.output and "schema_matches_plan" in res.output
    assert "functional checks SKIPPED" in res.output.replace("Functional", "functional")
    status = query(pg, reference_db, "SELECT status FROM migration_ops.runs ORDER BY id DESC LIMIT 1")[0][0]
    assert status == "failed"
    metrics = parse_prom((tmp_path / "logs" / "metrics" / "pgmigrate_run.prom").read_text())
    labels = frozenset({("version", "2.0.0"), ("environment", "test"), ("database", "football_db")})
    assert metrics[("pgmigrate_run_failed", labels)] == 1 and metrics[("pgmigrate_run_status", labels)] == 2
    assert metrics[("pgmigrate_run_current_phase", labels | {("phase", "validate")})] == 1
    failed = [p for p in posts if "failed" in p["json"]["text"]]
    assert failed and "validate" in failed[0]["raw"] and HOOK_TOKEN not in failed[0]["raw"]
    stamp_files = list((tmp_path / "reports" / "2.0.0").glob("migration_validation_*.json"))
    data = json.loads(stamp_files[0].read_text())
    assert data["validation"]["passed"] is False
    skipped = [c for c in data["validation"]["checks"] if c["kind"] == "functional"]
    assert skipped and all(c["status"] == "skipped" for c in skipped)
    assert not (tmp_path / "docs" / "MIGRATION_HISTORY.md").exists()
