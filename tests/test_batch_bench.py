"""Smoke run of the backfill benchmark on a few thousand rows: it runs, and its result has the
shape issue #6 fixed.  The figures of a run this small mean nothing; `make bench` measures."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_bench_smoke_run_writes_the_result_shape(tmp_path):
    out = tmp_path / "latest.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_backfill.py"), "--rows", "3000",
                           "--memory-rows", "4000", "--baseline-s", "1", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["rows"] == 3000
    for method in ("runbook_loop", "single_update", "batch_sql", "batch_python", "batch_python_paced"):
        figures = result["methods"][method]
        assert {"wall_s", "rows_per_s", "max_lock_ms", "load_p99_ms", "load_max_ms", "load_completed"} <= set(figures)
        assert figures["rows_per_s"] > 0
    assert set(result["ratios"]) == {"batch_sql_vs_single", "batch_python_vs_single", "batch_python_paced_vs_single",
                                     "batch_sql_vs_runbook"}
    # The paced Python run had room for two workers (the pace chose how many).
    assert result["methods"]["batch_python_paced"]["pace"]["workers_used"]
    assert result["memory"]["peak_mb_1m"] > 0 and result["memory"]["peak_mb_5m"] > 0
    # Every method wrote exactly the rows the single UPDATE wrote.
    assert all(result["same_result_as_single_update"].values())
    assert "batch_sql" in proc.stdout and "targets:" in proc.stdout
    # Beside the busy loop, with the foreground budget: the load alone, both transforms, what the pace chose.
    nb = result["neighbour"]
    assert nb["budget_ms"] == 10.0 and nb["max_workers"] == 2 and nb["baseline_load"]["load_completed"] > 0
    assert nb["neighbour_cpu_share"] > 0.1  # the busy loop ran (most of a core on a quiet machine)
    for method in ("batch_sql", "batch_python"):
        figures = nb["methods"][method]
        assert figures["result_md5"] == result["methods"]["single_update"]["result_md5"]
        assert figures["pace"]["budget_ms"] == 10.0 and figures["pace"]["probes"] >= 0
        assert {"workers_used", "batch_ms_used", "pause_ms_used", "decisions"} <= set(figures["pace"])
        assert nb["ratios"][method + "_vs_quiet_single"] > 0
    assert "neighbour: batch_python load p99 <= budget 10 ms" in result["targets"]
    assert "Beside a busy loop on core" in proc.stdout
