"""The newcomer path: `make demo PG_PORT=N` from a fresh clone in a 0700 directory (as root's home is).

The clone reuses this checkout's virtualenv (a symlink, so the test creates no second venv) and
skips `bootstrap` (make -o bootstrap), which would otherwise install requirements into it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import urllib.request
from pathlib import Path

import pgcluster
import psycopg2
import pytest
from conftest import ROOT, VENV_BIN


def make(clone: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "ANSIBLE_", "MOLECULE_", "PYTEST_"))}
    return subprocess.run(["make", "--no-print-directory", "-o", "bootstrap", *args], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="the 0700 home case is about root running the cluster as postgres")
def test_make_demo_from_a_clone_in_a_0700_home_migrates_the_cluster_on_its_port(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    clone = home / "pgmigrate-ops"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(VENV_BIN.parent.resolve())
    pg_port, app_port = pgcluster.free_port(), pgcluster.free_port()
    state = None
    try:
        res = make(clone, "demo", f"PG_PORT={pg_port}", f"APP_PROXY_PORT={app_port}", "PREDICTIONS=300")
        state = (clone / ".state").resolve()
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
        # The cluster lives outside the checkout, keyed by it; the home was not opened up.
        assert (clone / ".state").is_symlink()
        assert not str(state).startswith(str(home))
        assert state.name.startswith("pgmigrate-ops-")
        assert (state / "pg/data/PG_VERSION").is_file()
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
        # The migration ran against the cluster on PG_PORT.
        password = (state / "secrets/football.password").read_text().strip()
        conn = psycopg2.connect(host="127.0.0.1", port=pg_port, user="football", password=password,
                                dbname="football_prediction")
        with conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            assert cur.fetchone()[0] == "v2_0_0"
            cur.execute("SELECT kind, version, status FROM migration_ops.runs")
            assert cur.fetchall() == [("migrate", "2.0.0", "succeeded")]
        conn.close()
        # Release 2.0.0 is live through nginx on APP_PROXY_PORT (1.0.0 was before the migration).
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/health", timeout=10) as resp:
            health = json.loads(resp.read())
        assert health["version"] == "2.0.0" and health["db_revision"] == "v2_0_0", health
        # A second make (no PG_PORT given) finds the same port.
        status = subprocess.run([str(VENV_BIN / "python"), "tools/pgcluster.py", "status", "--dir", ".state/pg"],
                                cwd=clone, capture_output=True, text=True, check=False)
        assert f"running on 127.0.0.1:{pg_port}" in status.stdout
    finally:
        make(clone, "clean", timeout=300)
        if state is not None and state.exists():
            subprocess.run([str(VENV_BIN / "python"), str(ROOT / "tools/pgcluster.py"), "stop", "--dir",
                            str(state / "pg")], check=False)
            shutil.rmtree(state, ignore_errors=True)
    assert state is None or not state.exists()
