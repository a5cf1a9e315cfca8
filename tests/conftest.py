"""Session fixtures: a real PostgreSQL server, real ansible-playbook runs.

The server is started once per test session on a free loopback port in a temporary
directory (tools/pgcluster.py), as the unprivileged ``postgres`` OS user when the tests
run as root.  Nothing here is mocked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import pgcluster  # noqa: E402

VENV_BIN = Path(sys.executable).parent
APP_DIR = ROOT / "examples" / "football_prediction"
OWNER = "football"
# Every process a test starts carries this marker in its environment, so that a test that looks
# for "its" processes (tests/backfill_helpers.py module_pids) never sees another pytest-xdist
# worker's (each worker has its own session, cluster and marker).
SESSION_MARKER = ("PGMIGRATE_TEST_SESSION", f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


@dataclass
class PgServer:
    cluster: pgcluster.Cluster
    host: str
    port: int
    user: str
    password: str
    created: list[str] = field(default_factory=list)

    def admin_connect(self, dbname: str = "postgres"):
        """Superuser connection over the Unix socket (tests only)."""
        conn = psycopg2.connect(host=str(self.cluster.run), port=self.port, user=self.cluster.os_user,
                                dbname=dbname)
        conn.autocommit = True
        return conn

    def connect(self, dbname: str, autocommit: bool = True):
        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=dbname)
        conn.autocommit = autocommit
        return conn

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        stmt = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.user))
        if template:
            stmt = stmt + sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn = self.admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(stmt)
        finally:
            conn.close()
        self.created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        conn = self.admin_connect()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.close()

    def env(self, dbname: str | None = None) -> dict:
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGPASSWORD=self.password)
        if dbname:
            env["PGDATABASE"] = dbname
        return env

    def conn_vars(self, dbname: str) -> dict:
        """Inventory variables pointing the playbooks at ``dbname`` (password via vars file)."""
        return {"pgmigrate_db_host": self.host, "pgmigrate_db_port": self.port,
                "pgmigrate_db_user": self.user, "pgmigrate_db_password": self.password,
                "pgmigrate_db_name": dbname}


@pytest.fixture(scope="session")
def pg():
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-test-"))
    os.chmod(base, 0o755)
    cluster = pgcluster.Cluster(base / "pg", pgcluster.free_port())
    cluster.init()
    cluster.start()
    password = cluster.ensure_database("pgmigrate_test", OWNER)
    server = PgServer(cluster=cluster, host="127.0.0.1", port=cluster.port, user=OWNER, password=password)
    try:
        yield server
    finally:
        cluster.stop("immediate")
        subprocess.run(["rm", "-rf", str(base)], check=False)


def alembic(pg: PgServer, dbname: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "alembic"), "-c", str(APP_DIR / "alembic.ini"), *args],
                          env=pg.env(dbname), capture_output=True, text=True, check=check, cwd=ROOT)


def seed(pg: PgServer, dbname: str, predictions: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP_DIR / "seed.py"), "--predictions", str(predictions), *extra],
                          env=pg.env(dbname), capture_output=True, text=True, check=True, cwd=ROOT)


@pytest.fixture(scope="session")
def reference_template(pg):
    """A template database at the 1.0.0 revision with 3,000 seeded predictions."""
    name = pg.create_database("tmpl_football_100")
    alembic(pg, name, "upgrade", "v1_0_0")
    seed(pg, name, 3000, "--seed", "7")
    return name


@pytest.fixture(scope="session")
def v2_template(pg, reference_template):
    """The reference database (3,000 predictions) at revision v2_0_0, before any backfill."""
    name = pg.create_database(template=reference_template)
    alembic(pg, name, "upgrade", "v2_0_0")
    return name


@pytest.fixture
def v2_db(pg, v2_template):
    """A fresh copy of the v2_0_0 reference database (not backfilled) for one test."""
    name = pg.create_database(template=v2_template)
    yield name
    pg.drop_database(name)


def query(pg: PgServer, db: str, text, params=()):
    """Rows of one statement on ``db`` as the owner (None for a statement without rows)."""
    conn = pg.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


@pytest.fixture
def reference_db(pg, reference_template):
    """A fresh copy of the 1.0.0 reference database for one test."""
    name = pg.create_database(template=reference_template)
    yield name
    pg.drop_database(name)


# ---------------------------------------------------------------------------------
# Real ansible-playbook runs
# ---------------------------------------------------------------------------------
@dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def ansible_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    env.pop("PGPASSWORD", None)
    env[SESSION_MARKER[0]] = SESSION_MARKER[1]
    if extra:
        env.update(extra)
    return env


def write_vars(tmp_path: Path, variables: dict) -> Path:
    """Extra vars go through a 0600 file, never the command line (passwords among them)."""
    path = tmp_path / f"vars-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(variables))
    path.chmod(0o600)
    return path


def run_playbook(playbook: str | Path, tmp_path: Path, extra_vars: dict | None = None,
                 *args: str, inventory: str | Path | None = None, env: dict | None = None,
                 timeout: int = 900) -> PlaybookResult:
    path = Path(playbook) if Path(playbook).is_absolute() else ROOT / playbook
    cmd = [str(VENV_BIN / "ansible-playbook"), str(path), "-i", str(inventory or ROOT / "inventories" / "local")]
    if extra_vars:
        cmd += ["-e", "@" + str(write_vars(tmp_path, extra_vars))]
    cmd += list(args)
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=ansible_env(env), capture_output=True, text=True,
                          timeout=timeout)
    return PlaybookResult(proc.returncode, proc.stdout, proc.stderr)


def run_module(module: str, module_args: dict, tmp_path: Path, check: bool = False, diff: bool = False,
               env: dict | None = None, timeout: int = 600) -> dict:
    """Run one module through a real ansible-playbook and return its result dict."""
    play = [{
        "name": "Run one module", "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "Call the module", module: "{{ __module_args }}", "register": "__result",
                   "ignore_errors": True},
                  {"name": "Save the result", "ansible.builtin.copy": {
                      "content": "{{ __result | to_json }}", "dest": "{{ __result_file }}", "mode": "0600"},
                   "check_mode": False, "diff": False}],
    }]
    pb = tmp_path / f"module-{uuid.uuid4().hex[:8]}.yml"
    pb.write_text(json.dumps(play))
    out = tmp_path / f"result-{uuid.uuid4().hex[:8]}.json"
    variables = {"__module_args": module_args, "__result_file": str(out)}
    args = ["--check"] if check else []
    if diff:
        args.append("--diff")
    res = run_playbook(pb, tmp_path, variables, *args, inventory=ROOT / "tests" / "inventory.yml", env=env,
                       timeout=timeout)
    if not out.exists():
        raise AssertionError(f"module run produced no result (rc={res.rc}):\n{res.output[-4000:]}")
    result = json.loads(out.read_text())
    result["_output"] = res.output
    return result


def conn_args(pg: PgServer, dbname: str) -> dict:
    return {"login_host": pg.host, "login_port": pg.port, "login_user": pg.user,
            "login_password": pg.password, "login_db": dbname}
