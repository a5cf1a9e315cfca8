#!/usr/bin/env python3
"""Blue-green switch benchmark: release 1.0.0 live behind nginx, 2.0.0 deployed by the
blue_green role while a request loop runs through nginx.

    .venv/bin/python benchmarks/bench_switch.py [--threads 4] [--predictions 3000]   (make bench-switch)

One throw-away PostgreSQL cluster (tools/pgcluster.py), one reference database, nginx and
supervisord under a temporary state directory on free loopback ports (tests/deploy_helpers.py).
Measured:
  switch_ms   from the moment the idle colour first answers /health as 2.0.0 (polled directly,
              every 20 ms) to the start of the last request that nginx still sent to 1.0.0
  latency     p50/p99 of the requests through nginx before (until the idle colour is healthy),
              during (from then to the switch + 1 s) and after the switch
  failed      non-2xx answers and connection errors over the whole run
Writes benchmarks/results/switch_latest.json and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import pgcluster  # noqa: E402
from conftest import PgServer, alembic, run_playbook, seed  # noqa: E402
from deploy_helpers import build_release, new_stack  # noqa: E402
from traffic import Traffic  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def window(answers, start: float, end: float) -> dict:
    lat = [a.elapsed * 1000 for a in answers if start <= a.started < end]
    return {"requests": len(lat), "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--predictions", type=int, default=3000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "switch_latest.json"))
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-switch-"))
    os.chmod(base, 0o755)
    cluster = pgcluster.Cluster(base / "pg", pgcluster.free_port())
    stack = None
    try:
        cluster.init()
        cluster.start()
        password = cluster.ensure_database("football_prediction", "football")
        pg = PgServer(cluster=cluster, host="127.0.0.1", port=cluster.port, user="football", password=password)
        db = "football_prediction"
        alembic(pg, db, "upgrade", "v1_0_0")
        seed(pg, db, args.predictions, "--seed", "7")
        releases = base / "releases"
        for version in ("1.0.0", "2.0.0"):
            build_release(version, releases)
        stack = new_stack(base / "deploy", releases)
        common = stack.variables(pg, db)
        log("deploying 1.0.0 (blue)")
        res = run_playbook(ROOT / "playbooks" / "app_release.yml", base, {
            **common, "blue_green_release_version": "1.0.0", "blue_green_expect_revision": "v1_0_0"})
        if res.rc != 0:
            raise SystemExit(res.output[-3000:])
        alembic(pg, db, "upgrade", "v2_0_0")
        healthy_at: list[float] = []
        done = threading.Event()

        def watch_idle() -> None:
            url = f"http://127.0.0.1:{stack.ports['green']}/health"
            while not done.is_set() and not healthy_at:
                try:
                    with urllib.request.urlopen(url, timeout=1) as r:
                        if json.loads(r.read()).get("version") == "2.0.0":
                            healthy_at.append(time.monotonic())
                except OSError:
                    pass
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_idle, daemon=True)
        log("deploying 2.0.0 (green) under traffic")
        with Traffic(stack.url, ["/health", "/predictions/1", "/predictions/2"], threads=args.threads,
                     requests=1_000_000, min_requests=500, tail=200, pace=0) as loop:
            time.sleep(1.0)
            watcher.start()
            started = time.monotonic()
            res = run_playbook(ROOT / "playbooks" / "app_release.yml", base, {
                **common, "blue_green_release_version": "2.0.0", "blue_green_expect_revision": "v2_0_0"})
            deploy_s = time.monotonic() - started
        done.set()
        if res.rc != 0 or not healthy_at:
            raise SystemExit(res.output[-3000:])
        answers = loop.ordered()
        last_old = max(a.started for a in answers if a.version == "1.0.0")
        t_healthy = healthy_at[0]
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "threads": args.threads, "requests": len(answers), "failed": len(loop.failures),
            "versions_seen": loop.version_changes(),
            "deploy_playbook_s": round(deploy_s, 2),
            "switch_ms": round((last_old - t_healthy) * 1000, 1),
            "latency": {"before": window(answers, 0, t_healthy),
                        "during": window(answers, t_healthy, last_old + 1.0),
                        "after": window(answers, last_old + 1.0, float("inf"))},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"requests {result['requests']}, failed {result['failed']}, versions {result['versions_seen']}")
        print(f"switch (idle healthy -> last request to the old colour): {result['switch_ms']} ms; "
              f"deploy playbook {result['deploy_playbook_s']} s")
        for name, w in result["latency"].items():
            print(f"  {name:7s} {w['requests']:6d} requests  p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms")
        return 0 if result["failed"] == 0 else 1
    finally:
        if stack is not None:
            stack.stop()
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
