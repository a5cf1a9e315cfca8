"""Verify the report role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

from pgverify import psql, state_dir

STATE = state_dir()




def test_both_runs_closed_and_lock_released(host):
    assert psql(host, "SELECT string_agg(status, ',' ORDER BY id) FROM migration_ops.runs") == "succeeded,succeeded"
    assert psql(host, "SELECT count(*) FROM migration_ops.lock") == "0"


def test_report_files_exist(host):
    files = host.run("ls %s", f"{STATE}/reports/2.0.0").stdout.split()
    kinds = {name.rsplit("_", 1)[0] + "." + name.rsplit(".", 1)[1] for name in files}
    assert kinds == {"migration_validation.txt", "migration_validation.json", "migration_report.md",
                     "migration_report.svg"}
    last = psql(host, "SELECT max(id) FROM migration_ops.runs")
    # One report per run (file names carry the run): the last run's names it.
    name = next(f for f in files if f.endswith(f"-run{last}.md"))
    report = host.file(f"{STATE}/reports/2.0.0/{name}").content_string
    assert f"run #{last}" in report and "dba@example.com" in report


def test_history_has_one_line_per_run(host):
    history = host.file(f"{STATE}/docs/MIGRATION_HISTORY.md").content_string
    for run_id in psql(host, "SELECT string_agg(id::text, ' ') FROM migration_ops.runs").split():
        assert history.count(f"| #{run_id} | succeeded |") == 1


def test_data_model_matches_the_catalog(host):
    model = host.file(f"{STATE}/docs/DATA_MODEL.md").content_string
    for table in psql(host, "SELECT string_agg(relname, ' ') FROM pg_class c JOIN pg_namespace n ON n.oid = "
                            "c.relnamespace WHERE n.nspname = 'public' AND relkind = 'r'").split():
        assert f"## public.{table}" in model
    assert "migration_ops" not in model


def test_run_metrics_say_succeeded(host):
    text = host.file(f"{STATE}/logs/metrics/pgmigrate_run.prom").content_string
    assert 'pgmigrate_run_status{version="2.0.0",environment="molecule",database="localhost"} 1' in text
    assert 'pgmigrate_run_failed{version="2.0.0",environment="molecule",database="localhost"} 0' in text
