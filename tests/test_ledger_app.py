"""The second reference shape: the ledger test application (tests/fixtures/ledger_app).

Unlike the football app, its env.py builds its own URL from its own settings (LEDGER_DB_*, pydantic-settings),
it runs in its own virtualenv with SQLAlchemy < 2.1 (the control node has 2.1), and its tables have a text
and a composite primary key.  The modules and roles reach it through ``python`` / ``schema_migrate_python``
and ``environment`` / ``schema_migrate_environment``.
"""
from __future__ import annotations

import subprocess

import pytest
from app_venv import app_venv
from conftest import ROOT, conn_args, query, run_module, run_playbook
from psycopg2 import sql

LEDGER = ROOT / "tests" / "fixtures" / "ledger_app"
ACCOUNTS, ENTRIES_PER_ACCOUNT = 40, 5


@pytest.fixture(scope="session")
def ledger_venv():
    return app_venv(LEDGER / "requirements.txt")


def ledger_settings(pg, db: str) -> dict:
    return {"LEDGER_DB_HOST": pg.host, "LEDGER_DB_PORT": str(pg.port), "LEDGER_DB_USER": pg.user,
            "LEDGER_DB_PASSWORD": pg.password, "LEDGER_DB_NAME": db}


def ledger_args(pg, db: str, venv, **extra) -> dict:
    return {**conn_args(pg, db), "project_dir": str(LEDGER), "python": str(venv),
            "environment": ledger_settings(pg, db), **extra}


def ledger_alembic(pg, db: str, venv, *args: str) -> subprocess.CompletedProcess:
    """The application's own Alembic command line, in its virtualenv, with its settings."""
    return subprocess.run([str(venv / "bin" / "alembic"), "-c", str(LEDGER / "alembic.ini"), *args],
                          env={**pg.env(), **ledger_settings(pg, db)}, capture_output=True, text=True, check=True,
                          cwd=LEDGER)


@pytest.fixture(scope="session")
def ledger_template(pg, ledger_venv):
    """The ledger database at l1_base with a few accounts (text key) and entries (composite key)."""
    name = pg.create_database()
    ledger_alembic(pg, name, ledger_venv, "upgrade", "l1_base")
    query(pg, name, """
        INSERT INTO accounts (code, name, currency)
             SELECT 'acc-' || lpad(i::text, 3, '0'), 'Account ' || i, (ARRAY['EUR', 'USD', 'GBP'])[1 + i %% 3]
               FROM generate_series(1, %s) i""", (ACCOUNTS,))
    query(pg, name, """
        INSERT INTO entries (account_code, entry_no, amount_cents, note)
             SELECT a.code, n, (n * 1234 + length(a.code)) * CASE WHEN n %% 2 = 0 THEN -1 ELSE 1 END, 'entry ' || n
               FROM accounts a, generate_series(1, %s) n""", (ENTRIES_PER_ACCOUNT,))
    return name


@pytest.fixture
def ledger_db(pg, ledger_template):
    name = pg.create_database(template=ledger_template)
    yield name
    pg.drop_database(name)


def snapshot(pg, db: str) -> list:
    """The catalog and the content of the application's tables: what 'nothing changed' compares."""
    rows = query(pg, db, """SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text FROM pg_class c
                             JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1""")
    for table in ("accounts", "entries", "alembic_version"):
        rows += query(pg, db, sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {} t")
                      .format(sql.Identifier(table)))
    return rows


