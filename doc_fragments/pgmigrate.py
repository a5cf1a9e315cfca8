# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """Connection options shared by every pgmigrate-ops database module."""

    DOCUMENTATION = r'''
options:
  login_host:
    description:
      - Host of the PostgreSQL server. Unset means libpq's default (C(PGHOST), then the local socket).
    type: str
  login_port:
    description:
      - Port of the PostgreSQL server. Unset means libpq's default (C(PGPORT), then 5432).
    type: int
  login_user:
    description:
      - Role to connect as. Unset means libpq's default (C(PGUSER), then the OS user).
    type: str
  login_password:
    description:
      - Password of O(login_user). Never logged. Unset means libpq looks at C(PGPASSWORD) and C(~/.pgpass).
      - Keep it in ansible-vault; never pass it with C(-e) on the command line.
    type: str
  login_db:
    description:
      - Database to connect to (the migration target).
    type: str
    aliases: [db, database]
  ssl_mode:
    description:
      - libpq C(sslmode).
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - CA certificate file to verify the server with (libpq C(sslrootcert)).
    type: path
    aliases: [ssl_rootcert]
  connect_timeout:
    description:
      - Seconds to wait for the connection.
    type: int
    default: 10
  ops_schema:
    description:
      - Schema in the target database where pgmigrate-ops keeps its run ledger, lock and checkpoints.
    type: str
    default: migration_ops
requirements:
  - psycopg2 >= 2.8 on the host that runs the module
notes:
  - Identifiers are quoted with C(psycopg2.sql.Identifier); values are always bound parameters.
'''
