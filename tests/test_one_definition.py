"""One definition of each thing: what two places used to define differently is read from one (no database).

The modules and module_utils are imported as Ansible would (module_utils on ansible.module_utils' path).
"""
from __future__ import annotations

import ast
import importlib.util

import ansible.module_utils
import pytest
import yaml
from conftest import ROOT

if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"pgmigrate_test_{name}", ROOT / "library" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_options(name: str) -> dict:
    tree = ast.parse((ROOT / "library" / f"{name}.py").read_text())
    doc = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
               and getattr(n.targets[0], "id", "") == "DOCUMENTATION")
    return yaml.safe_load(doc)["options"]


def test_pg_batch_update_defaults_have_one_definition():
    """The module's argument spec, its DOCUMENTATION and the engine's Spec (used by the plan's preflight) agree;
    hold_poll_s was 5.0 in the module and 1.0 in the engine."""
    from ansible.module_utils.pgmigrate_batch import spec_defaults

    engine = spec_defaults()
    argspec = load_module("pg_batch_update").argument_spec()
    docs = documented_options("pg_batch_update")
    problems = []
    for name, default in engine.items():
        if name in argspec and argspec[name].get("default") != default:
            problems.append(f"{name}: argument spec {argspec[name].get('default')!r} != engine {default!r}")
        if name in docs and docs[name].get("default") != default:
            problems.append(f"{name}: DOCUMENTATION {docs[name].get('default')!r} != engine {default!r}")
    assert not problems, "\n".join(problems)
    assert engine["hold_poll_s"] == 5.0


def test_one_duration_grammar_for_plans_and_modules():
    """The plan's lock/statement timeouts and alembic_migrate's read durations alike ('0' was refused by the plan
    and taken by the module)."""
    import re

    from ansible.module_utils.pgmigrate import parse_duration_ms
    from ansible.module_utils.pgmigrate_plan import BACKFILL_SPEC, PLAN_SPEC

    patterns = {BACKFILL_SPEC["fields"]["lock_timeout"]["pattern"],
                PLAN_SPEC["fields"]["schema"]["fields"]["statement_timeout"]["pattern"]}
    for sample, ms in (("0", 0), ("500ms", 500), ("2s", 2000), ("5min", 300_000), ("1h", 3_600_000), ("250", 250)):
        assert parse_duration_ms(sample) == ms
        assert all(re.match(p, sample) for p in patterns), sample
    for bad in ("2 sec", "-1s", "1.5s", "s", ""):
        assert not any(re.match(p, bad) for p in patterns), bad
        try:
            parse_duration_ms(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} parsed")


def defined_in(function: str) -> list[str]:
    """Files of library/ and module_utils/ that define ``function``."""
    return sorted(str(p.relative_to(ROOT)) for folder in ("library", "module_utils")
                  for p in (ROOT / folder).glob("*.py") if f"\ndef {function}(" in p.read_text())


def test_drop_database_has_one_definition_that_ends_sessions(pg):
    """pg_backup_restore and pg_backup_verify each had their own; the one left drops a database a session is
    still connected to."""
    from ansible.module_utils.pgmigrate_backup import drop_database

    assert defined_in("drop_database") == ["module_utils/pgmigrate_backup.py"]
    name = pg.create_database()
    session = pg.connect(name)
    admin = pg.admin_connect()
    try:
        with admin.cursor() as cur:
            drop_database(cur, name)
            drop_database(cur, name)  # already gone: nothing to do, no error
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert cur.fetchone() == (0,)
    finally:
        admin.close()
        session.close()


# ---------------------------------------------------------------------------------------------------------------
# Helpers: which files define, import or contain what
# ---------------------------------------------------------------------------------------------------------------
CODE_FOLDERS = ("library", "module_utils", "filter_plugins")


def files_containing(text: str, folders: tuple[str, ...] = CODE_FOLDERS) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for folder in folders for p in (ROOT / folder).glob("*.py")
                  if text in p.read_text())


def functions_named(name: str) -> list[str]:
    """Every def (functions and methods) called ``name`` in library/ and module_utils/: 'file:line'."""
    found = []
    for folder in ("library", "module_utils"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and node.name == name:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def imported_from(path: str, module: str) -> set[str]:
    """Names ``path`` imports from ansible.module_utils.<module>."""
    tree = ast.parse((ROOT / path).read_text())
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module == f"ansible.module_utils.{module}" for alias in node.names}


