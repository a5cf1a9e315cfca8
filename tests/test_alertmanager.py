"""A failed run's migration_failure alert where operators look (issue #12 item 5): the metrics the failed
phase writes, node_exporter's textfile collector, Prometheus with the project's alert rules, a real
Alertmanager (Debian's prometheus-alertmanager, loopback, clustering off) read back through its API
(what the runbook's `curl -s http://localhost:9093/api/v2/alerts` reads), and its webhook notification
received by the test's webhook receiver."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
import yaml
from conftest import run_playbook
from receivers import WebhookReceiver
from test_backfill_safety import data_vars, plan_dir
from test_monitoring import MONITORING, binary
from validate_helpers import free_port


def wait_ready(url: str, proc: subprocess.Popen, log) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    log.flush()
    raise AssertionError(f"{url} did not come up")


@pytest.fixture
def alerting(tmp_path):
    """node_exporter -> Prometheus (the alert rules, evaluated every second) -> Alertmanager -> webhook."""
    node_exporter, prometheus = binary("prometheus-node-exporter"), binary("prometheus")
    alertmanager = binary("prometheus-alertmanager")
    textfile = tmp_path / "logs" / "metrics"
    textfile.mkdir(parents=True)
    node_port, prom_port, am_port = free_port(), free_port(), free_port()
    with WebhookReceiver() as hook:
        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump({
            "route": {"receiver": "pgmigrate-webhook", "group_by": ["alertname", "version"], "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "pgmigrate-webhook",
                           "webhook_configs": [{"url": hook.url("/alertmanager"), "send_resolved": False}]}]}))
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(MONITORING / "alerts.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]}]}))
        logs = open(tmp_path / "services.log", "w")  # noqa: SIM115 - closed in the finally below
        procs = []
        try:
            procs.append(subprocess.Popen([alertmanager, f"--config.file={am_config}",
                                           f"--storage.path={tmp_path / 'am'}",
                                           f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                                          stdout=logs, stderr=logs))
            procs.append(subprocess.Popen([node_exporter, f"--web.listen-address=127.0.0.1:{node_port}",
                                           "--collector.disable-defaults", "--collector.textfile",
                                           f"--collector.textfile.directory={textfile}"], stdout=logs, stderr=logs))
            procs.append(subprocess.Popen([prometheus, f"--config.file={prom_config}",
                                           f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                           f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=logs, stderr=logs))
            wait_ready(f"http://127.0.0.1:{am_port}/-/ready", procs[0], logs)
            yield {"alertmanager": f"http://127.0.0.1:{am_port}", "hook": hook, "log_dir": tmp_path / "logs",
                   "services_log": tmp_path / "services.log"}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            logs.close()


def firing(base: str, name: str, deadline_s: float = 120) -> list:
    """Poll Alertmanager's API until the alert is active (bounded; not a timing assertion)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{base}/api/v2/alerts?active=true", timeout=5) as r:
                alerts = [a for a in json.loads(r.read()) if a["labels"].get("alertname") == name]
        except OSError:
            alerts = []
        if alerts:
            return alerts
        time.sleep(0.5)
    return []


def test_failed_run_fires_migration_failure_in_alertmanager_and_its_webhook(pg, v2_db, tmp_path, alerting):
    # A backfill that fails half-way (a test-only plan): the data phase fails the run and writes its metrics.
    plans = plan_dir(tmp_path, set={"confidence": "confidence / (CASE WHEN id >= 2000 THEN 0 ELSE 1 END)"},
                     where=None, batch_size=500, min_batch_size=500, max_batch_size=500)
    res = run_playbook("playbooks/data.yml", tmp_path, {
        **data_vars(pg, v2_db, tmp_path, plans), "pgmigrate_log_dir": str(alerting["log_dir"]),
        "pgmigrate_environment": "alerting-test"})
    assert res.rc != 0 and "division by zero" in res.output
    alerts = firing(alerting["alertmanager"], "migration_failure")
    assert alerts, alerting["services_log"].read_text()[-3000:]
    alert = alerts[0]
    assert alert["labels"]["version"] == "2.0.0" and alert["labels"]["environment"] == "alerting-test"
    assert alert["labels"]["severity"] == "critical" and alert["status"]["state"] == "active"
    assert alert["labels"]["database"] == "football_db"  # the inventory host: one alert per database of a fleet
    assert "rollback.yml -e version=2.0.0 --limit football_db" in alert["annotations"]["description"]
    end = time.monotonic() + 60
    while time.monotonic() < end and not alerting["hook"].posts:
        time.sleep(0.5)
    posts = [p for p in alerting["hook"].posts if p["path"] == "/alertmanager"]
    assert posts, "Alertmanager sent no webhook notification"
    body = posts[0]["json"]
    assert body["status"] == "firing" and body["receiver"] == "pgmigrate-webhook"
    assert {a["labels"]["alertname"] for a in body["alerts"]} == {"migration_failure"}
    assert body["alerts"][0]["labels"]["environment"] == "alerting-test"
