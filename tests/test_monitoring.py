"""Monitoring with the real parts: the metrics files the code writes, node_exporter's textfile
collector, Prometheus's query API, a Pushgateway, promtool on the alert rules, and the
dashboard checked against the metric names the code really writes."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, conn_args, run_module
from test_report_flow import parse_prom
from validate_helpers import PLAN, free_port

MONITORING = ROOT / "monitoring"
BACKFILL = PLAN["backfills"][0]


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not path:
        why = (f"{name} is not installed (make bootstrap installs it; or apt-get install prometheus "
               "prometheus-node-exporter prometheus-pushgateway)")
        if os.environ.get("CI"):
            pytest.fail(why + ": CI must run these tests, not skip them")
        pytest.skip(why)
    return path


def backfill(pg, db, tmp_path, metrics_dir: Path) -> dict:
    from conftest import alembic
    alembic(pg, db, "upgrade", "v2_0_0")
    res = run_module("pg_batch_update", {
        **conn_args(pg, db), "name": BACKFILL["name"], "table": BACKFILL["table"], "key": BACKFILL["key"],
        "set": BACKFILL["set"], "where": BACKFILL["where"], "batch_size": 500, "max_batch_size": 500,
        "progress_interval_s": 0, "metrics_file": str(metrics_dir / "pgmigrate_backfill.prom"),
        "progress_file": str(tmp_path / f"backfill-{BACKFILL['name']}.jsonl")}, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    return res


def run_metrics(pg, db, tmp_path, metrics_dir: Path, **extra) -> dict:
    args = conn_args(pg, db)
    lock = run_module("migration_lock", {**args, "version": "2.0.0"}, tmp_path)
    run_module("migration_ledger", {**args, "run_id": lock["run_id"], "phase": "schema", "phase_status": "started"},
               tmp_path)
    run_module("migration_ledger", {**args, "run_id": lock["run_id"], "phase": "schema", "phase_status": "failed"},
               tmp_path)
    res = run_module("migration_metrics", {
        **args, "run_id": lock["run_id"], "status": "failed", "phase": "schema", "environment": "test",
        "metrics_file": str(metrics_dir / "pgmigrate_run.prom"),
        "validation": {"summary": {"passed": 3, "failed": 1, "error": 0, "skipped": 2, "warnings": 0}}, **extra},
        tmp_path)
    run_module("migration_lock", {**args, "state": "absent", "run_id": lock["run_id"], "run_status": "failed"},
               tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    return res


def expr_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bpgmigrate_[a-z_]+\b", expr))


def expr_label_names(expr: str) -> set[str]:
    """The labels an expression selects on or groups by ({label=~...}, by (a, b)); __name__ is no label."""
    grouped = {name.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for name in group.split(",")}
    return (grouped | set(re.findall(r"\b(\w+)\s*=~?\s*\"", expr))) - {"__name__", ""}


def dashboard_exprs() -> list[str]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return ([t["expr"] for panel in dash["panels"] for t in panel["targets"]]
            + [var.get("query", "") for var in dash["templating"]["list"]])


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_names() -> set[str]:
    return {n for expr in dashboard_exprs() for n in expr_metric_names(expr)}


def alert_names() -> set[str]:
    return {n for expr in alert_exprs() for n in expr_metric_names(expr)}


def test_alert_rules_pass_promtool_and_their_unit_tests():
    promtool = binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(MONITORING / "alerts.yml")], check=False,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    names = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert {"migration_failure", "migration_backfill_stalled"} <= names
    unit = subprocess.run([promtool, "test", "rules", str(MONITORING / "alerts_test.yml")], check=False,
                          capture_output=True, text=True, cwd=MONITORING)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_metrics_files_parse_and_carry_every_name_the_dashboard_uses(pg, reference_db, tmp_path):
    metrics_dir = tmp_path / "metrics"
    backfill(pg, reference_db, tmp_path, metrics_dir)
    run_metrics(pg, reference_db, tmp_path, metrics_dir)
    written = {}
    for prom in metrics_dir.glob("*.prom"):
        written.update(parse_prom(prom.read_text()))
    names = {name for name, _ in written}
    # The fleet panels' names come from fleet.yml's fleet.prom: tests/test_fleet.py checks those.
    missing = {n for n in dashboard_names() | alert_names() if not n.startswith("pgmigrate_fleet_")} - names
    assert not missing, f"the dashboard/alerts use metrics no code writes: {sorted(missing)}"
    # ... and the labels they select on or group by, the database label of a fleet included.
    labels_of: dict[str, set] = {}
    for name, labels in written:
        labels_of.setdefault(name, set()).update(key for key, _ in labels)
    for expr in dashboard_exprs() + alert_exprs():
        for name in expr_metric_names(expr) & set(labels_of):
            assert expr_label_names(expr) <= labels_of[name], (expr, name, sorted(labels_of[name]))
    run_labels = {dict(labels)["database"] for (n, labels), _ in written.items() if n.startswith("pgmigrate_run_")}
    assert run_labels == {f"{pg.host}:{pg.port}/{reference_db}"}  # no label given: the database's own address
    rows = {dict(labels).get("backfill"): v for (n, labels), v in written.items()
            if n == "pgmigrate_backfill_rows_done"}
    assert rows[BACKFILL["name"]] == 3000
    failed = [v for (n, _), v in written.items() if n == "pgmigrate_run_failed"]
    assert failed == [1]
    durations = {dict(labels)["phase"] for (n, labels), _ in written.items() if n == "pgmigrate_phase_duration_seconds"}
    assert durations == {"schema"}


@pytest.fixture
def services(tmp_path):
    """node_exporter (textfile collector) and Prometheus scraping it every second, on loopback."""
    node_exporter = binary("prometheus-node-exporter")
    prometheus = binary("prometheus")
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    node_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yml")],
        "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]}]}))
    logs = open(tmp_path / "services.log", "w")  # noqa: SIM115 - closed in the finally below
    procs = [
        subprocess.Popen([node_exporter, f"--web.listen-address=127.0.0.1:{node_port}", "--collector.disable-defaults",
                          "--collector.textfile", f"--collector.textfile.directory={textfile}"],
                         stdout=logs, stderr=logs),
        subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=logs, stderr=logs),
    ]
    try:
        yield textfile, f"http://127.0.0.1:{prom_port}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def prom_query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]["result"]
    except OSError:
        return []


def wait_for(base: str, expr: str, deadline_s: float = 60) -> list:
    """Poll the query API until the expression has a result (bounded; not a timing assertion)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = prom_query(base, expr)
        if result:
            return result
        time.sleep(0.5)
    return []