# ---------------------------------------------------------------------------------------------------------------
# 1. The table lookup
# ---------------------------------------------------------------------------------------------------------------
HOSTILE_SCHEMA = 'Odd "Schema"; DROP SCHEMA public --'
HOSTILE_TABLE = 'MiXed "Case" Table\'s; DROP TABLE x'


@pytest.fixture
def cur(pg):
    """An autocommit cursor in a new database of the session's cluster, dropped after the test."""
    db = pg.create_database()
    conn = pg.connect(db)
    try:
        with conn.cursor() as cursor:
            yield cursor
    finally:
        conn.close()
        pg.drop_database(db)


def create_hostile_schema(cur) -> None:
    from psycopg2 import sql

    cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)))


def test_resolve_table_has_one_definition_used_by_every_lookup():
    assert [f.split(":")[0] for f in functions_named("resolve_table")] == ["module_utils/pgmigrate.py"]
    assert functions_named("split_table") == [] and functions_named("live_revision") == []
    # to_regclass guessed at quoting by hand; every existence check goes through resolve_table now.
    assert files_containing("to_regclass") == []
    assert files_containing("c.relname = %s AND") == ["module_utils/pgmigrate.py"]
    for user in ("module_utils/pgmigrate_batch.py", "module_utils/pgmigrate_validate.py",
                 "module_utils/pgmigrate_rollback.py", "module_utils/pgmigrate_backup.py", "library/pg_preflight.py",
                 "library/alembic_migrate.py"):
        assert "resolve_table" in imported_from(user, "pgmigrate"), user
    assert [f.split(":")[0] for f in functions_named("alembic_revision")] == ["module_utils/pgmigrate.py"]


def test_resolve_table_finds_a_hostile_mixed_case_name_in_a_non_public_schema(cur):
    from psycopg2 import sql

    from ansible.module_utils.pgmigrate import alembic_revision, ops_schema_exists, resolve_table

    create_hostile_schema(cur)
    cur.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)))
    cur.execute(sql.SQL("CREATE TABLE {} (d date) PARTITION BY RANGE (d)").format(
        sql.Identifier(HOSTILE_SCHEMA, "parted")))
    cur.execute(sql.SQL("CREATE VIEW {} AS SELECT 1 AS one").format(sql.Identifier(HOSTILE_SCHEMA, "a.view")))
    cur.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(HOSTILE_SCHEMA, "with.dot")))
    cur.execute("SELECT %s::regclass::oid", (sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE).as_string(cur),))
    oid = cur.fetchone()[0]

    found = resolve_table(cur, HOSTILE_TABLE, schema=HOSTILE_SCHEMA)
    assert (found["schema"], found["table"], found["oid"]) == (HOSTILE_SCHEMA, HOSTILE_TABLE, oid)
    assert resolve_table(cur, f"{HOSTILE_SCHEMA}.{HOSTILE_TABLE}")["oid"] == oid
    assert resolve_table(cur, HOSTILE_TABLE.lower(), schema=HOSTILE_SCHEMA) is None  # taken literally
    assert resolve_table(cur, HOSTILE_TABLE) is None  # not in the search_path
    assert resolve_table(cur, "parted", schema=HOSTILE_SCHEMA) is not None  # partitioned tables count
    assert resolve_table(cur, "a.view", schema=HOSTILE_SCHEMA) is None  # a view is no table
    assert resolve_table(cur, "with.dot", schema=HOSTILE_SCHEMA)["table"] == "with.dot"
    cur.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(HOSTILE_SCHEMA)))
    assert resolve_table(cur, HOSTILE_TABLE)["oid"] == oid
    try:
        resolve_table(cur, "a.b.c")
    except ValueError as exc:
        assert "'table' or 'schema.table'" in str(exc)
    else:
        raise AssertionError("a name with two dots was guessed at")
    # Built on it: the ledger check and the Alembic revision.
    assert ops_schema_exists(cur, HOSTILE_SCHEMA) is False
    cur.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(HOSTILE_SCHEMA, "runs")))
    assert ops_schema_exists(cur, HOSTILE_SCHEMA) is True
    assert alembic_revision(cur) is None
    cur.execute(sql.SQL("CREATE TABLE {} (version_num text)").format(
        sql.Identifier(HOSTILE_SCHEMA, "alembic_version")))
    cur.execute(sql.SQL("INSERT INTO {} VALUES ('b2'), ('a1')").format(
        sql.Identifier(HOSTILE_SCHEMA, "alembic_version")))
    assert alembic_revision(cur) == "a1,b2"