def revision(pg, db):
    rows = query(pg, db, "SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


def columns(pg, db):
    return query(pg, db, """SELECT table_name, column_name FROM information_schema.columns
                             WHERE table_schema = 'public' ORDER BY 1, 2""")


def test_the_applications_python_and_settings_migrate_it(pg, ledger_db, ledger_venv, tmp_path):
    before = columns(pg, ledger_db)
    preview = run_module("alembic_migrate", ledger_args(pg, ledger_db, ledger_venv, revision="l2_amounts"),
                         tmp_path, check=True, diff=True)
    assert preview.get("failed") is not True, preview.get("msg")
    assert preview["changed"] is True and "ALTER TABLE entries ADD COLUMN amount NUMERIC(14, 2)" in preview["sql"]
    assert "CREATE INDEX ix_entries_amount" in preview["diff"]["prepared"]
    assert revision(pg, ledger_db) == "l1_base" and columns(pg, ledger_db) == before

    up = run_module("alembic_migrate", ledger_args(pg, ledger_db, ledger_venv, revision="l2_amounts"), tmp_path)
    assert up.get("failed") is not True, up.get("msg")
    assert up["changed"] is True and up["revisions_applied"] == ["l2_amounts"]
    assert revision(pg, ledger_db) == "l2_amounts"
    again = run_module("alembic_migrate", ledger_args(pg, ledger_db, ledger_venv, revision="l2_amounts"), tmp_path)
    assert again["changed"] is False
    # The settings are secrets: the password never reaches the output.
    assert pg.password not in up["_output"] + preview["_output"] + again["_output"]
    assert "[DEPRECATION WARNING]" not in up["_output"] + preview["_output"]


def test_a_missing_module_fails_check_mode_with_the_install_hint(pg, ledger_db, tmp_path):
    """The module's own Python has no pydantic: check mode fails (it used to say 'would upgrade' with a
    warning), names the missing module and the Python to install it into, and changes nothing."""
    args = {**conn_args(pg, ledger_db), "project_dir": str(LEDGER), "revision": "l2_amounts"}
    for check in (True, False):
        res = run_module("alembic_migrate", args, tmp_path, check=check)
        assert res.get("failed") is True, res.get("msg")
        assert "ModuleNotFoundError" in res["msg"] and "pydantic is not installed for" in res["msg"]
        assert "schema_migrate_python" in res["msg"] and "Fix the migration script" not in res["msg"]
        assert "[DEPRECATION WARNING]" not in res["_output"]
    assert revision(pg, ledger_db) == "l1_base"


@pytest.mark.parametrize("settings, what", [
    ({"LEDGER_DB_PORT": "not-a-port"}, "db_port"),
    ({"LEDGER_DB_NAME": None}, "db_name"),
])
def test_a_bad_settings_variable_says_so_and_changes_nothing(pg, ledger_db, ledger_venv, tmp_path, settings, what):
    env = {k: v for k, v in {**ledger_settings(pg, ledger_db), **settings}.items() if v is not None}
    before = columns(pg, ledger_db)
    for check in (True, False):
        res = run_module("alembic_migrate", ledger_args(pg, ledger_db, ledger_venv, revision="l2_amounts",
                                                        environment=env), tmp_path, check=check)
        assert res.get("failed") is True, res.get("msg")
        assert "the application's settings did not load (ValidationError)" in res["msg"] and what in res["msg"]
        assert "schema_migrate_environment" in res["msg"] and "Fix the migration script" not in res["msg"]
        assert pg.password not in res["_output"]
    assert revision(pg, ledger_db) == "l1_base" and columns(pg, ledger_db) == before


def test_a_python_that_is_not_there_is_refused(pg, ledger_db, tmp_path):
    res = run_module("alembic_migrate", ledger_args(pg, ledger_db, tmp_path / "no-venv", revision="l2_amounts"),
                     tmp_path)
    assert res.get("failed") is True
    assert f"python: {tmp_path / 'no-venv'} is not an executable file" in res["msg"]
    assert "schema_migrate_python" in res["msg"] and revision(pg, ledger_db) == "l1_base"


# ---------------------------------------------------------------------------------
# The roles and playbooks on the ledger application
# ---------------------------------------------------------------------------------
def ledger_vars(pg, db: str, venv, **extra) -> dict:
    """The schema phase pointed at the ledger app: its plan, its Python, its settings (the database name follows
    pgmigrate_db_conn: the target, the backup's copy or the cycle's scratch database)."""
    settings = {**ledger_settings(pg, db), "LEDGER_DB_NAME": "{{ pgmigrate_db_conn.login_db }}"}
    return {**pg.conn_vars(db), "version": "2.0.0", "pgmigrate_plan_dir": str(LEDGER / "migrations"),
            "schema_migrate_python": str(venv), "schema_migrate_environment": settings, **extra}


def test_schema_phase_check_mode_shows_the_sql_and_changes_nothing(pg, ledger_db, ledger_venv, tmp_path):
    before = columns(pg, ledger_db)
    res = run_playbook("playbooks/schema.yml", tmp_path, ledger_vars(pg, ledger_db, ledger_venv), "--check", "--diff")
    assert res.rc == 0, res.output[-3000:]
    assert "ALTER TABLE entries ADD COLUMN amount NUMERIC(14, 2)" in res.output
    assert "would upgrade l1_base -> l2_amounts" in res.output
    assert revision(pg, ledger_db) == "l1_base" and columns(pg, ledger_db) == before
    assert pg.password not in res.output


def test_schema_phase_with_a_bad_settings_variable_fails_clearly(pg, ledger_db, ledger_venv, tmp_path):
    variables = ledger_vars(pg, ledger_db, ledger_venv)
    variables["schema_migrate_environment"]["LEDGER_DB_PORT"] = "fivefourthreetwo"
    before = columns(pg, ledger_db)
    for args in (("--check",), ()):
        res = run_playbook("playbooks/schema.yml", tmp_path, variables, *args)
        assert res.rc != 0
        out = " ".join(res.output.split())
        assert "the application's settings did not load (ValidationError)" in out and "db_port" in out
        assert "schema_migrate_environment" in out and "Fix the migration script" not in out
        assert pg.password not in res.output
    assert revision(pg, ledger_db) == "l1_base" and columns(pg, ledger_db) == before


def test_cycle_stops_at_the_lowest_reversible_revision(pg, ledger_db, ledger_venv, tmp_path):
    """l1_base (the baseline) cannot be downgraded: with schema_migrate_cycle_lowest the cycle never goes below
    it, runs in the app's Python with settings pointed at the scratch database, and leaves the target alone."""
    before = columns(pg, ledger_db)
    res = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                       ledger_vars(pg, ledger_db, ledger_venv, schema_migrate_cycle_lowest="l1_base"))
    assert res.rc == 0, res.output[-3000:]
    for line in ("1. migrate to l1_base: base -> l1_base ok", "2. upgrade +1: l1_base -> l2_amounts ok",
                 "3. downgrade -1: l2_amounts -> l1_base ok", "4. upgrade head: l1_base -> l3_audit ok",
                 "5. downgrade l1_base: l3_audit -> l1_base ok", "6. upgrade head again: l1_base -> l3_audit ok"):
        assert line in res.output
    assert revision(pg, ledger_db) == "l1_base" and columns(pg, ledger_db) == before
    assert query(pg, ledger_db, "SELECT count(*) FROM pg_database WHERE datname = %s",
                 (f"{ledger_db}_schema_cycle",)) == [(0,)]


