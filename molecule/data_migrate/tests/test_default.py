"""Verify the data_migrate role against the scenario's real PostgreSQL (testinfra)."""
from __future__ import annotations

import json

from pgverify import psql, state_dir

STATE = state_dir()




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
    assert ('pgmigrate_backfill_progress_ratio{backfill="predictions_accuracy",table="public.predictions",'
            'database="football_prediction"} 1.0') in prom.content_string