def test_prometheus_reads_the_backfill_progress_through_node_exporter(pg, reference_db, tmp_path, services):
    textfile, prometheus = services
    backfill(pg, reference_db, tmp_path, textfile)
    run_metrics(pg, reference_db, tmp_path, textfile)
    name = BACKFILL["name"]
    ratio = wait_for(prometheus, f'pgmigrate_backfill_progress_ratio{{backfill="{name}"}}')
    assert ratio, (tmp_path / "services.log").read_text()[-3000:]
    assert float(ratio[0]["value"][1]) == 1.0
    done = prom_query(prometheus, f'pgmigrate_backfill_rows_done{{backfill="{name}"}}')
    assert float(done[0]["value"][1]) == 3000
    failed = wait_for(prometheus, 'pgmigrate_run_failed{environment="test"}')
    assert failed and float(failed[0]["value"][1]) == 1
    # The migration_failure rule sees it too (pending or firing, depending on the evaluation tick).
    alerts = wait_for(prometheus, 'ALERTS{alertname="migration_failure"}')
    assert alerts and alerts[0]["metric"]["version"] == "2.0.0"


def test_pushgateway_push_and_an_unreachable_one_is_a_warning(pg, reference_db, tmp_path):
    pushgateway = binary("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen([pushgateway, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        # Two databases of one name on two clusters: two groups, keyed by the database label (one with a
        # slash, the host:port/db default, goes base64-encoded in the URL), neither replaces the other.
        res = run_metrics(pg, reference_db, tmp_path, tmp_path / "m", pushgateway_url=url)
        assert res["pushed"] is True and res["database"] == f"{pg.host}:{pg.port}/{reference_db}"
        other = run_metrics(pg, reference_db, tmp_path, tmp_path / "m1", pushgateway_url=url,
                            database_label="tenant_b")
        assert other["pushed"] is True and 'database="tenant_b"' in other["text"]
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            body = r.read().decode()
        failed = parse_prom("\n".join(line for line in body.splitlines() if line.startswith("pgmigrate_run_failed{")))
        groups = {dict(labels)["database"] for (_, labels), value in failed.items()
                  if dict(labels)["job"] == "pgmigrate" and value == 1}
        # Both of this test's groups are there (a full-suite run once also found a third, pushed from elsewhere
        # to a reused port: only these two are this test's to judge).
        assert {res["database"], "tenant_b"} <= groups, groups
    finally:
        proc.terminate()
        proc.wait(10)
    dead = run_metrics(pg, reference_db, tmp_path, tmp_path / "m2", pushgateway_url=f"http://127.0.0.1:{free_port()}")
    assert dead["pushed"] is False and dead.get("failed") is not True
    assert any("Pushgateway did not take" in w for w in dead.get("warnings", []))
    assert (tmp_path / "m2" / "pgmigrate_run.prom").exists()