def test_cycle_checks_the_alembic_dir_before_creating_anything(pg, ledger_db, ledger_venv, tmp_path):
    """A relative alembic_dir starts at the project directory; a wrong one is named, resolved, with the variable to
    set, before the scratch database is touched (a kept one from an earlier test stays as it was)."""
    kept = pg.create_database(f"{ledger_db}_schema_cycle")
    query(pg, kept, "CREATE TABLE inspect_me (x int)")
    try:
        res = run_playbook("playbooks/schema_cycle.yml", tmp_path,
                           ledger_vars(pg, ledger_db, ledger_venv, schema_migrate_alembic_dir="tests/fixtures/nope"))
        assert res.rc != 0
        out = " ".join(res.output.split())
        assert f"No Alembic project at {ROOT}/tests/fixtures/nope" in out
        assert "schema_migrate_alembic_dir" in out and "schema_migrate_project_dir" in out
        assert query(pg, kept, "SELECT count(*) FROM inspect_me") == [(0,)]
    finally:
        pg.drop_database(kept)


def test_the_whole_flow_runs_on_the_ledger_app(pg, ledger_db, ledger_venv, tmp_path):
    """migrate.yml on the second application: plan, backup (proven and rehearsed on the copy with the app's
    Python and settings), schema, data (a SQL backfill over a composite key, a Python one over a text key),
    validate and report; check mode first changes nothing and shows the SQL."""
    from test_migrate_flow import flow_vars

    variables = {**flow_vars(pg, ledger_db, tmp_path), **ledger_vars(pg, ledger_db, ledger_venv)}
    before = snapshot(pg, ledger_db)
    check = run_playbook("migrate.yml", tmp_path, variables, "--check", "--diff")
    assert check.rc == 0, check.output[-3000:]
    assert "ALTER TABLE entries ADD COLUMN amount NUMERIC(14, 2)" in check.output
    assert snapshot(pg, ledger_db) == before

    res = run_playbook("migrate.yml", tmp_path, variables)
    assert res.rc == 0, res.output[-5000:]
    assert pg.password not in res.output
    assert revision(pg, ledger_db) == "l2_amounts"
    assert query(pg, ledger_db, "SELECT count(*), count(amount) FROM entries") == [
        (ACCOUNTS * ENTRIES_PER_ACCOUNT, ACCOUNTS * ENTRIES_PER_ACCOUNT)]
    assert query(pg, ledger_db, "SELECT count(*) FROM entries WHERE amount * 100 <> amount_cents") == [(0,)]
    assert query(pg, ledger_db, "SELECT label FROM accounts WHERE code = 'acc-001'") == [("ACC-001 - Account 1 (USD)",)]
    assert query(pg, ledger_db, "SELECT count(*) FROM accounts WHERE label IS NULL") == [(0,)]
    assert query(pg, ledger_db, "SELECT status, from_revision, to_revision FROM migration_ops.runs") == [
        ("succeeded", "l1_base", "l2_amounts")]
    reports = list((tmp_path / "reports").rglob("migration_report_*-run1.md"))
    assert reports, "no report was written"
    assert "entries_amount" in reports[0].read_text()
    out = " ".join(res.output.split())
    # What an operator follows: the backup's proof, each backfill's end with its measured rate, the outcome.
    assert "Backup verified: " in out and "counts and checksums equal the manifest" in out
    assert "done: 200 of ~200 rows (100.0 %)" in out and "ETA ? s" not in out
    assert "rows/s measured" in out
    total = ACCOUNTS * ENTRIES_PER_ACCOUNT + ACCOUNTS
    for line in ("Migration 1.0.0 -> 2.0.0 (run #1): succeeded", "Schema: l1_base -> l2_amounts",
                 f"Data: {total:,} row(s) backfilled (entries_amount, accounts_label)", "Backup: proven by a restore",
                 f"Report: {reports[0]}"):
        assert line in out, line
