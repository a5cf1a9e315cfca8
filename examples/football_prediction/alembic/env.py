"""Alembic environment for the Football Prediction System.

Connection: ``DATABASE_URL`` (an SQLAlchemy URL) when set, otherwise a bare
``postgresql+psycopg2://`` so that libpq reads the standard PG* environment
variables (and ~/.pgpass); a password never has to appear on a command line.

Options (``-x name=value``):

* ``lock_timeout``, ``statement_timeout``: PostgreSQL durations (``2s``,
  ``500ms``, ``1min``, ``0``) applied with ``SET`` before the first migration,
  online and in the ``--sql`` script alike.

The whole upgrade or downgrade runs in ONE transaction (PostgreSQL has
transactional DDL): a failure part-way leaves the schema where it started.
"""
from __future__ import annotations

import os
import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

BARE_LIBPQ_URL = "postgresql+psycopg2://"
TIMEOUT_SETTINGS = ("lock_timeout", "statement_timeout")
DURATION = re.compile(r"^\d+(\.\d+)?\s*(us|ms|s|min|h|d)?$")

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url") or BARE_LIBPQ_URL


def timeout_statements() -> list[str]:
    """``SET`` statements for the timeouts given with ``-x``; a bad value stops before any change."""
    x_args = context.get_x_argument(as_dictionary=True)
    statements = []
    for name in TIMEOUT_SETTINGS:
        value = x_args.get(name)
        if value is None or value == "":
            continue
        value = value.strip()
        if not DURATION.match(value):
            raise SystemExit(
                f"invalid -x {name}={value!r}: use a PostgreSQL duration such as 2s, 500ms, 1min or 0"
            )
        # The value is validated above, so quoting it as a literal is safe.
        statements.append(f"SET {name} = '{value}'")
    return statements


def run_migrations(**configure_kwargs) -> None:
    settings = timeout_statements()
    context.configure(transaction_per_migration=False, transactional_ddl=True, **configure_kwargs)
    with context.begin_transaction():
        for statement in settings:
            context.execute(statement)
        context.run_migrations()


def run_migrations_offline() -> None:
    run_migrations(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})


def run_migrations_online() -> None:
    timeout_statements()  # fail on a bad -x value before connecting
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run_migrations(connection=connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
