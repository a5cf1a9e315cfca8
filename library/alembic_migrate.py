#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: alembic_migrate
short_description: Move a database to an Alembic revision without stalling production
description:
  - Reads the current revision from the target database (its C(alembic_version) table), resolves the target
    (a revision id or a unique prefix of one, V(head), V(base), or V(+N)/V(-N) relative to the current revision)
    against the Alembic project in O(project_dir), and upgrades or downgrades to it. Nothing changes when the
    database is already there.
  - An unknown target, a database at a revision the project does not know, a project that does not load (a broken
    revision script) or a wrong directory fail before anything runs, naming the known revisions or the fix.
  - Every session of the migration runs with O(lock_timeout) and O(statement_timeout) (set through libpq's
    C(PGOPTIONS)), so DDL that cannot get its lock gives up instead of queueing every other writer behind it.
    A lock timeout (SQLSTATE 55P03) is retried up to O(lock_retries) times with doubling lock timeouts (up to
    O(lock_timeout_max)) and growing pauses, like GitLab's lock retries; the last failure names the blocking
    session (pid, user, application, state, query) seen in C(pg_stat_activity) through C(pg_blocking_pids).
  - Alembic runs in a child process of the application's own Python (O(python), an interpreter or a virtualenv,
    since an application pins its own SQLAlchemy and Alembic; by default the module's interpreter), with the
    application's settings variables from O(environment) and the connection in the libpq environment
    (C(PGHOST), C(PGPASSWORD), ...), C(DATABASE_URL) and C(sqlalchemy.url) set to a bare
    C(postgresql+psycopg2://) URL, so any project whose env.py connects through one of them works and the
    password is never on a command line.
  - An env.py that ignores that connection (one that builds its own URL from the application's settings, say)
    would migrate another database (pass the settings that point it at O(login_db) in O(environment)). Every
    connection the project opens is therefore checked before it is used, its database (name and oid) and server
    (postmaster start time and port) must be those of O(login_db), or the run
    stops before any statement with a message that says env.py connects elsewhere and what to set. A run that
    Alembic reports as done while the revision of O(login_db) did not move fails with the same explanation.
  - Errors say where they come from. A missing module (C(ModuleNotFoundError) or any C(ImportError)) names the
    Python to install it into, an error of env.py or of the application's settings it loads names O(environment),
    and only an error inside a revision script says to fix the migration script.
  - With O(sql_files) instead of O(project_dir), applies raw SQL migration files (runbook 3.1.2) in ONE
    transaction under the same timeouts and retries; an error rolls every file back. Applied files are recorded
    with their SHA-256 in C(<ops_schema>.sql_migrations), so a second run skips them and an applied file that
    was edited afterwards is refused.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details:
      - Runs nothing; returns the SQL Alembic would run (its offline mode) as RV(sql) and as the diff.
      - Fails, as the real run would, when env.py cannot load or the SQL cannot be rendered.
  diff_mode:
    support: full
    details: The SQL that runs or would run, as C(prepared).
options:
  project_dir:
    description:
      - Directory of the Alembic project (where its configuration file is). Required unless O(sql_files) is given.
    type: path
    aliases: [alembic_dir]
  config:
    description: Alembic configuration file, relative to O(project_dir) or absolute.
    type: str
    default: alembic.ini
  ini_section:
    description: Section of O(config) to read.
    type: str
    default: alembic
  revision:
    description:
      - Target revision. A revision id or a unique prefix of one, V(head), V(base), V(+N) or V(-N).
    type: str
    default: head
  allow_downgrade:
    description:
      - A target below the current revision is a downgrade, which drops what the newer revisions added.
        Refused unless this is V(true) (rollbacks and the cycle test set it).
    type: bool
    default: false
  expect_current:
    description:
      - Revisions the database may be at before the run (V(base) for none). Anything else fails before
        anything runs, for example a plan for 1.0.0 to 2.0.0 run against a database at another revision.
    type: list
    elements: str
  python:
    description:
      - The Python that runs the application's Alembic and env.py, with the application's own SQLAlchemy,
        Alembic and requirements installed; an interpreter or a virtualenv directory (its C(bin/python)).
      - Unset means the interpreter that runs this module (C(ansible_python_interpreter)).
    type: path
  environment:
    description:
      - Environment variables the application's env.py needs (its settings variables), set for the Alembic
        process only, never in ansible-playbook's own environment. Values are treated as secrets (no_log).
      - The connection variables the module sets (C(PG*), C(DATABASE_URL)) take precedence over these.
    type: dict
    default: {}
  x_args:
    description: Values passed to env.py as C(-x name=value) (C(context.get_x_argument)).
    type: dict
    default: {}
  lock_timeout:
    description:
      - C(lock_timeout) of the first attempt (a PostgreSQL duration such as V(500ms), V(2s)). V(0) disables it
        (not recommended on a live database).
    type: str
    default: 2s
  lock_timeout_max:
    description: Upper bound of the doubling lock timeout across retries.
    type: str
    default: 10s
  lock_retries:
    description: How many times a lock timeout is retried before the module fails.
    type: int
    default: 5
  lock_retry_pause:
    description:
      - Seconds to pause after the first lock timeout; the pause after attempt N is N times this, so the queue
        behind the migration drains between attempts.
    type: float
    default: 3.0
  statement_timeout:
    description: C(statement_timeout) of every statement of the migration (a PostgreSQL duration, V(0) for none).
    type: str
    default: 5min
  version_table:
    description: Alembic's version table (C(version_table) in env.py).
    type: str
    default: alembic_version
  version_table_schema:
    description: Schema of O(version_table); unset means the search path.
    type: str
  sqlalchemy_driver:
    description: SQLAlchemy driver name of the bare URL given to Alembic.
    type: str
    default: postgresql+psycopg2
  render_sql:
    description:
      - Also render the SQL of a real run (Alembic offline mode) and return it. Check mode always renders.
    type: bool
    default: true
  timeout:
    description: Seconds one Alembic attempt may take before the child process is stopped; V(0) for no limit.
    type: int
    default: 0
  sql_files:
    description:
      - Raw SQL migration files to apply in one transaction, in this order (instead of Alembic). A file must not
        contain its own C(BEGIN)/C(COMMIT).
    type: list
    elements: path
  run_id:
    description: Run of the ledger that applies O(sql_files) (recorded with them).
    type: int
notes:
  - The blocking session is named only when the module's role can see other sessions in C(pg_stat_activity)
    (the same role, a superuser or a member of C(pg_read_all_stats)).
  - The reference project runs each upgrade in one transaction; PostgreSQL's transactional DDL then leaves the
    database at its old revision after any failure. A project that commits per migration can stop part-way;
    the module reports where the database is after a failure.
seealso:
  - name: GitLab lock retries
    description: The retry pattern this module follows.
    link: https://docs.gitlab.com/ee/development/migration_style_guide.html#retry-mechanism-when-acquiring-database-locks
'''

EXAMPLES = r'''
- name: Upgrade with the application's own virtualenv and settings
  alembic_migrate:
    project_dir: /srv/backend
    python: /srv/backend/.venv
    environment:
      APP_ENV: production
      APP_DB_NAME: "{{ pgmigrate_db_name }}"
    revision: head

- name: Upgrade the database to the plan's revision
  alembic_migrate:
    project_dir: "{{ pgmigrate_project_dir }}/examples/football_prediction"
    revision: v2_0_0
    expect_current: [v1_0_0, v2_0_0]
    lock_timeout: 2s
    statement_timeout: 5min
    lock_retries: 5
  register: __schema_migrate_result

- name: Downgrade to the revision the run started from
  alembic_migrate:
    project_dir: "{{ pgmigrate_project_dir }}/examples/football_prediction"
    revision: v1_0_0
    allow_downgrade: true

- name: Apply the plan's raw SQL files in one transaction
  alembic_migrate:
    sql_files:
      - "{{ pgmigrate_project_dir }}/migrations/sql/2.0.0-grants.sql"
    run_id: "{{ pgmigrate_run_id }}"
'''

RETURN = r'''
from_revision:
  description: Revision of the database before the run (null when it had none).
  returned: in Alembic mode
  type: str
  sample: v1_0_0
to_revision:
  description: Revision after the run (in check mode, the revision it would reach; null for base).
  returned: in Alembic mode
  type: str
  sample: v2_0_0
direction:
  description: What the run does.
  returned: in Alembic mode
  type: str
  sample: upgrade
revisions_applied:
  description: Revisions upgraded (oldest first) or downgraded (newest first); in check mode, those it would apply.
  returned: always
  type: list
  elements: str
  sample: [v2_0_0]
known_revisions:
  description: Revisions of the project, base first.
  returned: in Alembic mode
  type: list
  elements: str
attempts:
  description: Attempts made (1 without lock timeouts; 0 when nothing ran).
  returned: always
  type: int
attempt_log:
  description: One entry per attempt with its lock timeout, outcome, error and the blocker seen.
  returned: always
  type: list
  elements: dict
duration_s:
  description: Seconds the run took, pauses included.
  returned: always
  type: float
sql:
  description: The SQL that ran or would run (Alembic's offline rendering, or the SQL files).
  returned: always
  type: str
blocked_by:
  description: The lock the migration waited for and the sessions that held it, when a lock timeout happened.
  returned: when a lock timeout happened
  type: dict
log:
  description: Alembic's log lines of the last attempt.
  returned: in Alembic mode
  type: list
  elements: str
files_applied:
  description: SQL files applied (or that would be applied in check mode).
  returned: with sql_files
  type: list
  elements: str
files_skipped:
  description: SQL files already applied with the same content.
  returned: with sql_files
  type: list
  elements: str
'''

import hashlib
import os
import re
import time
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate_alembic import (
    IDENTITY_SQL,
    LOCK_NOT_AVAILABLE,
    QUERY_CANCELED,
    LockWatcher,
    describe_blockers,
    format_ms,
    is_ancestor,
    lock_schedule,
    ordered_path,
    python_executable,
    run_alembic,
)

from ansible.module_utils.pgmigrate import (
    connect,
    connection_argument_spec,
    connection_kwargs,
    ensure_ops_schema,
    libpq_env,
    ops_schema_exists,
    parse_duration_ms,
    psycopg2,
    resolve_table,
    sql,
)

# Variables that carry the module's own connection: O(environment) never overrides them.
CONNECTION_VARS = frozenset(("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE", "PGSSLROOTCERT",
                             "PGCONNECT_TIMEOUT", "PGPASSFILE", "PGSERVICE", "DATABASE_URL"))
RELATIVE_RE = re.compile(r"^([+-])(\d+)$")
TRANSACTION_RE = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END)\s*;", re.IGNORECASE | re.MULTILINE)


class Migrator:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.p = module.params
        self.started = time.monotonic()
        self.attempt_log: list[dict] = []
        self.application_name = f"pgmigrate-ops:alembic_migrate:{uuid.uuid4().hex[:10]}"
        try:
            self.lock_ms = parse_duration_ms(self.p["lock_timeout"])
            self.lock_max_ms = parse_duration_ms(self.p["lock_timeout_max"])
            self.statement_ms = parse_duration_ms(self.p["statement_timeout"])
        except ValueError as exc:
            module.fail_json(msg=f"bad timeout: {exc}")
        if self.p["lock_retries"] < 0 or self.p["lock_retry_pause"] < 0:
            module.fail_json(msg="lock_retries and lock_retry_pause must not be negative")
        try:
            self.python = python_executable(self.p["python"])
        except ValueError as exc:
            module.fail_json(msg=f"python: {exc}; give the application's Python interpreter or its virtualenv "
                             "directory (schema_migrate_python), or leave it unset for the module's own. "
                             "Nothing was run.")
        bad = sorted(k for k in self.p["environment"] or {} if not k or "=" in k or "\0" in str(k))
        if bad:
            module.fail_json(msg=f"environment: {bad!r} are not environment variable names; fix "
                             "schema_migrate_environment. Nothing was run.")
        self.schedule = lock_schedule(self.lock_ms, self.lock_max_ms, self.p["lock_retries"],
                                      self.p["lock_retry_pause"])

    # -- common --------------------------------------------------------------------------
    def duration(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def fail(self, msg: str, **extra) -> None:
        self.module.fail_json(msg=msg, attempts=len(self.attempt_log), attempt_log=self.attempt_log,
                              duration_s=self.duration(), **extra)

    def watcher(self) -> LockWatcher:
        kwargs = connection_kwargs(self.p)
        kwargs["application_name"] = "pgmigrate-ops:alembic_migrate:watcher"
        return LockWatcher(lambda: psycopg2.connect(**kwargs), self.application_name)

    def lock_failure_msg(self, what: str, blocked_by: dict | None, unchanged: str) -> str:
        timeouts = [format_ms(t) for t, _ in self.schedule]
        return (f"{what} could not get its lock after {len(self.attempt_log)} attempts (lock_timeout "
                f"{' -> '.join(timeouts)}, pauses between them); {describe_blockers(blocked_by)}. {unchanged} "
                "Run again once the blocker is gone, or end it (SELECT pg_terminate_backend(<pid>)), or raise "
                "lock_retries / lock_timeout_max.")

    # -- Alembic ---------------------------------------------------------------------------
    def alembic_env(self, lock_ms: int) -> dict:
        env = libpq_env(self.p)
        env.update(self.settings_env())
        options = f"-c lock_timeout={lock_ms}ms -c statement_timeout={self.statement_ms}ms"
        env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " " + options).strip()
        env["PGAPPNAME"] = self.application_name
        env["DATABASE_URL"] = self.url()
        return env

    def settings_env(self) -> dict:
        """The application's settings variables, without those that carry the module's connection."""
        return {str(k): "" if v is None else str(v) for k, v in (self.p["environment"] or {}).items()
                if str(k) not in CONNECTION_VARS}

    def url(self) -> str:
        return f"{self.p['sqlalchemy_driver']}://"

    def request(self, op: str, **extra) -> dict:
        x = [f"{k}={v}" for k, v in (self.p["x_args"] or {}).items()]
        return {"op": op, "config": self.config_path, "ini_section": self.p["ini_section"], "x": x,
                "url": self.url(), **extra}

    def run(self, request: dict, lock_ms: int) -> dict:
        if request["op"] != "inspect" and not request.get("sql"):
            request.update(expect_database=self.identity, identity_sql=IDENTITY_SQL)
        return run_alembic(request, self.alembic_env(lock_ms), self.project_dir, self.p["timeout"] or None,
                           python=self.python)

    def check_project(self) -> None:
        project = self.p["project_dir"]
        if not os.path.isdir(project):
            self.fail(f"the Alembic project directory {project} does not exist; point project_dir (the plan's "
                      "schema.alembic_dir, relative to the project checkout) at the directory of alembic.ini")
        config = self.p["config"]
        self.project_dir = project
        self.config_path = config if os.path.isabs(config) else os.path.join(project, config)
        if not os.path.isfile(self.config_path):
            self.fail(f"no Alembic configuration {self.config_path}: {project} is not an Alembic project; "
                      "point project_dir at the directory of alembic.ini (or set config)")

    def load_revisions(self) -> list[dict]:
        answer = self.run(self.request("inspect"), self.lock_ms)
        if not answer.get("ok"):
            self.fail(f"cannot load the Alembic project {self.config_path}: " + self.explain(answer)
                      + " Nothing was run.", log=answer.get("log"))
        revisions = answer["revisions"]
        if not revisions:
            self.fail(f"the Alembic project {self.config_path} has no revisions")
        return revisions

    def explain(self, answer: dict) -> str:
        """The error of the Alembic child and what to do about it, by where it came from."""
        error = clean_error(answer.get("error"))
        kind = answer.get("error_type")
        if answer.get("import_error") or kind == "ImportError":
            missing = answer.get("missing_module") or "a module"
            return (f"{kind}: {error}. {missing} is not installed for {self.python}, the Python that runs the "
                    "application's Alembic: install the application's requirements (alembic, SQLAlchemy and "
                    "what env.py imports) into it, or point python (schema_migrate_python) at the application's "
                    "virtualenv.")
        if answer.get("stage") == "settings":
            return (f"the application's settings did not load ({kind}): {error}. env.py reads them from its "
                    "environment: pass the settings variables in environment (schema_migrate_environment); the "
                    "migration scripts were not run.")
        if answer.get("stage") == "env":
            return (f"the project's env.py failed ({kind}): {error}. That is the project's environment (env.py and "
                    "the settings or application code it imports), not a migration script: check the variables it "
                    "reads (schema_migrate_environment) and its imports.")
        if answer.get("stage") == "migration":
            return f"a revision script failed ({kind}): {error}. Fix the migration script and run again."
        return f"{kind}: {error}."

    def database_identity(self) -> dict:
        """Who login_db is (name and oid; server by postmaster start time and port): what every
        connection of the Alembic project must match."""
        conn = connect(self.module, application_name="pgmigrate-ops:alembic_migrate")
        try:
            with conn.cursor() as cur:
                cur.execute(IDENTITY_SQL)
                name, oid, started, port, host = cur.fetchone()
        finally:
            conn.rollback()
            conn.close()
        return {"database": name, "oid": int(oid), "started": started, "port": str(port), "host": host}

    def elsewhere_msg(self, seen: str | None) -> str:
        db = self.identity["database"]
        where = f"{self.p['login_host'] or 'local socket'}:{self.p['login_port']}"
        reached = f"{seen}, not to" if seen else "not (only) to"
        return (f"the Alembic project's env.py connects elsewhere: to {reached} login_db {db} on {where} that "
                "this module was given (env.py builds its own URL, e.g. from the application's settings, and "
                "ignores the one it is given). Make env.py connect with the URL it is given "
                "(context.config.get_main_option('sqlalchemy.url') or the DATABASE_URL environment variable; "
                "the module puts the connection in the libpq environment PGHOST, PGPORT, PGUSER, PGDATABASE, "
                f"PGPASSWORD), or set the application's own database settings to {db} on {where} for this run")

    def current_revision(self) -> str | None:
        conn = connect(self.module, application_name="pgmigrate-ops:alembic_migrate")
        try:
            with conn.cursor() as cur:
                found = resolve_table(cur, self.p["version_table"], schema=self.p["version_table_schema"] or None)
                if found is None:
                    return None
                cur.execute(sql.SQL("SELECT version_num FROM {} ORDER BY version_num").format(
                    sql.Identifier(found["schema"], found["table"])))
                rows = [r[0] for r in cur.fetchall()]
        finally:
            conn.rollback()
            conn.close()
        if len(rows) > 1:
            self.fail(f"the database is at several Alembic heads ({', '.join(rows)}); merge them (alembic merge) "
                      "before migrating with this module")
        return rows[0] if rows else None

    def resolve(self, target: str, current: str | None, revisions: list[dict]) -> str | None:
        ids = [r["revision"] for r in revisions]
        heads = [r["revision"] for r in revisions if r["is_head"]]
        known = ", ".join(describe(r) for r in revisions)
        if target in ("head", "heads"):
            if len(heads) != 1:
                self.fail(f"the project has {len(heads)} heads ({', '.join(heads)}); give one revision id")
            return heads[0]
        if target == "base":
            return None
        match = RELATIVE_RE.match(target)
        if match:
            if len(heads) != 1 or any(len(r["down_revisions"]) > 1 for r in revisions):
                self.fail(f"relative revision {target!r} needs a linear history; give a revision id ({known})")
            index = (ids.index(current) if current else -1) + int(match.group(1) + match.group(2))
            if index < -1 or index >= len(ids):
                self.fail(f"relative revision {target!r} from {current or 'base'} is outside the history "
                          f"(known revisions: {known})")
            return None if index == -1 else ids[index]
        if target in ids:
            return target
        prefixed = [i for i in ids if i.startswith(target)]
        if len(prefixed) == 1:
            return prefixed[0]
        why = "is ambiguous" if prefixed else "is not a revision of"
        self.fail(f"unknown revision {target!r}: it {why} the Alembic project {self.config_path}; known revisions: "
                  f"{known}. Nothing was run.")
        return None

    def render(self, command: str, current: str | None, target: str | None) -> tuple[str | None, dict | None]:
        start = current or ("base" if command == "downgrade" else None)
        end = target or "base"
        spec = f"{start}:{end}" if start else end
        answer = self.run(self.request(command, target=spec, sql=True), self.lock_ms)
        if answer.get("ok"):
            return answer.get("sql", ""), None
        return None, answer

    def migrate(self) -> dict:
        self.check_project()
        revisions = self.load_revisions()
        self.identity = self.database_identity()
        ids = [r["revision"] for r in revisions]
        current = self.current_revision()
        if current is not None and current not in ids:
            self.fail(f"the database is at revision {current!r}, which the Alembic project {self.config_path} does "
                      f"not know (known: {', '.join(ids)}); is the project older than the database?")
        target = self.resolve(self.p["revision"], current, revisions)
        base = {"from_revision": current, "known_revisions": ids, "target": self.p["revision"]}
        expect = self.p["expect_current"]
        if expect is not None and (current or "base") not in expect and current != target:
            self.fail(f"the database is at {current or 'base'}, not at an expected revision "
                      f"({', '.join(expect)}); check that this plan applies to this database. Nothing was run.",
                      **base)
        if current == target:
            return dict(changed=False, to_revision=target, direction="none", revisions_applied=[], attempts=0,
                        attempt_log=[], duration_s=self.duration(), sql="", log=[],
                        msg=f"already at {target or 'base'}", **base)
        if is_ancestor(revisions, current, target):
            command, applied = "upgrade", ordered_path(revisions, target, current)
        elif is_ancestor(revisions, target, current):
            command, applied = "downgrade", list(reversed(ordered_path(revisions, current, target)))
            if not self.p["allow_downgrade"]:
                self.fail(f"{target or 'base'} is below the current revision {current}: that is a downgrade "
                          f"(undoes {', '.join(applied)}); set allow_downgrade=true to do it. Nothing was run.",
                          **base)
        else:
            self.fail(f"{current} and {target} are on different branches; migrate through their merge revision",
                      **base)
        rendered, render_error = (None, None)
        if self.module.check_mode or self.p["render_sql"]:
            rendered, render_error = self.render(command, current, target)
        result = dict(base, changed=True, to_revision=target, direction=command, revisions_applied=applied,
                      sql=rendered or "")
        if render_error and self.module.check_mode:
            self.fail(f"check mode could not render the SQL of {command} {current or 'base'} -> {target or 'base'} "
                      f"(Alembic offline mode runs env.py): {self.explain(render_error)} The real run would fail "
                      "the same way. Nothing was run.", **base)
        if render_error:
            self.module.warn(f"Alembic could not render the SQL offline: {self.explain(render_error)}")
        if self.module.check_mode:
            result.update(attempts=0, attempt_log=[], duration_s=self.duration(), log=[],
                          diff={"prepared": rendered},
                          msg=f"would {command} {current or 'base'} -> {target or 'base'}")
            return result
        answer = self.run_with_retries(command, target, current)
        after = self.current_revision()
        if after != target:
            moved = "did not move" if after == current else f"is at {after or 'base'}"
            self.fail(f"Alembic reported success but login_db {self.identity['database']} {moved} (expected "
                      f"{target or 'base'}): Alembic changed another database. "
                      + self.elsewhere_msg(None) + ".", **base)
        result.update(attempts=len(self.attempt_log), attempt_log=self.attempt_log, duration_s=self.duration(),
                      log=answer.get("log", []), diff={"prepared": rendered or ""},
                      msg=f"{command} {current or 'base'} -> {target or 'base'}")
        return result

    def run_with_retries(self, command: str, target: str | None, current: str | None) -> dict:
        blocked_by = None
        for attempt, (lock_ms, pause) in enumerate(self.schedule, start=1):
            watcher = self.watcher()
            with watcher:
                answer = self.run(self.request(command, target=target or "base"), lock_ms)
            entry = {"attempt": attempt, "lock_timeout": format_ms(lock_ms),
                     "outcome": "ok" if answer.get("ok") else "failed"}
            if answer.get("ok"):
                self.attempt_log.append(entry)
                return answer
            entry.update(sqlstate=answer.get("sqlstate"), error=clean_error(answer.get("error"))[:500])
            if watcher.observed:
                entry["blocked_by"] = watcher.observed
                blocked_by = watcher.observed
            self.attempt_log.append(entry)
            after = self.current_revision()
            where = (f"Nothing was changed: the database is still at {current or 'base'}." if after == current
                     else f"The database is now at {after or 'base'} (the project commits per revision).")
            extra = {"from_revision": current, "to_revision": after, "log": answer.get("log", []),
                     "blocked_by": blocked_by}
            if answer.get("error_type") == "WrongDatabase":
                self.fail(self.elsewhere_msg(entry["error"].removeprefix("env.py connected to "))
                          + f". That connection was refused before any statement ran on it. {where}",
                          **extra)
            if answer.get("sqlstate") == LOCK_NOT_AVAILABLE:
                if attempt < len(self.schedule):
                    entry["pause_s"] = pause
                    time.sleep(pause)
                    continue
                self.fail(f"alembic {command} to {target or 'base'}: "
                          + self.lock_failure_msg("the migration", blocked_by, where), **extra)
            if answer.get("sqlstate") == QUERY_CANCELED:
                self.fail(f"alembic {command} to {target or 'base'} was cancelled by statement_timeout "
                          f"({format_ms(self.statement_ms)}): {entry['error']}. {where} Raise statement_timeout "
                          "(the plan's schema.statement_timeout) or make the migration cheaper.", **extra)
            self.fail(f"alembic {command} to {target or 'base'} failed: {self.explain(answer)} {where}", **extra)
        return {}

    # -- raw SQL files ---------------------------------------------------------------------
    def apply_sql_files(self) -> dict:
        files = []
        for path in self.p["sql_files"]:
            if not os.path.isfile(path):
                self.fail(f"SQL migration file {path} does not exist; check the plan's schema.sql_files "
                          "(paths relative to the project checkout)")
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            if TRANSACTION_RE.search(text):
                self.fail(f"SQL migration file {path} manages its own transaction (BEGIN/COMMIT/ROLLBACK); remove "
                          "those statements: every file of the plan runs in one transaction")
            files.append({"path": path, "name": os.path.basename(path), "text": text,
                          "sha256": hashlib.sha256(text.encode()).hexdigest()})
        names = [f["name"] for f in files]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.fail(f"two SQL migration files are named {dup}; file names identify applied files")
        schema = self.p["ops_schema"]
        applied = self.applied_sql_files(schema)
        pending, skipped = [], []
        for f in files:
            if f["name"] in applied:
                if applied[f["name"]] != f["sha256"]:
                    self.fail(f"SQL migration file {f['path']} was applied before with another content (sha256 "
                              f"{applied[f['name']][:12]}..., now {f['sha256'][:12]}...); never edit an applied "
                              "file: add a new one")
                skipped.append(f["path"])
            else:
                pending.append(f)
        text = "".join(f"-- {f['path']}\n{f['text'].rstrip()}\n\n" for f in pending)
        result = dict(files_applied=[f["path"] for f in pending], files_skipped=skipped, sql=text,
                      revisions_applied=[], diff={"prepared": text})
        if not pending:
            return dict(result, changed=False, attempts=0, attempt_log=[], duration_s=self.duration(),
                        msg="every SQL file is already applied")
        if self.module.check_mode:
            return dict(result, changed=True, attempts=0, attempt_log=[], duration_s=self.duration(),
                        msg=f"would apply {len(pending)} SQL file(s) in one transaction")
        self.apply_in_one_transaction(pending, schema)
        return dict(result, changed=True, attempts=len(self.attempt_log), attempt_log=self.attempt_log,
                    duration_s=self.duration(), msg=f"applied {len(pending)} SQL file(s) in one transaction")

    def applied_sql_files(self, schema: str) -> dict:
        conn = connect(self.module)
        try:
            with conn.cursor() as cur:
                if not ops_schema_exists(cur, schema) or resolve_table(cur, "sql_migrations", schema=schema) is None:
                    return {}
                cur.execute(sql.SQL("SELECT name, sha256 FROM {}").format(sql.Identifier(schema, "sql_migrations")))
                return dict(cur.fetchall())
        finally:
            conn.rollback()
            conn.close()

    def apply_in_one_transaction(self, pending: list[dict], schema: str) -> None:
        blocked_by = None
        for attempt, (lock_ms, pause) in enumerate(self.schedule, start=1):
            conn = connect(self.module, application_name=self.application_name)
            entry = {"attempt": attempt, "lock_timeout": format_ms(lock_ms)}
            current_file = None
            watcher = self.watcher()
            try:
                with watcher, conn.cursor() as cur:
                    cur.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, "
                                "true)", (f"{lock_ms}ms", f"{self.statement_ms}ms"))
                    ensure_ops_schema(cur, schema)
                    cur.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
                        name text PRIMARY KEY, sha256 text NOT NULL, path text NOT NULL,
                        run_id bigint, applied_by text NOT NULL DEFAULT current_user,
                        applied_at timestamptz NOT NULL DEFAULT clock_timestamp())""").format(
                        sql.Identifier(schema, "sql_migrations")))
                    for f in pending:
                        current_file = f["path"]
                        cur.execute(f["text"])
                        cur.execute(sql.SQL("INSERT INTO {} (name, sha256, path, run_id) VALUES (%s, %s, %s, %s)")
                                    .format(sql.Identifier(schema, "sql_migrations")),
                                    (f["name"], f["sha256"], f["path"], self.p["run_id"]))
                conn.commit()
                entry["outcome"] = "ok"
                self.attempt_log.append(entry)
                return
            except psycopg2.Error as exc:
                conn.rollback()
                error = clean_error(str(exc))
                entry.update(outcome="failed", sqlstate=exc.pgcode, error=error[:500], file=current_file)
                if watcher.observed:
                    entry["blocked_by"] = blocked_by = watcher.observed
                self.attempt_log.append(entry)
                unchanged = "Nothing was changed: every file was rolled back."
                if exc.pgcode == LOCK_NOT_AVAILABLE:
                    if attempt < len(self.schedule):
                        entry["pause_s"] = pause
                        time.sleep(pause)
                        continue
                    self.fail(f"SQL file {current_file}: "
                              + self.lock_failure_msg("the SQL migration", blocked_by, unchanged),
                              blocked_by=blocked_by)
                self.fail(f"SQL migration file {current_file} failed: {error}. {unchanged} Fix the file and run "
                          "again.", files_applied=[])
            finally:
                conn.close()


def describe(revision: dict) -> str:
    marks = [m for m, flag in (("base", revision["is_base"]), ("head", revision["is_head"])) if flag]
    return revision["revision"] + (f" ({', '.join(marks)})" if marks else "")


def clean_error(text: str | None) -> str:
    """One readable line: SQLAlchemy's 'Background on this error' link and blank lines dropped."""
    lines = [line.strip() for line in (text or "").splitlines()
             if line.strip() and "Background on this error" not in line]
    return " ".join(lines)[:1500]


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        project_dir=dict(type="path", aliases=["alembic_dir"]),
        config=dict(type="str", default="alembic.ini"),
        ini_section=dict(type="str", default="alembic"),
        revision=dict(type="str", default="head"),
        allow_downgrade=dict(type="bool", default=False),
        expect_current=dict(type="list", elements="str"),
        python=dict(type="path"),
        environment=dict(type="dict", default={}, no_log=True),
        x_args=dict(type="dict", default={}),
        lock_timeout=dict(type="str", default="2s"),
        lock_timeout_max=dict(type="str", default="10s"),
        lock_retries=dict(type="int", default=5),
        lock_retry_pause=dict(type="float", default=3.0),
        statement_timeout=dict(type="str", default="5min"),
        version_table=dict(type="str", default="alembic_version"),
        version_table_schema=dict(type="str"),
        sqlalchemy_driver=dict(type="str", default="postgresql+psycopg2"),
        render_sql=dict(type="bool", default=True),
        timeout=dict(type="int", default=0),
        sql_files=dict(type="list", elements="path"),
        run_id=dict(type="int"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_one_of=[("project_dir", "sql_files")],
                           mutually_exclusive=[("project_dir", "sql_files")])
    migrator = Migrator(module)
    result = migrator.apply_sql_files() if module.params["sql_files"] else migrator.migrate()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