# ---------------------------------------------------------------------------------------------------------------
# 2. The primary-key query
# ---------------------------------------------------------------------------------------------------------------
def test_primary_key_query_has_one_definition():
    assert [f.split(":")[0] for f in functions_named("primary_key_columns")] == ["module_utils/pgmigrate.py"]
    assert functions_named("primary_key") == []
    assert files_containing("indisprimary ORDER BY") == ["module_utils/pgmigrate.py"]
    assert files_containing("AND i.indisprimary") == ["module_utils/pgmigrate.py"]
    for user in ("module_utils/pgmigrate_batch.py", "module_utils/pgmigrate_validate.py",
                 "module_utils/pgmigrate_backup.py"):
        assert "primary_key_columns" in imported_from(user, "pgmigrate"), user


def test_primary_key_columns_of_a_composite_key_in_key_order(cur):
    from psycopg2 import sql

    from ansible.module_utils.pgmigrate import primary_key_columns, resolve_table
    from ansible.module_utils.pgmigrate_backup import table_watermarks

    create_hostile_schema(cur)
    # Columns in table order a, "B b", c; the key in another order.
    cur.execute(sql.SQL('CREATE TABLE {} (a int, "B b" text, c int, PRIMARY KEY (c, "B b", a))').format(
        sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)))
    cur.execute(sql.SQL("CREATE TABLE {} (a int, b int)").format(sql.Identifier(HOSTILE_SCHEMA, "nokey")))
    cur.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, created_at timestamptz)").format(
        sql.Identifier(HOSTILE_SCHEMA, "single")))
    cur.execute(sql.SQL("INSERT INTO {} VALUES (7, now()), (42, now())").format(
        sql.Identifier(HOSTILE_SCHEMA, "single")))
    composite = resolve_table(cur, HOSTILE_TABLE, schema=HOSTILE_SCHEMA)["oid"]
    assert primary_key_columns(cur, composite) == ["c", "B b", "a"]
    assert primary_key_columns(cur, resolve_table(cur, "nokey", schema=HOSTILE_SCHEMA)["oid"]) == []
    marks = table_watermarks(cur, [(HOSTILE_SCHEMA, HOSTILE_TABLE), (HOSTILE_SCHEMA, "single")])
    assert marks[f"{HOSTILE_SCHEMA}.{HOSTILE_TABLE}"]["key"] is None  # composite: no single integer key
    assert marks[f"{HOSTILE_SCHEMA}.single"] == {"columns": ["id", "created_at"], "key": "id", "max_key": 42,
                                                "write_time_columns": ["created_at"]}


# ---------------------------------------------------------------------------------------------------------------
# 3. read_run
# ---------------------------------------------------------------------------------------------------------------
def run_column_lists() -> list[str]:
    """Files with a literal list of the ledger's columns (a tuple or list naming kind, from_version and status)."""
    found = set()
    for folder in ("library", "module_utils"):
        for path in (ROOT / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Tuple, ast.List)):
                    names = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                    if {"kind", "from_version", "status"} <= names:
                        found.add(str(path.relative_to(ROOT)))
    return sorted(found)


def test_read_run_has_one_definition_and_one_column_list():
    assert [f.split(":")[0] for f in functions_named("read_run")] == ["module_utils/pgmigrate.py"]
    assert functions_named("fetch_runs") == []
    assert files_containing("RUN_COLUMNS = (") == ["module_utils/pgmigrate.py"]
    assert run_column_lists() == ["module_utils/pgmigrate.py"]
    assert "read_run" in imported_from("library/migration_metrics.py", "pgmigrate")
    assert "read_run" in imported_from("library/migration_report.py", "pgmigrate")
    assert "read_runs" in imported_from("library/migration_ledger.py", "pgmigrate")
    assert "read_runs" in imported_from("module_utils/pgmigrate_rollback.py", "pgmigrate")


