"""Verify the data_migrate role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import json
import os

STATE = f"/tmp/pgmigrate-molecule-{os.environ.get('MOLECULE_SCENARIO_NAME', 'data_migrate')}"
PORT = 55536


def psql(host, query: str) -> str:
    # testinfra quotes every argument; the password stays in a file and the environment.
    cmd = host.run(
        "PGPASSWORD=$(cat %s) psql -X -At -h 127.0.0.1 -p %s -U football -d football_prediction -c %s",
        f"{STATE}/secrets/football.password", str(PORT), query)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def test_every_prediction_backfilled(host):
    assert psql(host, "SELECT count(*) FROM predictions WHERE feature_importance IS NULL") == "0"
    assert psql(host, "SELECT count(*) FROM predictions WHERE (model_accuracy IS NULL) <> (actual_result IS NULL)") \
        == "0"
    assert psql(host, "SELECT count(*) FROM predictions WHERE model_accuracy < 0 OR model_accuracy > 1") == "0"


def test_checkpoint_is_complete(host):
    # The idempotence converge found nothing left to do: its pass completed without scanning.
    row = psql(host, "SELECT status || ':' || (last_success_at IS NOT NULL) FROM migration_ops.batch_checkpoints "
                     "WHERE backfill = 'predictions_accuracy'")
    assert row == "done:true"


def test_progress_log_and_metrics_written(host):
    log = host.file(f"{STATE}/logs/backfill-predictions_accuracy.jsonl")
    assert log.exists
    lines = [json.loads(x) for x in log.content_string.splitlines()]
    assert lines[-1]["event"] == "done" and lines[-1]["rows_done"] == lines[-1]["rows_total"]
    prom = host.file(f"{STATE}/logs/metrics/pgmigrate_backfill.prom")
    assert prom.exists
    assert 'pgmigrate_backfill_progress_ratio{backfill="predictions_accuracy",table="public.predictions"} 1.0' \
        in prom.content_string
