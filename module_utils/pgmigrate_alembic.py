# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared code of the alembic_migrate module: durations, the Alembic runner, the lock watcher.

Alembic runs in a child process (``python -c RUNNER``) of the application's own Python (the
``python`` option: an interpreter or a virtualenv; the module's own interpreter by default), never
inside the module: a project's env.py may configure logging, print to stdout or exit, and
none of that may corrupt the module's JSON answer.  The runner speaks JSON through files;
the connection reaches it only through the libpq environment (PGHOST, PGPASSWORD, ...),
so a password is never on a command line.  ``lock_timeout`` and ``statement_timeout`` are
set for every session of the child with PGOPTIONS, which works with any Alembic project
whose env.py connects through libpq.

An env.py may ignore that connection and build its own URL from the application's settings.
The runner therefore checks every connection the project opens (a SQLAlchemy ``connect``
event, before the connection is used): its database (name and oid) and server (postmaster
start time and port) must be the ones the module was given, or the run stops before any
migration statement.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"

# Who a connection reached: database name and oid, server by postmaster start time and port (the
# module's own connection to login_db and every connection of the Alembic child must agree).
IDENTITY_SQL = ("SELECT current_database(), d.oid::bigint, extract(epoch FROM pg_postmaster_start_time())::text, "
                "current_setting('port'), host(inet_server_addr()) FROM pg_database d "
                "WHERE d.datname = current_database()")

# The child process.  argv[1]: request JSON file, argv[2]: answer JSON file.
RUNNER = r'''
import argparse, io, json, sys, traceback

def sqlstate_of(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for attr in ("pgcode", "sqlstate"):
            code = getattr(exc, attr, None)
            if code:
                return code
        orig = getattr(exc, "orig", None)
        if orig is not None and orig is not exc:
            exc = orig
            continue
        exc = exc.__cause__ or exc.__context__
    return None

class WrongDatabase(Exception):
    pass

def guard_connections(expect, identity_sql, seen):
    """Check every connection the project opens, before it runs anything: it must reach the database
    the module was given (same server: postmaster start time and port; same database: name and oid)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def check(dbapi_conn, record):
        cur = dbapi_conn.cursor()
        try:
            cur.execute(identity_sql)
            row = cur.fetchone()
        finally:
            cur.close()
            dbapi_conn.rollback()
        got = {"database": row[0], "oid": int(row[1]), "started": row[2], "port": str(row[3]), "host": row[4]}
        seen.append(got)
        if any(got[k] != expect[k] for k in ("database", "oid", "started", "port")):
            raise WrongDatabase("env.py connected to database %s on %s:%s, not to %s"
                                % (got["database"], got["host"] or "local socket", got["port"], expect["database"]))

    event.listen(Engine, "connect", check, insert=True)

def stage_of(exc, project_dir):
    """Where the error came from: 'migration' (a revision script), 'env' (env.py, or the application
    code and settings it imports) or 'alembic' (nothing of the project's on the stack)."""
    import os
    project_dir = os.path.realpath(project_dir) + os.sep if project_dir else None
    stage = "alembic"
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        name = os.path.realpath(name) if os.path.isabs(name) else ""
        if project_dir and name.startswith(project_dir):
            stage = "env" if os.path.basename(name) == "env.py" else "migration"
        tb = tb.tb_next
    return stage

def describe_exception(exc, script_dir):
    info = {"error": ("%s" % exc).strip() or type(exc).__name__, "error_type": type(exc).__name__,
            "sqlstate": sqlstate_of(exc), "traceback": traceback.format_exc()[-4000:],
            "stage": stage_of(exc, script_dir), "import_error": isinstance(exc, ImportError)}
    if isinstance(exc, ImportError):
        info["missing_module"] = getattr(exc, "name", None)
    if info["stage"] == "env" and (type(exc).__name__ == "ValidationError" or isinstance(exc, KeyError)):
        info["stage"] = "settings"
    return info

def main():
    req = json.load(open(sys.argv[1]))
    seen = []
    answer = {"ok": False, "python": sys.executable}
    try:
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory
    except ImportError as exc:
        answer.update(error="cannot import alembic: %s" % exc, error_type=type(exc).__name__, import_error=True,
                      missing_module=getattr(exc, "name", None) or "alembic", stage="alembic")
        json.dump(answer, open(sys.argv[2], "w"))
        return
    script_dir = None
    try:
        buf = io.StringIO()
        cfg = Config(req["config"], ini_section=req["ini_section"], output_buffer=buf,
                     cmd_opts=argparse.Namespace(x=req.get("x", []), raiseerr=True))
        if req.get("url"):
            cfg.set_main_option("sqlalchemy.url", req["url"])
        script_dir = cfg.get_main_option("script_location")
        if req["op"] == "inspect":
            script = ScriptDirectory.from_config(cfg)
            revs = []
            for rev in script.walk_revisions():
                down = rev.down_revision
                down = [] if down is None else ([down] if isinstance(down, str) else list(down))
                revs.append({"revision": rev.revision, "down_revisions": down,
                             "doc": rev.doc, "path": rev.path, "is_head": rev.is_head, "is_base": rev.is_base})
            revs.reverse()
            answer.update(ok=True, revisions=revs, heads=list(script.get_heads()))
        else:
            if req.get("expect_database"):
                guard_connections(req["expect_database"], req["identity_sql"], seen)
            fn = getattr(command, req["op"])
            fn(cfg, req["target"], sql=req.get("sql", False))
            answer.update(ok=True, sql=buf.getvalue())
    except BaseException as exc:
        answer.update(describe_exception(exc, script_dir))
    answer["sessions"] = seen
    expect = req.get("expect_database")
    wrong = [s for s in seen if expect and any(s[k] != expect[k] for k in ("database", "oid", "started", "port"))]
    if wrong:  # even when env.py caught the error and carried on
        answer.update(ok=False, error_type="WrongDatabase", wrong_sessions=wrong, sqlstate=None,
                      error="env.py connected to database %s on %s:%s" % (
                          wrong[0]["database"], wrong[0]["host"] or "local socket", wrong[0]["port"]))
    json.dump(answer, open(sys.argv[2], "w"))

main()
'''