def test_read_run_reads_every_ledger_column(cur):
    from psycopg2 import sql

    from ansible.module_utils.pgmigrate import RUN_COLUMNS, ensure_ops_schema, read_run, read_runs

    assert read_run(cur, HOSTILE_SCHEMA, 1) is None  # no ledger yet
    ensure_ops_schema(cur, HOSTILE_SCHEMA)
    runs = sql.Identifier(HOSTILE_SCHEMA, "runs")
    cur.execute(sql.SQL("INSERT INTO {} (version, operator, to_version) VALUES (%s, %s, %s), (%s, %s, %s) "
                        "RETURNING id").format(runs), ("1.0.0", "ann", "1.0.0", "2.0.0", "bob", "2.0.0"))
    first, second = (r[0] for r in cur.fetchall())
    cur.execute(sql.SQL("UPDATE {} SET phases = '{{\"plan\": {{\"status\": \"ok\"}}}}', "
                        "finished_at = started_at WHERE id = %s").format(runs), (second,))
    run = read_run(cur, HOSTILE_SCHEMA, second)
    assert set(run) == set(RUN_COLUMNS) | {"started_epoch", "elapsed_s"}
    assert run["id"] == second and run["version"] == "2.0.0" and run["to_version"] == "2.0.0"
    assert run["operator"] == "bob" and run["phases"] == {"plan": {"status": "ok"}}
    assert run["finished_at"] == run["started_at"] and "T" in run["started_at"]
    assert isinstance(run["started_epoch"], float) and run["elapsed_s"] >= 0
    assert read_run(cur, HOSTILE_SCHEMA, second + 100) is None and read_run(cur, HOSTILE_SCHEMA, None) is None
    assert [r["id"] for r in read_runs(cur, HOSTILE_SCHEMA)] == [second, first]  # newest first
    only = read_runs(cur, HOSTILE_SCHEMA, sql.SQL("version = %s"), ("1.0.0",), limit=1)
    assert [r["id"] for r in only] == [first] and set(only[0]) == set(RUN_COLUMNS)
    assert only[0]["finished_at"] is None and only[0]["phases"] == {}


