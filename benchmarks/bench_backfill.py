#!/usr/bin/env python3
"""Backfill benchmark: the runbook's loop, one UPDATE, and pg_batch_update, side by side.

    .venv/bin/python benchmarks/bench_backfill.py [--rows 1000000] [--rate 200] [--memory-rows 5000000]

One run, one throw-away PostgreSQL cluster (tools/pgcluster.py), one seeded template
database (examples/football_prediction/seed.py at the 2.0.0 schema).  Before each method
the database is re-created from the template, so every method starts from the same state.
During each method a fixed-rate pgbench load (90 % point reads, 10 % point updates on
``predictions``) runs; its per-transaction log gives p99/max latency and completed rate
for exactly the method's time window.

Methods:
  runbook_loop   the runbook's own script: page with ORDER BY id OFFSET/LIMIT, compute in Python,
                 one UPDATE per row, one commit per page (run in full, not extrapolated)
  single_update  the plan's SQL expressions in one set-based UPDATE (one transaction)
  batch_sql      pg_batch_update with the plan's SQL expressions (through ansible-playbook)
  batch_python   pg_batch_update with examples/football_prediction/transforms.py (one worker)
  batch_python_paced  the same with room for two workers (``max_workers: 2``) under the module's
                 default budget (``max_foreground_p99_ms`` 100): the pace chooses

Then the same load beside a CPU-hungry neighbour (a busy loop pinned to one core, bounded in
time): the load alone, then batch_sql and batch_python with a foreground budget
(``max_foreground_p99_ms``, --neighbour-budget-ms, default 10) and room for two workers
(``max_workers: 2``): the pace chooses workers, batch time and pauses itself.  Their throughput
is compared with the quiet single_update of the same run (--neighbour-budget-ms 0 skips this).

Writes benchmarks/results/latest.json and prints a table.  Module figures (wall_s,
max_lock_ms) are the module's own measurements (``duration_s``, ``max_lock_ms``); the
ansible-playbook start-up is reported separately as ``end_to_end_s``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import yaml
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
OWNER = "football"  # the login role that owns the benchmark databases
APP = ROOT / "examples" / "football_prediction"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(APP))
import pgcluster  # noqa: E402
import transforms  # noqa: E402

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())
BACKFILL = PLAN["backfills"][0]
METHODS = ("runbook_loop", "single_update", "batch_sql", "batch_python", "batch_python_paced")
PGBENCH_SCRIPT = """\\set r random(1, 100)
\\set id random(1, {max_id})
\\if :r <= 90
SELECT id, home_win_prob, draw_prob, away_win_prob, actual_result, model_accuracy FROM predictions WHERE id = :id;
\\else
UPDATE predictions SET updated_at = now() WHERE id = :id;
\\endif
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-"))
        os.chmod(self.base, 0o755)
        self.cluster = pgcluster.Cluster(self.base / "pg", pgcluster.free_port())
        self.work = self.base / "work"
        self.work.mkdir()
        os.chmod(self.work, 0o777)

    # -- cluster and databases -----------------------------------------------------------
    def start(self) -> None:
        self.cluster.init()
        conf = self.cluster.data / "postgresql.conf"
        with conf.open("a") as fh:  # a little headroom for a 5M-row table; defaults otherwise
            fh.write("max_wal_size = 4GB\ncheckpoint_timeout = 15min\n")
        self.cluster.start()
        self.password = self.cluster.ensure_database("bench_admin", OWNER)
        self.port = self.cluster.port

    def stop(self) -> None:
        try:
            self.cluster.stop("immediate")
        finally:
            if not self.args.keep:
                shutil.rmtree(self.base, ignore_errors=True)

    def admin(self, dbname: str = "postgres"):
        conn = psycopg2.connect(host=str(self.cluster.run), port=self.port, user=self.cluster.os_user, dbname=dbname)
        conn.autocommit = True
        return conn

    def connect(self, dbname: str, autocommit: bool = False):
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=OWNER, password=self.password,
                                dbname=dbname, application_name="bench")
        conn.autocommit = autocommit
        return conn

    def env(self, dbname: str) -> dict:
        env = dict(os.environ)
        env.update(PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER=OWNER, PGPASSWORD=self.password,
                   PGDATABASE=dbname)
        return env

    def make_template(self, name: str, rows: int) -> None:
        log(f"seeding {rows:,} predictions into template {name}")
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(OWNER)))
        conn.close()
        subprocess.run([str(VENV_BIN / "alembic"), "-c", str(APP / "alembic.ini"), "upgrade", "v2_0_0"],
                       env=self.env(name), check=True, capture_output=True, cwd=ROOT)
        subprocess.run([sys.executable, str(APP / "seed.py"), "--predictions", str(rows), "--seed", "42",
                        "--anchor", "2026-11-01T00:00:00+00:00"], env=self.env(name), check=True,
                       capture_output=True, cwd=ROOT)
        conn = self.admin(name)
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE, FREEZE) predictions")
        conn.close()

    def reset(self, template: str, name: str = "bench") -> str:
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(OWNER), sql.Identifier(template)))
            cur.execute("CHECKPOINT")
        conn.close()
        return name

    # -- load ------------------------------------------------------------------------------
    def start_load(self, db: str, max_id: int) -> tuple[subprocess.Popen, Path]:
        script = self.work / "load.sql"
        script.write_text(PGBENCH_SCRIPT.format(max_id=max_id))
        prefix = self.work / f"load-{uuid.uuid4().hex[:6]}"
        cmd = ["pgbench", "-n", "-f", str(script), "-R", str(self.args.rate), "-c", str(self.args.clients), "-j", "1",
               "-T", "36000", "-l", f"--log-prefix={prefix}", db]
        proc = subprocess.Popen(cmd, env=self.env(db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=self.work)
        return proc, prefix

    @staticmethod
    def stop_load(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def load_stats(self, prefix: Path, start: float, end: float, keep: bool = False) -> dict:
        """Latency of each request from its scheduled start (pgbench -R: time + schedule lag)."""
        latencies = []
        for path in self.work.glob(prefix.name + "*"):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) < 6 or parts[2] == "skipped":
                    continue
                done_at = int(parts[4]) + int(parts[5]) / 1e6
                lag = int(parts[6]) if len(parts) > 6 else 0
                latency_us = int(parts[2]) + lag
                # Requests scheduled during the method count, however late they complete (a request
                # blocked by the method's row locks completes after it).
                if not start <= done_at - latency_us / 1e6 <= end:
                    continue
                latencies.append(latency_us / 1000.0)
            if not keep:
                path.unlink()
        window = max(end - start, 1e-6)
        if not latencies:
            return {"load_p99_ms": None, "load_max_ms": None, "load_completed": 0, "load_completed_per_s": 0.0,
                    "load_offered_per_s": self.args.rate}
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        return {"load_p99_ms": round(p99, 2), "load_max_ms": round(latencies[-1], 2),
                "load_p50_ms": round(latencies[len(latencies) // 2], 2),
                "load_completed": len(latencies), "load_completed_per_s": round(len(latencies) / window, 1),
                "load_offered_per_s": self.args.rate,
                "load_over_1s": sum(1 for x in latencies if x > 1000.0)}

    # -- methods ---------------------------------------------------------------------------
    def runbook_loop(self, db: str) -> dict:
        page = 1000
        conn = self.connect(db)
        longest = 0.0
        offset = 0
        start = time.monotonic()
        with conn.cursor() as cur:
            while True:
                t0 = time.monotonic()
                cur.execute("SELECT id, home_win_prob, draw_prob, away_win_prob, actual_result, model_version "
                            "FROM predictions ORDER BY id LIMIT %s OFFSET %s", (page, offset))
                rows = cur.fetchall()
                if not rows:
                    conn.rollback()
                    break
                for pid, home, draw, away, actual, version in rows:
                    cur.execute("UPDATE predictions SET model_accuracy = %s, feature_importance = %s WHERE id = %s",
                                (transforms.accuracy(home, draw, away, actual),
                                 transforms.importance(home, draw, away, version), pid))
                conn.commit()
                longest = max(longest, time.monotonic() - t0)
                offset += page
        conn.close()
        return {"wall_s": time.monotonic() - start, "max_lock_ms": longest * 1000.0}

    def single_update(self, db: str) -> dict:
        conn = self.connect(db)
        assignments = sql.SQL(", ").join(sql.SQL("{} = ({})").format(sql.Identifier(c), sql.SQL(e))
                                         for c, e in BACKFILL["set"].items())
        stmt = sql.SQL("UPDATE predictions SET {} WHERE {}").format(assignments, sql.SQL(BACKFILL["where"]))
        start = time.monotonic()
        with conn.cursor() as cur:
            cur.execute(stmt)
        conn.commit()
        wall = time.monotonic() - start
        conn.close()
        return {"wall_s": wall, "max_lock_ms": wall * 1000.0}  # every row stays locked until the commit

    def module(self, db: str, python: bool, budget_ms: float | None = None, max_workers: int | None = None) -> dict:
        args = {"login_host": "127.0.0.1", "login_port": self.port, "login_user": OWNER,
                "login_password": self.password, "login_db": db, "name": BACKFILL["name"], "table": "predictions",
                "where": BACKFILL["where"], "batch_size": BACKFILL.get("batch_size", 10000),
                "target_batch_ms": self.args.target_batch_ms or BACKFILL.get("target_batch_ms", 100),
                "pause_ms": BACKFILL.get("pause_ms", 0),
                "lock_timeout": BACKFILL.get("lock_timeout", "2s"), "workers": self.args.workers,
                "progress_file": str(self.work / f"progress-{db}.jsonl")}
        if budget_ms is not None:
            args["max_foreground_p99_ms"] = budget_ms
        if max_workers is not None:
            args["max_workers"] = max(max_workers, self.args.workers)
        if python:
            args.update(python="transforms:prediction_accuracy", python_path=[str(APP)],
                        columns=["model_accuracy", "feature_importance"],
                        read_columns=["home_win_prob", "draw_prob", "away_win_prob", "actual_result",
                                      "model_version"])
        else:
            args["set"] = BACKFILL["set"]
        play = [{"name": "Benchmark", "hosts": "localhost", "gather_facts": False,
                 "tasks": [{"name": "Backfill", "pg_batch_update": "{{ __args }}", "register": "__r"},
                           {"name": "Save", "ansible.builtin.copy": {"content": "{{ __r | to_json }}",
                                                                     "dest": "{{ __out }}", "mode": "0600"}}]}]
        pb = self.work / "bench-play.yml"
        pb.write_text(json.dumps(play))
        out = self.work / "bench-result.json"
        out.unlink(missing_ok=True)
        varsfile = self.work / "bench-vars.json"
        varsfile.write_text(json.dumps({"__args": args, "__out": str(out)}))
        varsfile.chmod(0o600)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        env.pop("PGPASSWORD", None)
        sampler = RssSampler()
        sampler.start()
        start = time.monotonic()
        proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), str(pb), "-i", str(ROOT / "tests" / "inventory.yml"),
                               "-e", f"@{varsfile}"], check=False, cwd=ROOT, env=env, capture_output=True, text=True)
        end_to_end = time.monotonic() - start
        sampler.stop()
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"pg_batch_update failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
        res = json.loads(out.read_text())
        # The backfill's own window: its first and last progress lines (not ansible-playbook's start-up).
        lines = [json.loads(x) for x in Path(args["progress_file"]).read_text().splitlines() if x.strip()]
        window = [datetime.datetime.fromisoformat(lines[i]["ts"]).timestamp() for i in (0, -1)]
        Path(args["progress_file"]).unlink()
        return {"wall_s": res["duration_s"], "window": window, "max_lock_ms": res["max_lock_ms"],
                "end_to_end_s": round(end_to_end, 2),
                "batches": res["batches"], "final_batch_size": res["batch_size"], "retries": res["retries"],
                "max_batch_ms": res["max_batch_ms"], "peak_rss_mb": sampler.peak_mb,
                "rows_updated": res["rows_updated"], "pace": pace_summary(res.get("pace"))}

    def run_method(self, name: str, template: str, rows: int, with_load: bool = True,
                   budget_ms: float | None = None, max_workers: int | None = None) -> dict:
        db = self.reset(template)
        log(f"{name}: running on {rows:,} rows" + (f" under {self.args.rate} tps of pgbench" if with_load else ""))
        load = None
        if with_load:
            load, prefix = self.start_load(db, rows)
            time.sleep(2.0)  # connected and at rate before the method starts
        t_start = time.time()
        try:
            if name == "runbook_loop":
                figures = self.runbook_loop(db)
            elif name == "single_update":
                figures = self.single_update(db)
            else:
                if max_workers is None and name == "batch_python_paced":
                    max_workers = 2
                figures = self.module(db, python=name.startswith("batch_python"), budget_ms=budget_ms,
                                      max_workers=max_workers)
        finally:
            t_end = time.time()
            if load is not None:
                # Let requests the method held up complete, and pgbench flush its log buffer.
                time.sleep(3.0)
                self.stop_load(load)
        if with_load:
            window = figures.pop("window", None)
            if window:
                # The load's figures while the backfill itself ran; those of the whole ansible-playbook run
                # (its start-up's CPU burst included) beside them.
                whole = self.load_stats(prefix, t_start, t_end, keep=True)
                figures["load_whole_playbook"] = {k: whole[k] for k in ("load_p99_ms", "load_max_ms")}
                figures.update(self.load_stats(prefix, window[0], window[1]))
            else:
                figures.update(self.load_stats(prefix, t_start, t_end))
        figures["rows_per_s"] = round(rows / figures["wall_s"], 1)
        figures["wall_s"] = round(figures["wall_s"], 3)
        figures["max_lock_ms"] = round(figures["max_lock_ms"], 1)
        figures["result_md5"] = self.result_md5(db)
        log(f"{name}: {figures['wall_s']} s, {figures['rows_per_s']:,.0f} rows/s, max lock "
            f"{figures['max_lock_ms']} ms, load p99 {figures.get('load_p99_ms')} ms, "
            f"max {figures.get('load_max_ms')} ms")
        return figures

    def baseline_load(self, template: str, rows: int, seconds: float = 10.0) -> dict:
        db = self.reset(template)
        load, prefix = self.start_load(db, rows)
        time.sleep(2.0)
        t_start = time.time()
        time.sleep(seconds)
        t_end = time.time()
        time.sleep(3.0)
        self.stop_load(load)
        return self.load_stats(prefix, t_start, t_end)

    def result_md5(self, db: str) -> str:
        conn = self.connect(db)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE feature_importance IS NULL), md5(string_agg(id::text || ':' "
                        "|| coalesce(model_accuracy::text, '-') || ':' || feature_importance::text, ',' ORDER BY id)) "
                        "FROM predictions")
            missing, digest = cur.fetchone()
        conn.close()
        return digest if missing == 0 else f"INCOMPLETE ({missing} rows missing)"


def pace_summary(pace: dict | None) -> dict | None:
    """What the foreground budget chose in a module run (its result's ``pace``)."""
    if not pace:
        return None
    return {k: pace.get(k) for k in ("budget_ms", "foreground_p99_ms", "foreground_p50_ms", "probes", "workers",
                                     "target_batch_ms", "pause_ms", "workers_used", "batch_ms_used", "pause_ms_used",
                                     "decisions", "over_budget_at_slowest")}


class Neighbour:
    """A CPU-hungry neighbour: a busy loop pinned to the last core, which ends by itself after
    ``limit_s`` (so a killed benchmark leaves no runaway) and is stopped at the end of the section."""

    def __init__(self, limit_s: float = 3600.0) -> None:
        self.limit_s = limit_s
        self.proc: subprocess.Popen | None = None
        self.core = max(os.sched_getaffinity(0))

    def __enter__(self) -> Neighbour:
        code = ("import os, time\n"
                f"os.sched_setaffinity(0, {{{self.core}}})\n"
                f"end = time.monotonic() + {self.limit_s}\n"
                "while time.monotonic() < end:\n"
                "    sum(range(1000))\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def cpu_s(self) -> float:
        """CPU seconds the neighbour has used (utime + stime)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")


class RssSampler:
    """Peak RSS (VmHWM) of the module process (AnsiballZ_pg_batch_update.py), sampled every 0.1 s."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024.0, 1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    if b"AnsiballZ_pg_batch_update" not in (entry / "cmdline").read_bytes():
                        continue
                    for line in (entry / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except OSError:
                    continue
            self._stop.wait(0.1)


def ratio(a: dict, b: dict) -> float:
    return round(a["rows_per_s"] / b["rows_per_s"], 3)


def print_table(result: dict) -> None:
    rows = result["rows"]
    print(f"\nBackfill of {rows:,} predictions, pgbench load {result['load']['rate']} tps "
          f"({result['load']['clients']} clients, 90% reads / 10% updates)")
    head = f"{'method':<15}{'wall s':>9}{'rows/s':>11}{'max lock ms':>13}{'load p99 ms':>13}{'load max ms':>13}" \
           f"{'load done/s':>13}{'same rows':>11}"
    print(head)
    print("-" * len(head))
    reference = result["methods"]["single_update"]["result_md5"]
    base = result.get("baseline_load", {})
    if base:
        print(f"{'(load alone)':<15}{'':>9}{'':>11}{'':>13}{base['load_p99_ms']:>13}{base['load_max_ms']:>13}"
              f"{base['load_completed_per_s']:>13}{'':>11}")
    for name in METHODS:
        if name not in result["methods"]:
            continue
        m = result["methods"][name]
        print(f"{name:<15}{m['wall_s']:>9.2f}{m['rows_per_s']:>11,.0f}{m['max_lock_ms']:>13,.1f}"
              f"{m['load_p99_ms']!s:>13}{m['load_max_ms']!s:>13}{m['load_completed_per_s']!s:>13}"
              f"{'yes' if m['result_md5'] == reference else 'NO':>11}")
    r = result["ratios"]
    print(f"\nthroughput ratios: batch_sql/single {r.get('batch_sql_vs_single')}, batch_python/single "
          f"{r.get('batch_python_vs_single')}, batch_python_paced/single {r.get('batch_python_paced_vs_single')}"
          f" (workers {(result['methods'].get('batch_python_paced', {}).get('pace') or {}).get('workers_used')}), "
          f"batch_sql/runbook {r.get('batch_sql_vs_runbook')}")
    mem = result["memory"]
    print(f"module peak RSS: {mem['peak_mb_1m']} MB at {rows:,} rows, {mem['peak_mb_5m']} MB at "
          f"{mem.get('rows_5m', 0):,} rows ({mem.get('method')})")
    nb = result.get("neighbour")
    if nb:
        alone = nb["baseline_load"]["load_p99_ms"]
        print(f"\nBeside a busy loop on core {nb['core']} (the load alone: p99 {alone} ms), "
              f"budget max_foreground_p99_ms={nb['budget_ms']}, max_workers {nb['max_workers']}:")
        for name in ("batch_sql", "batch_python"):
            m = nb["methods"].get(name)
            if not m:
                continue
            pace = m.get("pace") or {}
            print(f"  {name:<13} {m['wall_s']:>7.2f} s {m['rows_per_s']:>10,.0f} rows/s  "
                  f"x{nb['ratios'].get(name + '_vs_quiet_single')} of the quiet single UPDATE, load p99 "
                  f"{m['load_p99_ms']} ms (max {m['load_max_ms']}), max lock {m['max_lock_ms']} ms; chose workers "
                  f"{pace.get('workers_used')}, batch ms {pace.get('batch_ms_used')}, pause ms "
                  f"{pace.get('pause_ms_used')}, final batch {m.get('final_batch_size')} rows, "
                  f"{pace.get('decisions')} decisions, probe p99 {pace.get('foreground_p99_ms')} ms")
    print("targets:")
    for name, ok in result["targets"].items():
        print(f"  {'met ' if ok['met'] else 'MISSED'} {name}: {ok['value']} (target {ok['target']})")


def targets(result: dict) -> dict:
    m, r, mem = result["methods"], result["ratios"], result["memory"]
    out = {}
    if "batch_sql_vs_single" in r:
        out["batch_sql >= 0.9 x single_update"] = (r["batch_sql_vs_single"], ">= 0.9", r["batch_sql_vs_single"] >= 0.9)
    if "batch_sql_vs_runbook" in r:
        out["batch_sql >= 25 x runbook_loop"] = (r["batch_sql_vs_runbook"], ">= 25", r["batch_sql_vs_runbook"] >= 25)
    if "batch_sql" in m:
        out["batch_sql max lock <= 200 ms"] = (m["batch_sql"]["max_lock_ms"], "<= 200",
                                               m["batch_sql"]["max_lock_ms"] <= 200)
    for name in ("batch_sql", "batch_python", "batch_python_paced"):
        if name not in m:
            continue
        p99, mx = m[name]["load_p99_ms"], m[name]["load_max_ms"]
        out[f"{name} load p99 <= 10 ms"] = (p99, "<= 10", p99 is not None and p99 <= 10)
        out[f"{name} load max <= 1000 ms"] = (mx, "<= 1000", mx is not None and mx <= 1000)
    if "batch_python_vs_single" in r:
        out["batch_python >= 0.8 x single_update"] = (r["batch_python_vs_single"], ">= 0.8",
                                                      r["batch_python_vs_single"] >= 0.8)
        out["batch_python max lock < 200 ms"] = (m["batch_python"]["max_lock_ms"], "< 200",
                                                 m["batch_python"]["max_lock_ms"] < 200)
    if "batch_python_paced_vs_single" in r:
        paced = m["batch_python_paced"]
        out["batch_python_paced (max_workers 2) >= 0.8 x single_update"] = (
            r["batch_python_paced_vs_single"], ">= 0.8", r["batch_python_paced_vs_single"] >= 0.8)
        out["batch_python_paced max lock < 200 ms"] = (paced["max_lock_ms"], "< 200", paced["max_lock_ms"] < 200)
    nb = result.get("neighbour")
    if nb:
        budget = nb["budget_ms"]
        for name, figures in nb["methods"].items():
            p99 = figures["load_p99_ms"]
            ratio_ = nb["ratios"][name + "_vs_quiet_single"]
            out[f"neighbour: {name} load p99 <= budget {budget:g} ms"] = (p99, f"<= {budget:g}",
                                                                       p99 is not None and p99 <= budget)
            out[f"neighbour: {name} >= 0.7 x the quiet single_update"] = (ratio_, ">= 0.7", ratio_ >= 0.7)
    if mem.get("peak_mb_5m") and mem.get("peak_mb_1m"):
        growth = round(mem["peak_mb_5m"] / mem["peak_mb_1m"], 3)
        out["memory 5M within 1.2 x of 1M"] = (growth, "<= 1.2", growth <= 1.2)
    return {k: {"value": v, "target": t, "met": ok} for k, (v, t, ok) in out.items()}


def run_neighbour(bench: Bench, args: argparse.Namespace, quiet_single: dict) -> dict:
    """The load alone, then the module with the SQL and the Python transform, each beside a busy loop on one core,
    with the foreground budget; throughput over the quiet single UPDATE's of this run."""
    section: dict = {"budget_ms": args.neighbour_budget_ms, "max_workers": args.neighbour_max_workers,
                     "neighbour": "a Python busy loop pinned to one core", "methods": {}, "ratios": {}}
    with Neighbour() as nb:
        section["core"] = nb.core
        t0, cpu0 = time.monotonic(), nb.cpu_s()
        log(f"neighbour: a busy loop on core {nb.core}; the load alone for {args.baseline_s:g} s")
        section["baseline_load"] = bench.baseline_load("tmpl", args.rows, args.baseline_s)
        for name in ("batch_sql", "batch_python"):
            if name not in args.methods.split(","):
                continue
            figures = bench.run_method(name, "tmpl", args.rows, budget_ms=args.neighbour_budget_ms,
                                       max_workers=args.neighbour_max_workers)
            section["methods"][name] = figures
            section["ratios"][name + "_vs_quiet_single"] = ratio(figures, quiet_single)
        section["neighbour_cpu_share"] = round((nb.cpu_s() - cpu0) / max(time.monotonic() - t0, 1e-6), 3)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", type=int, default=5_000_000,
                        help="rows of the memory-only run (0 to skip)")
    parser.add_argument("--memory-method", choices=["batch_sql", "batch_python"], default="batch_python")
    parser.add_argument("--rate", type=int, default=200, help="pgbench transactions per second")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="pg_batch_update workers")
    parser.add_argument("--target-batch-ms", type=int, default=0,
                        help="pg_batch_update target batch duration (default: the plan's)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    parser.add_argument("--baseline-s", type=float, default=10.0, help="seconds of the load-alone baseline")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory")
    parser.add_argument("--neighbour-budget-ms", type=float, default=10.0,
                        help="max_foreground_p99_ms of the runs beside a CPU-hungry neighbour (0 skips them)")
    parser.add_argument("--neighbour-max-workers", type=int, default=2,
                        help="max_workers of the runs beside the neighbour (the pace chooses up to this)")
    args = parser.parse_args(argv)
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench is not on PATH (Debian: apt-get install postgresql-client-15)")
    bench = Bench(args)
    started = time.monotonic()
    try:
        bench.start()
        bench.make_template("tmpl", args.rows)
        result: dict = {"rows": args.rows, "methods": {}, "ratios": {}, "memory": {},
                        "load": {"tool": "pgbench", "rate": args.rate, "clients": args.clients,
                                 "mix": "90% point reads, 10% point updates on predictions",
                                 "latency": "from each request's scheduled start (pgbench -R: time + schedule lag)"}}
        result["baseline_load"] = bench.baseline_load("tmpl", args.rows, args.baseline_s)
        wanted = args.methods.split(",")
        for name in METHODS:
            if name in wanted:
                result["methods"][name] = bench.run_method(name, "tmpl", args.rows)
        m = result["methods"]
        for key, a, b in (("batch_sql_vs_single", "batch_sql", "single_update"),
                          ("batch_python_vs_single", "batch_python", "single_update"),
                          ("batch_python_paced_vs_single", "batch_python_paced", "single_update"),
                          ("batch_sql_vs_runbook", "batch_sql", "runbook_loop")):
            if a in m and b in m:
                result["ratios"][key] = ratio(m[a], m[b])
        if args.neighbour_budget_ms and "single_update" in m:
            result["neighbour"] = run_neighbour(bench, args, m["single_update"])
        peak_1m = m.get(args.memory_method, {}).get("peak_rss_mb")
        result["memory"] = {"peak_mb_1m": peak_1m, "peak_mb_5m": None, "method": args.memory_method,
                            "rows_1m": args.rows, "rows_5m": args.memory_rows,
                            "peak_mb_1m_batch_sql": m.get("batch_sql", {}).get("peak_rss_mb")}
        if args.memory_rows:
            bench.make_template("tmpl5", args.memory_rows)
            big = bench.run_method(args.memory_method, "tmpl5", args.memory_rows, with_load=False)
            result["memory"]["peak_mb_5m"] = big["peak_rss_mb"]
            result["memory"]["run_5m"] = {k: big[k] for k in ("wall_s", "rows_per_s", "max_lock_ms", "batches")}
        if result["ratios"]:
            result["targets"] = targets(result)
        result["same_result_as_single_update"] = {k: v["result_md5"] == m["single_update"]["result_md5"]
                                                  for k, v in m.items()} if "single_update" in m else {}
        result["environment"] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                 "cpus": os.cpu_count(), "python": platform.python_version(),
                                 "postgresql": pgcluster.PG_MAJOR, "bench_seconds": round(time.monotonic() - started)}
    finally:
        bench.stop()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if result.get("ratios"):
        print_table(result)
    print(f"\nresults: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
