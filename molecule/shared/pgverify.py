"""testinfra helpers: query a scenario's throw-away PostgreSQL (molecule/shared/create.yml)."""
from __future__ import annotations

import os


def state_dir() -> str:
    return f"/tmp/pgmigrate-molecule-{os.environ['MOLECULE_SCENARIO_NAME']}"


def psql(host, query: str, db: str = "football_prediction") -> str:
    """Run one query as the scenario's owner role; the port comes from the scenario's inventory.

    testinfra quotes every argument; the password stays in a file and the environment."""
    port = host.ansible.get_variables()["pgmigrate_db_port"]
    cmd = host.run("PGPASSWORD=$(cat %s) psql -X -At -h 127.0.0.1 -p %s -U football -d %s -c %s",
                   f"{state_dir()}/secrets/football.password", str(port), db, query)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()
