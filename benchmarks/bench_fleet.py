#!/usr/bin/env python3
"""Fleet benchmark: fleet.yml's wall time with forks 1 versus forks N on the same inventory.

    .venv/bin/python benchmarks/bench_fleet.py [--databases 6] [--predictions 300] [--forks 6]   (make bench-fleet)

Two throw-away PostgreSQL clusters (tools/pgcluster.py) on free loopback ports; --databases copies of a
small 1.0.0 reference database spread over them (tests/fleet_helpers.py, the fleet tests' inventory).
For each forks setting, one after the other, the databases are re-created from their template and
fleet.yml migrates them to 2.0.0 with the default waves ([1, "25%", "100%"]: the canary, one more,
then the rest); the wall time of the whole ansible-playbook run is measured, and every database is
checked to be at v2_0_0 with a succeeded run.  Writes benchmarks/results/fleet_latest.json.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import pgcluster  # noqa: E402
from conftest import PgServer, run_playbook  # noqa: E402
from fleet_helpers import fleet_report, make_fleet, write_inventory  # noqa: E402

OWNER = "football"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_cluster(base: Path, password: str | None) -> tuple[pgcluster.Cluster, PgServer]:
    cluster = pgcluster.Cluster(base, pgcluster.free_port())
    cluster.init()
    cluster.start()
    password = cluster.ensure_database("pgmigrate_bench", OWNER, password)
    return cluster, PgServer(cluster=cluster, host="127.0.0.1", port=cluster.port, user=OWNER, password=password)


def one_run(servers: list[PgServer], work: Path, databases: int, predictions: int, forks: int) -> dict:
    base = work / f"forks{forks}"
    fleet = make_fleet(servers, databases, "bench_fleet", predictions)
    inventory = write_inventory(base, fleet)
    started = time.monotonic()
    res = run_playbook("fleet.yml", base, {"version": "2.0.0"}, "--forks", str(forks), inventory=inventory,
                       timeout=3600)
    wall = time.monotonic() - started
    (work / f"forks{forks}.log").write_text(res.output)
    if res.rc != 0:
        raise SystemExit(f"fleet.yml failed with forks={forks} (rc={res.rc}); see {work}/forks{forks}.log")
    report = fleet_report(base)
    statuses = {e["name"]: e["status"] for e in report["databases"]}
    if set(statuses.values()) != {"succeeded"}:
        raise SystemExit(f"not every database succeeded with forks={forks}: {statuses}")
    waves = sorted({e["wave"] for e in report["databases"]})
    per_db = [e["run"]["duration_s"] for e in report["databases"]]
    return {"forks": forks, "wall_s": round(wall, 1), "databases": databases, "waves": len(waves),
            "wave_sizes": [sum(1 for e in report["databases"] if e["wave"] == w) for w in waves],
            "per_database_run_s": {"min": min(per_db), "max": max(per_db), "sum": round(sum(per_db), 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=6)
    parser.add_argument("--predictions", type=int, default=300)
    parser.add_argument("--forks", type=int, default=0, help="the N of forks N (default: --databases)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet_latest.json"))
    args = parser.parse_args(argv)
    forks_n = args.forks or args.databases
    work = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-fleet-"))
    os.chmod(work, 0o755)
    clusters = []
    try:
        c1, s1 = start_cluster(work / "pg1" / "pg", None)
        clusters.append(c1)
        c2, s2 = start_cluster(work / "pg2" / "pg", s1.password)
        clusters.append(c2)
        results = []
        load_before = os.getloadavg()
        for forks in (1, forks_n):
            log(f"fleet.yml on {args.databases} databases with --forks {forks}")
            results.append(one_run([s1, s2], work, args.databases, args.predictions, forks))
            log(f"  wall {results[-1]['wall_s']} s")
        out = {
            "benchmark": "fleet", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "benchmarks/bench_fleet.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "note": "shared machine: other engineers' work may run at the same time",
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "clusters": 2, "predictions_per_database": args.predictions, "serial": [1, "25%", "100%"],
            "runs": results,
            "ratio_forks1_over_forksN": round(results[0]["wall_s"] / results[1]["wall_s"], 2),
        }
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"{'forks':>6} {'wall_s':>8} {'waves':>12}")
        for r in results:
            print(f"{r['forks']:>6} {r['wall_s']:>8} {r['wave_sizes']!s:>12}")
        print(f"forks 1 / forks {forks_n}: {out['ratio_forks1_over_forksN']}x   -> {args.out}")
    finally:
        for cluster in clusters:
            cluster.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