def format_ms(ms: int) -> str:
    if ms and ms % 60_000 == 0:
        return f"{ms // 60_000}min"
    if ms and ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def lock_schedule(base_ms: int, max_ms: int, retries: int, pause_s: float) -> list[tuple[int, float]]:
    """(lock_timeout_ms, pause_after_s) per attempt: timeouts double up to max_ms and the pauses
    grow by pause_s per attempt (GitLab's lock retries: short waits first, longer ones later)."""
    schedule = []
    for i in range(retries + 1):
        timeout = base_ms * (2 ** i) if base_ms else 0
        schedule.append((min(timeout, max(max_ms, base_ms)) if base_ms else 0, round(pause_s * (i + 1), 3)))
    return schedule


def python_executable(python: str | None) -> str:
    """The interpreter that runs the application's Alembic: ``python`` itself, or ``python``/bin/python
    when it is a virtualenv directory; the module's own interpreter when unset.  ValueError when neither."""
    if not python:
        return sys.executable
    path = os.path.join(python, "bin", "python") if os.path.isdir(python) else python
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        what = "a virtualenv without bin/python" if os.path.isdir(python) else "not an executable file"
        raise ValueError(f"{python} is {what}")
    return path


def run_alembic(request: dict, env: dict, cwd: str, timeout: float | None = None,
                python: str | None = None) -> dict:
    """Run one Alembic operation in a child Python (``python``, default the module's own); returns the
    runner's answer plus its log."""
    with tempfile.TemporaryDirectory(prefix="pgmigrate-alembic-") as tmp:
        req_path = os.path.join(tmp, "request.json")
        out_path = os.path.join(tmp, "answer.json")
        with open(req_path, "w") as fh:
            json.dump(request, fh)
        try:
            proc = subprocess.run([python or sys.executable, "-c", RUNNER, req_path, out_path], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"Alembic did not finish within {timeout}s", "error_type": "Timeout",
                    "log": []}
        try:
            with open(out_path) as fh:
                answer = json.load(fh)
        except (OSError, ValueError):
            answer = {"ok": False, "error": (proc.stderr or proc.stdout or "").strip()[-2000:]
                      or f"the Alembic runner exited with {proc.returncode}", "error_type": "RunnerError"}
    answer["log"] = [line for line in (proc.stderr or "").splitlines() if line.strip()][-60:]
    return answer


