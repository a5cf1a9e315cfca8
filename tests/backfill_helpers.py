"""Helpers of the backfill tests: SQL look-ups, a backfill started in the background, its processes."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

from conftest import ROOT, SESSION_MARKER, VENV_BIN, ansible_env, query, write_vars


def snapshot(pg, db):
    return query(pg, db, "SELECT id, model_accuracy, feature_importance::text, confidence FROM predictions ORDER BY id")


def checksum(pg, db, table="predictions"):
    return query(pg, db, f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t")[0][0]


def checkpoints(pg, db, name):
    return query(pg, db, "SELECT worker, status, rows_done, rows_updated, batches, last_key FROM "
                         "migration_ops.batch_checkpoints WHERE backfill = %s ORDER BY worker", (name,))


def start_module(pg, db, tmp_path, args):
    """Start one pg_batch_update run through ansible-playbook, in its own process group."""
    play = [{"name": "Backfill", "hosts": "localhost", "gather_facts": False,
             "tasks": [{"name": "Run the backfill", "pg_batch_update": "{{ __args }}"}]}]
    pb = tmp_path / f"kill-{uuid.uuid4().hex[:8]}.yml"
    pb.write_text(json.dumps(play))
    cmd = [str(VENV_BIN / "ansible-playbook"), str(pb), "-i", str(ROOT / "tests" / "inventory.yml"),
           "-e", "@" + str(write_vars(tmp_path, {"__args": args}))]
    return subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def module_pids() -> list[int]:
    """PIDs of the pg_batch_update module processes started by this test session (not by
    another pytest-xdist worker's: they carry another SESSION_MARKER in their environment)."""
    marker = "=".join(SESSION_MARKER).encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if b"AnsiballZ_pg_batch_update" not in cmdline or b"/bin/sh" in cmdline:
                    continue
                if marker not in (entry / "environ").read_bytes() + b"\0":
                    continue
            except OSError:
                continue
            pids.append(int(entry.name))
    return pids


def wait_for_batches(pg, db, name, at_least, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(pg, db, "SELECT to_regclass('migration_ops.batch_checkpoints') IS NOT NULL")
        if rows[0][0]:
            done = query(pg, db, "SELECT coalesce(sum(batches), 0) FROM migration_ops.batch_checkpoints "
                                 "WHERE backfill = %s", (name,))[0][0]
            if done >= at_least:
                return done
        time.sleep(0.02)
    raise AssertionError(f"the backfill did not reach {at_least} batches")
