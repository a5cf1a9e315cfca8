#!/usr/bin/env python3
"""Start and stop a throw-away PostgreSQL cluster in a directory, as an unprivileged user.

Used by the Makefile (the embedded default under .state/) and by the pytest session
fixture (a temp directory on a free port).  PostgreSQL refuses to run as root, so when
invoked as root the cluster belongs to the ``postgres`` system user (created by Debian's
postgresql-common package).

    python tools/pgcluster.py start  --dir .state/pg --port 18432 --db football_prediction --owner football
    python tools/pgcluster.py stop   --dir .state/pg
    python tools/pgcluster.py status --dir .state/pg

The owner role gets a random password, written to ``<dir>/../secrets/<owner>.password``
(mode 0600); connections over TCP use scram-sha-256.  The superuser (the OS user) only
connects through the Unix socket in ``<dir>/run``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

PG_MAJOR = "15"


def pg_bindir() -> Path:
    """Locate the server binaries, newest major first; PG_BINDIR overrides."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    preferred = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
    if (preferred / "initdb").exists():
        return preferred
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    raise SystemExit(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb). "
        "Install them with: apt-get update && apt-get install -y postgresql-15 "
        "(scripts/bootstrap.sh does this for you)."
    )


# The project's fixed ports, all below the kernel's ephemeral range (32768-60999 by default) so no
# outgoing connection can hold one when its server starts: the demo's PostgreSQL 18432, nginx 18080,
# the colours 18081/18082, rolling from 18091; the Molecule scenarios' 18280-18282 and 18500-18599.
# free_port never hands them out, so `make demo` and Molecule can run beside the tests.
PROJECT_PORTS = range(18000, 18600)
_LOWEST_PORT = 20000
_cursor: dict[str, int] = {}  # where this process's walk through its slice of ports stands


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (ip_local_port_range)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive loopback ports, free now, for a server started later.

    Never a port of the kernel's ephemeral range: a port picked there (bind to port 0) is free at
    set-up, but any outgoing connection made before the server starts (nginx to an upstream, a
    client, libpq) may take it as its local port, and the server then fails with 'Address already
    in use' (seen in CI: rolling-2's port taken during a request loop).  Ports come from below that
    range; each pytest-xdist worker walks its own slice of it, so two workers never hand out the
    same port, and one process never hands out a port twice until its slice wraps."""
    low, high = ephemeral_port_range()
    start, end = (_LOWEST_PORT, low) if low - _LOWEST_PORT >= 2000 else (high + 1, 65536)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and workers > 1:
        size = (end - start) // workers
        start = start + int(worker[2:]) * size
        end = start + size
    span = end - start - count
    if not start <= _cursor.get("next", -1) < end - count:
        _cursor["next"] = start + secrets.randbelow(span)
    for _ in range(span):
        base = _cursor["next"]
        _cursor["next"] = start + (base - start + count) % span
        ports = range(base, base + count)
        if any(p in PROJECT_PORTS for p in ports):
            continue
        if all(port_is_free(p) for p in ports):
            return base
    raise RuntimeError(f"no {count} consecutive free loopback ports in {start}-{end - 1}")


class Cluster:
    def __init__(self, datadir: str | os.PathLike, port: int | None = None) -> None:
        self.base = Path(datadir).resolve()
        self.data = self.base / "data"
        self.run = self.base / "run"
        self.log = self.base / "postgresql.log"
        self.meta_file = self.base / "cluster.json"
        self.secrets = self.base.parent / "secrets"
        meta = self.meta()
        self.port = port or meta.get("port") or 18432
        self.os_user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.bindir = pg_bindir()

    # --- helpers -----------------------------------------------------------------
    def meta(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            return {}

    def _as_user(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        # Superuser work goes through the Unix socket as the OS user: a caller's PGUSER,
        # PGPASSWORD or PGDATABASE must not redirect it to another role.
        kw.setdefault("env", {k: v for k, v in os.environ.items() if not k.startswith("PG")})
        if os.geteuid() == 0:
            argv = ["runuser", "-u", self.os_user, "--", *argv]
        return subprocess.run(argv, check=True, **kw)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, self.os_user, self.os_user)

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = self._as_user(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.run), "-p", str(self.port), "-d", db, "-c", sql],
            capture_output=True, text=True,
        )
        return out.stdout.strip()

    def is_running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        res = subprocess.run(
            ["runuser", "-u", self.os_user, "--", str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)]
            if os.geteuid() == 0 else [str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
            capture_output=True, text=True, check=False,
        )
        return res.returncode == 0

    # --- lifecycle ---------------------------------------------------------------
    def init(self) -> bool:
        if (self.data / "PG_VERSION").exists():
            return False
        for d in (self.base, self.run):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        if os.geteuid() == 0:
            reach = subprocess.run(["runuser", "-u", self.os_user, "--", "test", "-w", str(self.base)], check=False)
            if reach.returncode != 0:
                raise SystemExit(f"the {self.os_user} user cannot reach {self.base}: put the cluster in a "
                                 "directory every user can traverse (not under /root)")
        os.chmod(self.base, 0o700)
        self._as_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.os_user,
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                       "--locale=C.UTF-8", "--no-instructions"], capture_output=True)
        conf = self.data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# pgmigrate-ops embedded default\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.run}'\n"
                "max_connections = 100\nshared_buffers = 256MB\nfsync = on\n"
                "logging_collector = off\nlog_min_duration_statement = -1\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        self.meta_file.write_text(json.dumps({"port": self.port, "os_user": self.os_user}))
        return True

    def start(self) -> bool:
        if self.is_running():
            return False
        # The port of this start is the cluster's port from now on (the local inventory reads it).
        self.meta_file.write_text(json.dumps({**self.meta(), "port": self.port, "os_user": self.os_user}))
        self.log.touch()
        self._chown(self.log)
        self._as_user([str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                       "-l", str(self.log), "-o", f"-p {self.port} -k {self.run}"],
                      capture_output=True)
        return True

    def stop(self, mode: str = "fast") -> bool:
        if not self.is_running():
            return False
        self._as_user([str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data)],
                      capture_output=True)
        return True

    def ensure_database(self, db: str, owner: str, password: str | None = None) -> str:
        """Create the owner role (LOGIN, password) and the database; return the password.

        The password travels on psql's standard input, never on a command line, and is
        quoted by the server's format('%L'); the role name goes through format('%I').
        """
        self.secrets.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets, 0o700)
        pwfile = self.secrets / f"{owner}.password"
        if password is None:
            password = pwfile.read_text().strip() if pwfile.exists() else secrets.token_urlsafe(24)
        old = os.umask(0o077)
        try:
            pwfile.write_text(password + "\n")
        finally:
            os.umask(old)

        def psql_quote(value: str) -> str:
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

        script = (
            f"\\set role {psql_quote(owner)}\n"
            f"\\set db {psql_quote(db)}\n"
            f"\\set pw {psql_quote(password)}\n"
            "SELECT format('CREATE ROLE %I LOGIN', :'role') "
            "WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \\gexec\n"
            "SELECT format('ALTER ROLE %I CREATEDB PASSWORD %L', :'role', :'pw') \\gexec\n"
            "SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') "
            "WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \\gexec\n"
        )
        self._as_user(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.run), "-p", str(self.port), "-d", "postgres"],
            input=script, text=True, capture_output=True,
        )
        return password


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["start", "stop", "status", "destroy"])
    ap.add_argument("--dir", required=True, help="cluster directory (data/, run/, log inside)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--db", default=None, help="database to create (with --owner)")
    ap.add_argument("--owner", default=None, help="login role that owns --db")
    args = ap.parse_args(argv)

    try:
        cluster = Cluster(args.dir, args.port)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.action == "start":
            created = cluster.init()
            started = cluster.start()
            if args.db and args.owner:
                cluster.ensure_database(args.db, args.owner)
            print(f"PostgreSQL {'initialised and ' if created else ''}"
                  f"{'started' if started else 'already running'} on 127.0.0.1:{cluster.port} "
                  f"(data in {cluster.data}, log {cluster.log})")
        elif args.action == "stop":
            print("PostgreSQL stopped" if cluster.stop() else "PostgreSQL was not running")
        elif args.action == "status":
            running = cluster.is_running()
            print(f"PostgreSQL {'running' if running else 'stopped'} on 127.0.0.1:{cluster.port}")
            return 0 if running else 3
        elif args.action == "destroy":
            cluster.stop("immediate")
            shutil.rmtree(cluster.base, ignore_errors=True)
            print(f"removed {cluster.base}")
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "")
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        print(f"pgcluster {args.action} failed: {' '.join(map(str, exc.cmd[:6]))}...: {detail.strip()}"
              f"\nsee {cluster.log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