class LockWatcher:
    """Watches, from a connection of its own, whether the migration's sessions (found by their
    application_name) wait for a lock, and remembers who blocks them (pg_blocking_pids +
    pg_stat_activity + the lock they wait for).  The waiting session is gone once its lock
    timeout fires, so the blocker has to be seen while it blocks."""

    BLOCKED_SQL = """
        SELECT w.pid, l.locktype, l.relation::regclass::text, l.mode, pg_blocking_pids(w.pid)
          FROM pg_stat_activity w
          LEFT JOIN pg_locks l ON l.pid = w.pid AND NOT l.granted
         WHERE w.application_name = %s AND w.wait_event_type = 'Lock'"""
    BLOCKER_SQL = """
        SELECT pid, usename, application_name, client_addr::text, state, left(query, 500),
               extract(epoch FROM clock_timestamp() - xact_start)::int, backend_type
          FROM pg_stat_activity WHERE pid = ANY (%s) ORDER BY pid"""

    def __init__(self, connect_fn, application_name: str, interval: float = 0.1):
        self._connect_fn = connect_fn
        self.application_name = application_name
        self.interval = interval
        self.observed: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def __enter__(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            conn = self._connect_fn()
        except Exception as exc:  # the watcher is a diagnosis aid; the migration goes on without it
            self.error = str(exc)
            return
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    self._poll(cur)
                    self._stop.wait(self.interval)
        except Exception as exc:
            self.error = str(exc)
        finally:
            conn.close()

    def _poll(self, cur) -> None:
        cur.execute(self.BLOCKED_SQL, (self.application_name,))
        for pid, locktype, relation, mode, blockers in cur.fetchall():
            if not blockers:
                continue
            cur.execute(self.BLOCKER_SQL, (list(blockers),))
            rows = [dict(zip(("pid", "user", "application_name", "client_addr", "state", "query",
                              "transaction_age_s", "backend_type"), row)) for row in cur.fetchall()]
            self.observed = {"waiting_pid": pid, "lock": {"type": locktype, "relation": relation, "mode": mode},
                             "blockers": rows}


def describe_blockers(observed: dict | None) -> str:
    if not observed or not observed.get("blockers"):
        return ("the blocking session was not seen (it may have ended, or this role may not see other roles' "
                "sessions: grant it pg_read_all_stats)")
    lock = observed["lock"]
    what = f"{lock['mode']} on {lock['relation']}" if lock.get("relation") else (lock.get("mode") or "a lock")
    parts = []
    for b in observed["blockers"]:
        query = " ".join((b.get("query") or "").split())
        parts.append(f"pid {b['pid']} (user {b['user']}, application {b['application_name'] or '-'!s}, "
                     f"{b['state'] or b['backend_type']}"
                     + (f", transaction open {b['transaction_age_s']}s" if b.get("transaction_age_s") is not None
                        else "") + f"): {query[:300]}")
    return f"waiting for {what}, blocked by " + "; ".join(parts)


def ordered_path(revisions: list[dict], upper: str | None, lower: str | None) -> list[str]:
    """Revisions above ``lower`` up to and including ``upper``, oldest first (what an upgrade from lower
    to upper applies, and, reversed, what a downgrade from upper to lower undoes)."""
    down = {r["revision"]: r["down_revisions"] for r in revisions}
    order = {r["revision"]: i for i, r in enumerate(revisions)}

    def ancestors(rev: str | None) -> set:
        seen: set = set()
        stack = [rev] if rev else []
        while stack:
            cur = stack.pop()
            if cur in seen or cur not in down:
                continue
            seen.add(cur)
            stack.extend(down[cur])
        return seen

    chosen = ancestors(upper) - ancestors(lower)
    return sorted(chosen, key=lambda r: order[r])


def is_ancestor(revisions: list[dict], older: str | None, newer: str | None) -> bool:
    if older is None:
        return True
    if newer is None:
        return False
    return older in set(ordered_path(revisions, newer, None))
