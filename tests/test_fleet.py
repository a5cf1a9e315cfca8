"""fleet.yml (issue #15): a fleet of six databases on two local PostgreSQL clusters, canary first, then
in waves, through real ansible-playbook runs.  The databases of the two clusters carry the same names.
The broken input is test-only and outside the production code: one host's plan directory holds a plan
whose validation check fails."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pgcluster
import pytest
import yaml
from conftest import ROOT, PgServer
from conftest import run_playbook as _run_playbook
from fleet_helpers import fleet_report, make_fleet, recap, write_inventory
from test_rollback import FAILING_CHECK, checksums, revision, runs

PLAN = yaml.safe_load((ROOT / "migrations" / "2.0.0.yml").read_text())
FAILED = ("failed", "rolled_back", "rollback_failed")


def run_playbook(playbook, base: Path, inventory: Path, *args, **kwargs):
    res = _run_playbook(playbook, base, {"version": "2.0.0"}, *args, inventory=inventory, timeout=1800, **kwargs)
    (base / f"run-{time.monotonic_ns()}-{Path(playbook).stem}.log").write_text(res.output)
    return res


def text(res) -> str:
    return " ".join(res.output.split()).replace("''", "'")


@pytest.fixture(scope="module")
def pg2(pg):
    """A second PostgreSQL cluster on loopback, with the same owner and password as the session's."""
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-fleet-"))
    os.chmod(base, 0o755)
    cluster = pgcluster.Cluster(base / "pg", pgcluster.free_port())
    cluster.init()
    cluster.start()
    cluster.ensure_database("pgmigrate_test", pg.user, pg.password)
    try:
        yield PgServer(cluster=cluster, host="127.0.0.1", port=cluster.port, user=pg.user, password=pg.password)
    finally:
        cluster.stop("immediate")
        subprocess.run(["rm", "-rf", str(base)], check=False)


def state(member) -> tuple:
    """Alembic revision, table checksums and the ledger of one database (None before any run)."""
    server, db = member["server"], member["db"]
    from validate_helpers import query
    has_ledger = query(server, db, "SELECT to_regclass('migration_ops.runs') IS NOT NULL")[0][0]
    return revision(server, db), checksums(server, db), runs(server, db) if has_ledger else None


def entries(base: Path) -> dict:
    return {e["name"]: e for e in fleet_report(base)["databases"]}


# ---------------------------------------------------------------------------------------------
# 1. The default waves migrate the fleet; the rerun changes nothing
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def migrated_fleet(pg, pg2, tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet-ok")
    fleet = make_fleet([pg, pg2], 6, "fleet_ok")
    inventory = write_inventory(base, fleet)
    first = run_playbook("fleet.yml", base, inventory)
    yield {"base": base, "fleet": fleet, "inventory": inventory, "first": first}
    for member in fleet:
        member["server"].drop_database(member["db"])


def test_the_fleet_migrates_canary_first_then_in_waves(migrated_fleet):
    first, fleet, base = migrated_fleet["first"], migrated_fleet["fleet"], migrated_fleet["base"]
    assert first.rc == 0, first.output[-5000:]
    report = fleet_report(base)
    assert report["totals"]["succeeded"] == 6 and report["stopped"] == []
    by_name = entries(base)
    # [1, "25%", "100%"] of six databases: the canary alone, one, then the other four.
    assert [by_name[m["host"]]["wave"] for m in fleet] == [1, 2, 3, 3, 3, 3]
    canary_end = by_name[fleet[0]["host"]]["updated_at"]
    assert all(by_name[m["host"]]["started_at"] >= canary_end for m in fleet[1:])
    for member in fleet:
        rev, _, ledger = state(member)
        assert rev == "v2_0_0"
        (run_id, kind, status, phases, _), = ledger
        entry = by_name[member["host"]]
        # The ledger and the fleet report agree, database by database.
        assert (kind, status) == ("migrate", "succeeded")
        assert entry["status"] == "succeeded" and entry["run"]["id"] == run_id
        assert (entry["run"]["from_revision"], entry["run"]["to_revision"]) == ("v1_0_0", "v2_0_0")
        assert entry["run"]["rows_backfilled"] == phases["data"]["facts"]["rows_updated"] == 300
        assert entry["run"]["backup"]["verified"] is True
        backup = Path(entry["run"]["backup"]["path"])
        assert backup.exists() and backup.parent == base / "backups" / member["host"]
        # Its own report, in its own directory.
        md = sorted((base / "reports" / member["host"] / "2.0.0").glob("migration_report_*.md"))
        assert len(md) == 1 and "Outcome: **succeeded**" in md[0].read_text()
        assert query_lock(member) == 0
    md = (base / "reports" / "fleet" / "2.0.0" / "fleet_report.md").read_text()
    assert md.count("| succeeded |") == 6 and "v1_0_0 -> v2_0_0" in md
    prom = (base / "reports" / "fleet" / "2.0.0" / "fleet.prom").read_text()
    for member in fleet:
        assert (f'pgmigrate_fleet_database_status{{version="2.0.0",environment="test",database="{member["host"]}",'
                f'status="succeeded"}} 1') in prom
        assert f'pgmigrate_fleet_database_rows_backfilled{{version="2.0.0",environment="test",' \
               f'database="{member["host"]}"}} 300' in prom


def query_lock(member) -> int:
    from validate_helpers import query
    return query(member["server"], member["db"], "SELECT count(*) FROM migration_ops.lock")[0][0]


def test_a_second_fleet_run_changes_nothing(migrated_fleet):
    assert migrated_fleet["first"].rc == 0
    fleet, base = migrated_fleet["fleet"], migrated_fleet["base"]
    before = [state(m) for m in fleet]
    second = run_playbook("fleet.yml", base, migrated_fleet["inventory"])
    assert second.rc == 0, second.output[-5000:]
    assert [state(m) for m in fleet] == before  # no new ledger run, same revision and content
    counts = recap(second.output)
    assert set(counts) == {m["host"] for m in fleet}
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts
    assert "already at the target of 2.0.0, skipped" in text(second)
    by_name = entries(base)
    for member, (_, _, ledger) in zip(fleet, before):
        entry = by_name[member["host"]]
        assert entry["status"] == "already_at_target" and entry["run"]["id"] == ledger[0][0]
        assert entry["run"]["status"] == "succeeded"