# ---------------------------------------------------------------------------------------------------------------
# 4. timed
# ---------------------------------------------------------------------------------------------------------------
def test_timed_has_one_definition_that_records_a_failing_step():
    from ansible.module_utils.pgmigrate_backup import timed

    assert [f.split(":")[0] for f in functions_named("timed")] == ["module_utils/pgmigrate_backup.py"]
    for user in ("library/pg_backup_verify.py", "library/pg_backup_restore.py"):
        assert "timed" in imported_from(user, "pgmigrate_backup"), user
    durations: dict = {}
    assert timed(durations, "ok_s", lambda a, b=0: a + b, 2, b=3) == 5
    try:
        timed(durations, "failed_s", lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("timed swallowed the step's exception")
    assert set(durations) == {"ok_s", "failed_s"} and all(v >= 0 for v in durations.values())


# ---------------------------------------------------------------------------------------------------------------
# 5. One HTTP client
# ---------------------------------------------------------------------------------------------------------------
def test_one_http_client_on_ansible_urls():
    assert files_containing("urllib.request") == [] and files_containing("urlopen") == []
    assert files_containing("http.client") == [] and files_containing("import requests") == []
    assert files_containing("open_url(") == ["module_utils/pgmigrate_http.py"]
    for user in ("module_utils/pgmigrate_validate.py", "module_utils/pgmigrate_report.py",
                 "library/migration_notify.py"):
        assert "http_request" in imported_from(user, "pgmigrate_http"), user


def test_http_request_answers_fails_without_secrets_and_verifies_tls(tmp_path):
    import http.server
    import ssl
    import subprocess
    import threading

    from receivers import WebhookReceiver
    from validate_helpers import free_port

    from ansible.module_utils.pgmigrate_http import http_request

    with WebhookReceiver() as hook:
        answer = http_request(hook.url("/hooks/T0KEN"), method="POST", data=b'{"a": 1}',
                              headers={"Content-Type": "application/json"}, timeout=5)
        assert (answer.status, answer.body, answer.error) == (200, b"ok", None)
        assert hook.posts[0]["path"] == "/hooks/T0KEN" and hook.posts[0]["json"] == {"a": 1}
        refused = http_request(hook.url("/hooks/T0KEN"), timeout=5)  # the receiver takes POST only
        assert refused.status == 501 and refused.error is None  # an HTTP error status is an answer

    port = free_port()
    dead = http_request(f"http://hookuser:s3cr3tpw@127.0.0.1:{port}/hooks/T0KEN?key=APIKEY1", timeout=2)
    assert dead.status == 0 and dead.error.startswith(f"no answer from http://127.0.0.1:{port}: ")
    for secret in ("s3cr3tpw", "hookuser", "T0KEN", "APIKEY1"):
        assert secret not in dead.error

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/secret/path"
        unverified = http_request(url, timeout=5)
        assert unverified.status == 0 and "certificate" in unverified.error.lower()
        assert "/secret/path" not in unverified.error
        assert http_request(url, timeout=5, validate_certs=False).body == b"hello"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------------------
# 6. One free-space check, one margin
# ---------------------------------------------------------------------------------------------------------------
def float_literals(value: float) -> list[str]:
    """Files whose code (not their DOCUMENTATION) has the number ``value``; the backfill engine's growth factor
    (its own 1.2, no disk margin) aside."""
    found = []
    for folder in ("library", "module_utils"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name == "pgmigrate_batch.py":
                continue
            if any(isinstance(n, ast.Constant) and n.value == value and type(n.value) is float
                   for n in ast.walk(ast.parse(path.read_text()))):
                found.append(str(path.relative_to(ROOT)))
    return found


def test_free_space_has_one_definition_and_one_default_margin():
    from ansible.module_utils.pgmigrate_paths import DEFAULT_DISK_MARGIN

    assert [f.split(":")[0] for f in functions_named("free_space")] == ["module_utils/pgmigrate_paths.py"]
    assert functions_named("existing_parent") == []
    assert files_containing("statvfs") == [] and files_containing("disk_usage") == ["module_utils/pgmigrate_paths.py"]
    assert float_literals(1.2) == ["module_utils/pgmigrate_paths.py"], "a margin hard-coded again"
    for module in ("pg_backup", "pg_preflight"):
        text = (ROOT / "library" / f"{module}.py").read_text()
        assert "disk_margin=dict(type=\"float\", default=DEFAULT_DISK_MARGIN)" in text, module
        assert "free_space" in imported_from(f"library/{module}.py", "pgmigrate_paths"), module
        assert documented_options(module)["disk_margin"]["default"] == DEFAULT_DISK_MARGIN, module
    backup = yaml.safe_load((ROOT / "roles/backup/defaults/main.yml").read_text())
    plan = yaml.safe_load((ROOT / "roles/plan/defaults/main.yml").read_text())
    assert backup["backup_disk_margin"] == DEFAULT_DISK_MARGIN
    assert plan["plan_disk_margin"] == f"{{{{ backup_disk_margin | default({DEFAULT_DISK_MARGIN}) }}}}"
    estimate = yaml.safe_load((ROOT / "roles/plan/tasks/estimate.yml").read_text())
    preflight = next(t for t in estimate if "pg_preflight" in t)
    assert preflight["pg_preflight"]["disk_margin"] == "{{ plan_disk_margin | float }}"


def test_free_space_refuses_naming_path_bytes_margin_and_variable(tmp_path):
    import shutil

    from ansible.module_utils.pgmigrate_paths import DEFAULT_DISK_MARGIN, free_space

    target = tmp_path / "not" / "yet"
    free = shutil.disk_usage(tmp_path).free
    size = free  # x 1.5 cannot fit
    facts = free_space(str(target), size, 1.5, "backup_disk_margin")
    needed = int(size * 1.5)
    assert facts["enough"] is False and facts["needed_bytes"] == needed and facts["disk_margin"] == 1.5
    assert facts["measured_at"] == str(tmp_path.resolve()) and not target.exists()
    for part in (str(target), f"{needed} bytes", "x 1.5", "backup_disk_margin"):
        assert part in facts["problem"], part
    small = free_space(str(target), 1024)
    assert small["enough"] is True and small["problem"] is None
    assert small["disk_margin"] == DEFAULT_DISK_MARGIN and small["needed_bytes"] == int(1024 * DEFAULT_DISK_MARGIN)
    try:
        free_space(str(target), 1024, 0, "plan_disk_margin")
    except ValueError as exc:
        assert "plan_disk_margin" in str(exc)
    else:
        raise AssertionError("a zero margin was accepted")
