#!/usr/bin/env python3
"""Backup benchmark: pg_backup + pg_backup_verify against a plain `pg_dump -Fc`, same database.

    .venv/bin/python benchmarks/backup_bench.py [--predictions 1000000] [--repeats 3] [--jobs 2]
    (or: make bench-backup)

One throw-away PostgreSQL cluster (tools/pgcluster.py, a temp directory, a free port), the
reference database at the 1.0.0 schema (the point where migrate.yml takes its backup) seeded
with examples/football_prediction/seed.py and VACUUM ANALYZE'd.  Then, --repeats times:

  plain_dump      `pg_dump -Fc -f FILE` (what the runbook's own script does; trusted when rc == 0)
  plain_dump_level  the same with `--compress=LEVEL`, the level the backup role passes (--compress, 1)
  plain_restore   `pg_restore --jobs N` of that file into a new database (what a proof must at least cost)
  ours            one ansible-playbook run of pg_backup with prove=true, compress=LEVEL (dump + per-table counts and
                  checksums in the same snapshot, sha256, manifest, and the proof streamed from the
                  dump: pg_restore of the pre-data and data sections into a scratch database fed from
                  the file as pg_dump writes it, then the post-data section with --jobs workers while
                  every table's count and checksum is read, pg_restore --list, drop) then pg_backup_verify
                  (the files' size and sha256 against the manifest the proof is bound to)
  ours_after      the same without prove: pg_backup_verify restores after the dump (sha256,
                  pg_restore --list, restore, counts and checksums, drop): the way before issue #16
  ours_default_level  ours at pg_dump's default compression (no --compress), as plain_dump

Module figures are the modules' own measurements (pg_backup `duration_s`, pg_backup_verify
`durations`); the ansible-playbook start-up is reported apart (`ours_end_to_end_s`).  Medians
over the repeats go to benchmarks/results/backup_latest.json, whose first key is the command
that reproduces it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
OWNER = "football"  # the login role that owns the benchmark databases
APP = ROOT / "examples" / "football_prediction"
VENV_BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results" / "backup_latest.json"
sys.path.insert(0, str(ROOT / "tools"))
import pgcluster  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="pgmigrate-backup-bench-"))
        os.chmod(self.base, 0o755)
        self.cluster = pgcluster.Cluster(self.base / "pg", pgcluster.free_port())
        self.work = self.base / "work"
        self.work.mkdir(mode=0o700)
        self.db = "football_prediction"

    def start(self) -> None:
        self.cluster.init()
        with (self.cluster.data / "postgresql.conf").open("a") as fh:
            fh.write("max_wal_size = 4GB\ncheckpoint_timeout = 15min\n")
        self.cluster.start()
        self.password = self.cluster.ensure_database(self.db, OWNER)
        self.port = self.cluster.port

    def stop(self) -> None:
        try:
            self.cluster.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def env(self, dbname: str) -> dict:
        env = dict(os.environ)
        env.update(PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER=OWNER, PGPASSWORD=self.password,
                   PGDATABASE=dbname)
        return env

    def admin(self):
        conn = psycopg2.connect(host=str(self.cluster.run), port=self.port, user=self.cluster.os_user,
                                dbname="postgres")
        conn.autocommit = True
        return conn

    def seed(self) -> dict:
        log(f"seeding {self.args.predictions:,} predictions (1.0.0 schema)")
        subprocess.run([str(VENV_BIN / "alembic"), "-c", str(APP / "alembic.ini"), "upgrade", "v1_0_0"],
                       env=self.env(self.db), check=True, capture_output=True, cwd=ROOT)
        subprocess.run([sys.executable, str(APP / "seed.py"), "--predictions", str(self.args.predictions),
                        "--seed", "42", "--anchor", "2026-11-01T00:00:00+00:00"], env=self.env(self.db),
                       check=True, capture_output=True, cwd=ROOT)
        conn = psycopg2.connect(**self.conn_kwargs())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
            cur.execute("SELECT pg_database_size(current_database()), (SELECT count(*) FROM predictions)")
            size, rows = cur.fetchone()
        conn.close()
        return {"database_size_bytes": size, "predictions": rows}

    def conn_kwargs(self) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": OWNER, "password": self.password,
                "dbname": self.db}

    # -- the three measurements ------------------------------------------------------------
    def plain_dump(self, i: int, level: int | None = None) -> tuple[float, Path]:
        path = self.work / f"plain-{i}.dump"
        start = time.monotonic()
        subprocess.run(["pg_dump", "-Fc", "-f", str(path)] + ([f"--compress={level}"] if level is not None else []),
                       env=self.env(self.db), check=True)
        return time.monotonic() - start, path

    def plain_restore(self, path: Path) -> float:
        name = "bench_plain_restore"
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                sql.Identifier(name), sql.Identifier(OWNER)))
        start = time.monotonic()
        subprocess.run(["pg_restore", "--exit-on-error", f"--jobs={self.args.jobs}", f"--dbname={name}",
                        str(path)], env=self.env(name), check=True)
        elapsed = time.monotonic() - start
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.close()
        return elapsed

    def ours(self, i: int, stream: bool = True, compress: int | None = None) -> dict:
        backup_dir = self.work / f"ours-{i}"
        result_file = self.work / f"ours-{i}.json"
        conn = {"login_host": "127.0.0.1", "login_port": self.port, "login_user": OWNER,
                "login_password": self.password, "login_db": self.db}
        play = [{"name": "Back up and prove", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "Dump", "pg_backup": {**conn, "backup_dir": str(backup_dir), "version": "2.0.0",
                                           "run_id": i, "jobs": self.args.jobs, "format": self.args.format,
                                           "prove": stream,
                                           **({"compress": str(compress)} if compress is not None else {})},
             "register": "dumped"},
            {"name": "Verify", "pg_backup_verify": {**conn, "backup_path": "{{ dumped.backup_path }}",
                                                    "run_id": i, "jobs": self.args.jobs},
             "register": "proved"},
            {"name": "Save", "ansible.builtin.copy": {
                "content": "{{ {'dump': dumped, 'verify': proved} | to_json }}", "dest": str(result_file),
                "mode": "0600"}}]}]
        playbook = self.work / "ours.yml"
        fd = os.open(playbook, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the password
        with os.fdopen(fd, "w") as fh:
            json.dump(play, fh)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        env.pop("PGPASSWORD", None)
        start = time.monotonic()
        proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(ROOT / "tests" / "inventory.yml"),
                               str(playbook)], check=False, env=env, cwd=ROOT, capture_output=True, text=True)
        end_to_end = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"pg_backup/pg_backup_verify failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        out = json.loads(result_file.read_text())
        d = out["verify"]["durations"]
        proof = out["dump"].get("proof_durations") or {}
        shutil.rmtree(backup_dir, ignore_errors=True)
        if stream and not out["dump"].get("verified"):
            raise SystemExit(f"the streamed proof failed: {out['dump'].get('proof_error')}")
        return {"dump_s": out["dump"]["duration_s"], "verify_s": d["total_s"],
                "verify_restore_s": proof.get("restore_s", d.get("restore_s")),
                "verify_tables_s": proof.get("tables_s", d.get("tables_s")), "verify_files_s": d["files_s"],
                "verify_toc_s": proof.get("toc_s", d.get("toc_s")),
                "end_to_end_s": end_to_end, "size_bytes": out["dump"]["manifest"]["size_bytes"],
                "verified": out["verify"]["verified"], "streamed": bool(out["dump"].get("verified"))}

    def run(self) -> dict:
        facts = self.seed()
        level = self.args.compress
        plain_dump, plain_level, plain_restore, ours, after, default_level = [], [], [], [], [], []
        plain_size = plain_level_size = 0
        for i in range(1, self.args.repeats + 1):
            log(f"repeat {i}/{self.args.repeats}: plain pg_dump -Fc")
            elapsed, path = self.plain_dump(i)
            plain_dump.append(elapsed)
            plain_size = path.stat().st_size
            log(f"repeat {i}/{self.args.repeats}: plain pg_restore --jobs {self.args.jobs}")
            plain_restore.append(self.plain_restore(path))
            path.unlink()
            log(f"repeat {i}/{self.args.repeats}: plain pg_dump -Fc --compress={level}")
            elapsed, path = self.plain_dump(i, level)
            plain_level.append(elapsed)
            plain_level_size = path.stat().st_size
            path.unlink()
            log(f"repeat {i}/{self.args.repeats}: pg_backup prove=true compress={level} (streamed proof) + "
                "pg_backup_verify")
            ours.append(self.ours(i, compress=level))
            assert ours[-1]["verified"] is True
            log(f"repeat {i}/{self.args.repeats}: pg_backup + pg_backup_verify restoring after the dump")
            after.append(self.ours(i + 1000, stream=False, compress=level))
            assert after[-1]["verified"] is True
            log(f"repeat {i}/{self.args.repeats}: pg_backup prove=true at pg_dump's default compression")
            default_level.append(self.ours(i + 2000))
            assert default_level[-1]["verified"] is True
        med = {k: median([o[k] for o in ours]) for k in ours[0] if k not in ("verified", "size_bytes", "streamed")}
        med_after = {k: median([o[k] for o in after]) for k in ("dump_s", "verify_s", "end_to_end_s")}
        med_default = {k: median([o[k] for o in default_level]) for k in ("dump_s", "verify_s")}
        default_total = round(med_default["dump_s"] + med_default["verify_s"], 3)
        plain_level_s = median(plain_level)
        after_total = round(med_after["dump_s"] + med_after["verify_s"], 3)
        plain_dump_s, plain_restore_s = median(plain_dump), median(plain_restore)
        dump_verify = round(med["dump_s"] + med["verify_s"], 3)
        return {
            "predictions": facts["predictions"], "database_size_bytes": facts["database_size_bytes"],
            "repeats": self.args.repeats, "jobs": self.args.jobs, "format": self.args.format, "compress": level,
            "plain_dump_s": plain_dump_s, "plain_dump_size_bytes": plain_size,
            "plain_dump_level_s": plain_level_s, "plain_dump_level_size_bytes": plain_level_size,
            "plain_restore_s": plain_restore_s,
            "ours_dump_s": med["dump_s"], "ours_size_bytes": ours[-1]["size_bytes"],
            "ours_verify_s": med["verify_s"],
            "ours_verify_steps_s": {"files_sha256": med["verify_files_s"], "toc_list": med["verify_toc_s"],
                                    "restore": med["verify_restore_s"], "tables_counts_checksums":
                                    med["verify_tables_s"]},
            "ours_dump_plus_verify_s": dump_verify,
            "ours_end_to_end_s": med["end_to_end_s"],
            "ours_after": {"dump_s": med_after["dump_s"], "verify_s": med_after["verify_s"],
                           "dump_plus_verify_s": after_total, "end_to_end_s": med_after["end_to_end_s"]},
            "ours_default_level": {"dump_s": med_default["dump_s"], "verify_s": med_default["verify_s"],
                                   "dump_plus_verify_s": default_total,
                                   "size_bytes": default_level[-1]["size_bytes"]},
            "ratios": {
                "dump_plus_verify_vs_plain_dump": round(dump_verify / plain_dump_s, 2),
                "dump_plus_verify_vs_plain_dump_same_level": round(dump_verify / plain_level_s, 2),
                "default_level_dump_plus_verify_vs_plain_dump": round(default_total / plain_dump_s, 2),
                "size_vs_plain_dump": round(ours[-1]["size_bytes"] / plain_size, 2),
                "after_dump_plus_verify_vs_plain_dump": round(after_total / plain_dump_s, 2),
                "streamed_vs_after": round(dump_verify / after_total, 2),
                "dump_only_vs_plain_dump": round(med["dump_s"] / plain_dump_s, 2),
                "verify_vs_plain_restore": round(med["verify_s"] / plain_restore_s, 2),
                "end_to_end_vs_plain_dump": round(med["end_to_end_s"] / plain_dump_s, 2),
            },
            "verify_cost_beyond_its_restore_s": round(med["verify_s"] - med["verify_restore_s"], 3),
            "samples": {"plain_dump_s": [round(x, 3) for x in plain_dump],
                        "plain_dump_level_s": [round(x, 3) for x in plain_level],
                        "plain_restore_s": [round(x, 3) for x in plain_restore], "ours": ours,
                        "ours_after": after, "ours_default_level": default_level},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--format", choices=["custom", "directory"], default="custom")
    parser.add_argument("--compress", type=int, default=1, help="pg_backup's level (the backup role's default, 1)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    bench = Bench(args)
    try:
        bench.start()
        results = bench.run()
    finally:
        bench.stop()
    command = ".venv/bin/python benchmarks/backup_bench.py " + " ".join(
        f"--{k} {v}" for k, v in (("predictions", args.predictions), ("repeats", args.repeats),
                                  ("jobs", args.jobs), ("format", args.format), ("compress", args.compress)))
    report = {"reproduce": command, "what": "median seconds; pg_backup (proof streamed from the dump) + "
                                            "pg_backup_verify, and the proof restored after the dump, vs plain "
                                            "pg_dump -Fc (and at the same --compress level), side by side in one "
                                            "run",
              "measured_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "pg_dump": subprocess.run(["pg_dump", "--version"], check=False, capture_output=True,
                                                    text=True).stdout.strip()},
              **results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    r = report["ratios"]
    print(f"{report['predictions']:,} predictions ({report['database_size_bytes'] / 1e6:.0f} MB): "
          f"plain pg_dump -Fc {report['plain_dump_s']} s; pg_backup {report['ours_dump_s']} s + "
          f"pg_backup_verify {report['ours_verify_s']} s = {report['ours_dump_plus_verify_s']} s "
          f"-> {r['dump_plus_verify_vs_plain_dump']}x (target <= 1.3x; "
          f"{r['dump_plus_verify_vs_plain_dump_same_level']}x "
          f"plain at --compress={report['compress']}, {r['default_level_dump_plus_verify_vs_plain_dump']}x ours at "
          f"pg_dump's default level); restoring after the dump: "
          f"{report['ours_after']['dump_plus_verify_s']} s -> {r['after_dump_plus_verify_vs_plain_dump']}x "
          f"(plain restore {report['plain_restore_s']} s)\nwrote {args.output}")


if __name__ == "__main__":
    main()
