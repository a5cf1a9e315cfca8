"""A fleet of reference databases on two local PostgreSQL clusters, and its inventory (tests and
benchmarks/bench_fleet.py).  Every database is a copy of a small 1.0.0 template on its cluster; the
databases of the two clusters carry the same names, so that anything keyed only by the database name
(a file, a scratch database, a metrics label) would collide."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from conftest import ROOT, PgServer, alembic, seed

FLEET_TEMPLATE = "tmpl_fleet_small"


def small_template(pg: PgServer, predictions: int) -> str:
    """A 1.0.0 reference database with a few predictions, as a template on ``pg``'s cluster (made once)."""
    conn = pg.admin_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (FLEET_TEMPLATE,))
        exists = cur.fetchone() is not None
    conn.close()
    if not exists:
        pg.create_database(FLEET_TEMPLATE)
        alembic(pg, FLEET_TEMPLATE, "upgrade", "v1_0_0")
        seed(pg, FLEET_TEMPLATE, predictions, "--seed", "7")
    return FLEET_TEMPLATE


def make_fleet(servers: list[PgServer], count: int, prefix: str, predictions: int = 300) -> list[dict]:
    """``count`` databases spread round-robin over ``servers``: [{host, server, db}] in inventory order.
    Names repeat across servers (db index per server)."""
    for server in servers:
        small_template(server, predictions)
    fleet = []
    for i in range(count):
        server = servers[i % len(servers)]
        db = f"{prefix}_{i // len(servers) + 1}"
        server.drop_database(db)
        server.create_database(db, template=FLEET_TEMPLATE)
        fleet.append({"host": f"{prefix}_db{i + 1}", "server": server, "db": db})
    return fleet


def write_inventory(base: Path, fleet: list[dict], host_vars: dict | None = None, app_hosts: dict | None = None,
                    name: str = "inventory.yml") -> Path:
    """An inventory of the fleet: one pgmigrate_db host per database, its files under base/<kind>/<host>, and
    the application hosts ``app_hosts`` (none by default).
    The passwords are in this 0600 file (test-only; real inventories use ansible-vault)."""
    hosts = {}
    for member in fleet:
        server = member["server"]
        hosts[member["host"]] = {
            "pgmigrate_db_host": server.host, "pgmigrate_db_port": server.port, "pgmigrate_db_user": server.user,
            "pgmigrate_db_password": server.password, "pgmigrate_db_name": member["db"],
            **(host_vars or {}).get(member["host"], {})}
    per_host = "{{ inventory_hostname }}"
    inventory = {"all": {
        "children": {"pgmigrate_db": {"hosts": hosts}, "pgmigrate_app": {"hosts": app_hosts or {}}},
        "vars": {
            "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "pgmigrate_db_sslmode": "disable", "pgmigrate_environment": "test", "pgmigrate_app_url": "",
            "pgmigrate_plan_dir": str(ROOT / "migrations"),
            "pgmigrate_state_dir": f"{base}/state/{per_host}",
            "pgmigrate_backup_dir": f"{base}/backups/{per_host}",
            "pgmigrate_report_dir": f"{base}/reports/{per_host}",
            "pgmigrate_log_dir": f"{base}/logs/{per_host}",
            "pgmigrate_docs_dir": f"{base}/docs/{per_host}",
            "pgmigrate_fleet_report_dir": f"{base}/reports/fleet",
            "data_migrate_poll_interval": 1, "rehearse": "none",
        }}}
    base.mkdir(parents=True, exist_ok=True)
    path = base / name
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    path.chmod(0o600)
    return path


def fleet_report(base: Path, version: str = "2.0.0") -> dict:
    return json.loads((base / "reports" / "fleet" / version / "fleet_report.json").read_text())


RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+"
                      r"skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)


def recap(output: str) -> dict[str, dict]:
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "failed": int(m.group(5)),
                         "rescued": int(m.group(7))} for m in RECAP_RE.finditer(output)}
