"""fleet.yml (issue #15): a fleet of six databases on two local PostgreSQL clusters, canary first, then
in waves, through real ansible-playbook runs.  The databases of the two clusters carry the same names.
The broken input is test-only and outside the production code: one host's plan directory holds a plan
whose validation check fails."""
from __future__ import annotations

import copy
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pgcluster
import pytest
import yaml
from conftest import ROOT, PgServer
from conftest import run_playbook as _run_playbook
from deploy_helpers import build_releases, new_stack
from fleet_helpers import fleet_report, make_fleet, recap, write_inventory
from test_monitoring import dashboard_names
from test_report_flow import parse_prom
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
APP_HOST = "fleet_ok_app"


@pytest.fixture(scope="module")
def migrated_fleet(pg, pg2, tmp_path_factory):
    """Six databases and one shared application host: release 1.0.0 live behind nginx on blue (a real stack:
    nginx, supervisord, the release wheels), reading the canary's database. fleet.yml migrates the databases in
    waves, then deploys 2.0.0 on the application host once."""
    base = tmp_path_factory.mktemp("fleet-ok")
    fleet = make_fleet([pg, pg2], 6, "fleet_ok")
    stack = new_stack(base / "app", build_releases(base / "releases"))
    canary = fleet[0]
    app_vars = stack.variables(canary["server"], canary["db"])
    try:
        live = _run_playbook("playbooks/app_release.yml", base,
                             {**app_vars, "blue_green_release_version": "1.0.0", "blue_green_expect_revision": ""})
        assert live.rc == 0, live.output[-4000:]
        inventory = write_inventory(base, fleet, app_hosts={APP_HOST: app_vars})
        first = run_playbook("fleet.yml", base, inventory)
        yield {"base": base, "fleet": fleet, "inventory": inventory, "first": first, "stack": stack}
    finally:
        stack.stop()
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
        # Its own run metrics, labelled with its inventory host (the two clusters reuse database names).
        run_prom = parse_prom((base / "logs" / member["host"] / "metrics" / "pgmigrate_run.prom").read_text())
        assert {dict(labels)["database"] for name, labels in run_prom} == {member["host"]}
    md = (base / "reports" / "fleet" / "2.0.0" / "fleet_report.md").read_text()
    assert md.count("| succeeded |") == 6 and "v1_0_0 -> v2_0_0" in md
    # The databases' own deploy phase is the fleet's (skipped with the reason); the shared application host is
    # deployed once, after every database reached the target: 2.0.0 on green, reading the canary's v2_0_0.
    for member in fleet:
        deploy = state(member)[2][0][3]["deploy"]
        assert deploy["status"] == "skipped" and "once, after every database" in deploy["facts"]["reason"]
    assert report["application"]["status"] == "deployed", report["application"]
    assert report["application"]["hosts"] == [APP_HOST] and report["application"]["deployed"] == [APP_HOST]
    assert "Application hosts (pgmigrate_app): deployed next, one at a time: " + APP_HOST in text(first)
    stack = migrated_fleet["stack"]
    assert stack.health() == {"status": "ok", "version": "2.0.0", "colour": "green", "db_revision": "v2_0_0"}
    assert recap(first.output)[APP_HOST]["failed"] == 0
    programs_after_first(migrated_fleet)
    prom = (base / "reports" / "fleet" / "2.0.0" / "fleet.prom").read_text()
    for member in fleet:
        assert (f'pgmigrate_fleet_database_status{{version="2.0.0",environment="test",database="{member["host"]}",'
                f'status="succeeded"}} 1') in prom
        assert f'pgmigrate_fleet_database_rows_backfilled{{version="2.0.0",environment="test",' \
               f'database="{member["host"]}"}} 300' in prom
    # The dashboard's fleet panels read names this file carries, one series per database.
    written = {name for name, _ in parse_prom(prom)}
    fleet_names = {n for n in dashboard_names() if n.startswith("pgmigrate_fleet_")}
    assert fleet_names and fleet_names <= written, sorted(fleet_names - written)


def programs_after_first(migrated_fleet) -> dict:
    """supervisord's programs right after the first fleet run (read once, before the second)."""
    return migrated_fleet.setdefault("programs_after_first", migrated_fleet["stack"].programs())


def query_lock(member) -> int:
    from validate_helpers import query
    return query(member["server"], member["db"], "SELECT count(*) FROM migration_ops.lock")[0][0]


def test_a_second_fleet_run_changes_nothing(migrated_fleet):
    assert migrated_fleet["first"].rc == 0
    fleet, base = migrated_fleet["fleet"], migrated_fleet["base"]
    before = [state(m) for m in fleet]
    programs_after_first(migrated_fleet)
    second = run_playbook("fleet.yml", base, migrated_fleet["inventory"])
    assert second.rc == 0, second.output[-5000:]
    assert [state(m) for m in fleet] == before  # no new ledger run, same revision and content
    counts = recap(second.output)
    assert set(counts) == {m["host"] for m in fleet} | {APP_HOST}
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts
    # The application host was deployed again with the same release: nothing restarted, 2.0.0 still serves.
    stack = migrated_fleet["stack"]
    assert stack.health()["version"] == "2.0.0"
    running = {name: pid for name, (status, pid) in stack.programs().items() if status == "RUNNING"}
    assert running and running == {name: pid for name, (status, pid) in programs_after_first(migrated_fleet).items()
                                   if status == "RUNNING"}
    assert "already at the target of 2.0.0, skipped" in text(second)
    by_name = entries(base)
    for member, (_, _, ledger) in zip(fleet, before):
        entry = by_name[member["host"]]
        assert entry["status"] == "already_at_target" and entry["run"]["id"] == ledger[0][0]
        assert entry["run"]["status"] == "succeeded"


# ---------------------------------------------------------------------------------------------
# 1b. The preflight refuses a fleet whose hosts share a database or a directory, with nothing changed
# ---------------------------------------------------------------------------------------------
def test_the_preflight_refuses_two_hosts_of_one_database_or_one_backup_dir(pg, pg2, tmp_path):
    """Cheap: both runs stop in the canary's preflight, before any database is touched.  The colliding hosts are
    later ones, not the canary: every host checks the whole fleet."""
    fleet = make_fleet([pg, pg2], 3, "fleet_refuse")
    last = fleet[2]
    twin = {"host": "fleet_refuse_twin", "server": last["server"], "db": last["db"]}
    try:
        before = {m["host"]: state(m) for m in fleet}
        cases = [
            ("same-db.yml", write_inventory(tmp_path, fleet + [twin], name="same-db.yml"),
             f"{last['host']} and {twin['host']} are the same database "
             f"({last['server'].host}:{last['server'].port}:{last['db']})", "pgmigrate_db_name"),
            ("shared-backups.yml", write_inventory(tmp_path, fleet, {m["host"]: {"pgmigrate_backup_dir": str(
                tmp_path / "shared-backups")} for m in fleet[1:]}, name="shared-backups.yml"),
             f"{fleet[1]['host']} and {fleet[2]['host']} share their backup directory {tmp_path / 'shared-backups'}",
             "(pgmigrate_backup_dir)"),
        ]
        for name, inventory, refusal, variable in cases:
            res = run_playbook("fleet.yml", tmp_path, inventory)
            out = text(res)
            assert res.rc != 0, (name, out[-4000:])
            assert refusal in out and variable in out and "Nothing was changed." in out, (name, out[-4000:])
            assert set(recap(res.output)) == {fleet[0]["host"]}  # the canary's wave only, failed in its preflight
            assert {m["host"]: state(m) for m in fleet} == before  # no ledger, same revision and content
        assert not (tmp_path / "reports").exists() and not (tmp_path / "backups").exists()
        assert not (tmp_path / "shared-backups").exists()
    finally:
        for member in fleet:
            member["server"].drop_database(member["db"])


# ---------------------------------------------------------------------------------------------
# 2. One database of the second wave fails: the fleet stops, it is rolled back, the rest untouched
# ---------------------------------------------------------------------------------------------
def failing_plan_dir(base: Path) -> Path:
    """Test-only: the reference plan plus a validation check that fails, for one host only."""
    plan = copy.deepcopy(PLAN)
    plan["validation"]["checks"].append(FAILING_CHECK)
    plans = base / "broken-plans"
    plans.mkdir(parents=True, exist_ok=True)
    (plans / "2.0.0.yml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return plans


def test_a_failed_database_stops_the_fleet_and_is_rolled_back(pg, pg2, tmp_path):
    fleet = make_fleet([pg, pg2], 6, "fleet_bad")
    bad = fleet[1]  # the second wave: [1, "25%", "100%"] of six is [1], [1], [4]
    inventory = write_inventory(tmp_path, fleet, {bad["host"]: {"pgmigrate_plan_dir": str(failing_plan_dir(tmp_path))}})
    try:
        before = {m["host"]: state(m) for m in fleet}
        res = run_playbook("fleet.yml", tmp_path, inventory)
        out = text(res)
        assert res.rc != 0, out[-4000:]
        assert "The validate phase failed at" in out and "rollback_test_fails" in out
        assert f"The fleet stops after wave 2: 1 of its 1 database(s) failed ({bad['host']})" in out
        assert "Not started: " + ", ".join(sorted(m["host"] for m in fleet[2:])) in out
        # The canary migrated.
        rev, _, ledger = state(fleet[0])
        assert rev == "v2_0_0" and [r[2] for r in ledger] == ["succeeded"]
        # The failed one is rolled back by migrate.yml's own mechanism: as before, the run marked rolled_back.
        rev, sums, ledger = state(bad)
        assert (rev, sums) == before[bad["host"]][:2] and rev == "v1_0_0"
        (run_id, _, status, phases, _), rollback_run = ledger
        assert status == "rolled_back" and phases["validate"]["status"] == "failed"
        assert phases["rollback"]["status"] == "succeeded" and phases["rollback"]["facts"]["automatic"] is True
        assert rollback_run[1:3] == ("rollback", "succeeded")
        # The later databases never started: revision, checksums and (no) ledger unchanged.
        for member in fleet[2:]:
            assert state(member) == before[member["host"]]
            assert state(member)[2] is None
            assert not (tmp_path / "backups" / member["host"]).exists()
        # The fleet report says exactly this.
        report = fleet_report(tmp_path)
        by_name = entries(tmp_path)
        assert by_name[fleet[0]["host"]]["status"] == "succeeded"
        entry = by_name[bad["host"]]
        assert entry["status"] == "rolled_back" and entry["wave"] == 2 and entry["run"]["id"] == run_id
        assert entry["run"]["failed_phase"] == "validate"
        assert entry["run"]["rollback"]["status"] == "succeeded" and entry["run"]["rollback"]["automatic"] is True
        assert entry["run"]["rollback"]["revision_after"] == "v1_0_0"
        assert [by_name[m["host"]]["status"] for m in fleet[2:]] == ["not_started"] * 4
        assert {k: v for k, v in report["totals"].items() if v} == {"succeeded": 1, "rolled_back": 1,
                                                                     "not_started": 4}
        (stop,) = report["stopped"]
        assert (stop["wave"], stop["failed"], stop["max_fail_percentage"]) == (2, [bad["host"]], 0)
        assert stop["not_started"] == sorted(m["host"] for m in fleet[2:])
        md = (tmp_path / "reports" / "fleet" / "2.0.0" / "fleet_report.md").read_text()
        assert f"**The fleet stopped after wave 2**: 1 of 1 database(s) failed ({bad['host']})" in md
        assert f"| {bad['host']} | 2 | rolled back (validate phase failed) | v1_0_0 -> v2_0_0 | 300 |" in md
        assert "| rollback succeeded (automatic, restore; revision after: v1_0_0) |" in md
        assert md.count("| not started |") == 4
    finally:
        for member in fleet:
            member["server"].drop_database(member["db"])


# ---------------------------------------------------------------------------------------------
# 3. AWX job slicing: each slice is its own job over part of the inventory; one fleet report
# ---------------------------------------------------------------------------------------------
def test_sliced_fleet_jobs_write_one_fleet_report(pg, pg2, tmp_path):
    """The AWX fleet template slices its job; the slices run here one after another as AWX runs them (the
    template's extra_vars, each slice limited to its hosts, round-robin as AWX deals them out)."""
    assets = yaml.safe_load((ROOT / "awx" / "assets.yml").read_text())
    template, = [t for t in assets["job_templates"] if t["playbook"] == "fleet.yml"]
    slices = template["job_slice_count"]
    assert slices >= 2 and template["ask_limit_on_launch"] is True
    fixed = yaml.safe_load(template["extra_vars"])
    # The slices run in separate execution containers: the template points the fleet report at the documented
    # shared volume; here a directory all the slices share stands in for it.
    assert fixed["pgmigrate_fleet_report_dir"] == "/var/lib/pgmigrate/shared/fleet-reports"
    assert "`/var/lib/pgmigrate/shared/fleet-reports`" in (ROOT / "README.md").read_text()
    fixed["pgmigrate_fleet_report_dir"] = str(tmp_path / "reports" / "fleet")
    fleet = make_fleet([pg, pg2], 4, "fleet_slice")
    inventory = write_inventory(tmp_path, fleet)
    try:
        seen = []
        for number in range(slices):
            part = [m["host"] for m in fleet[number::slices]]
            res = _run_playbook("fleet.yml", tmp_path, {**fixed, "version": "2.0.0"}, "--limit", ",".join(part),
                                inventory=inventory, timeout=1800)
            (tmp_path / f"slice-{number + 1}.log").write_text(res.output)
            assert res.rc == 0, res.output[-4000:]
            assert set(recap(res.output)) == set(part)  # the slice touched only its own databases
            by_name = entries(tmp_path)
            # The report holds this slice's databases and keeps the earlier slices' entries as they were.
            assert all(seen_entry == by_name[name] for name, seen_entry in seen)
            seen += [(name, by_name[name]) for name in part]
            assert {by_name[name]["status"] for name in part} == {"succeeded"}
        report = fleet_report(tmp_path)
        assert {k: v for k, v in report["totals"].items() if v} == {"succeeded": 4} and report["stopped"] == []
        # No application host in this inventory: the fleet's single deploy after the waves is skipped, and said.
        assert report["application"]["status"] == "skipped" and report["application"]["hosts"] == []
        assert "pgmigrate_app group is empty" in report["application"]["reason"]
        assert len({e["invocation"] for e in report["databases"]}) == slices
        md = (tmp_path / "reports" / "fleet" / "2.0.0" / "fleet_report.md").read_text()
        assert "Application hosts (pgmigrate_app: none): **skipped**: the inventory has no application host" in md
        assert "Application hosts (pgmigrate_app): not deployed: the inventory has no application host" in " ".join(
            res.output.split())
        prom = (tmp_path / "reports" / "fleet" / "2.0.0" / "fleet.prom").read_text()
        for member in fleet:
            rev, _, ledger = state(member)
            entry = entries(tmp_path)[member["host"]]
            assert rev == "v2_0_0" and entry["run"]["id"] == ledger[0][0] and ledger[0][2] == "succeeded"
            assert f"| {member['host']} | " in md and f'database="{member["host"]}",status="succeeded"}} 1' in prom
    finally:
        for member in fleet:
            member["server"].drop_database(member["db"])


# ---------------------------------------------------------------------------------------------
# 4. kill -9 of the fleet in the canary's backfill: the next fleet run resumes it
# ---------------------------------------------------------------------------------------------
def test_an_interrupted_database_resumes_on_the_next_fleet_run(pg, pg2, tmp_path):
    import signal

    from backfill_helpers import wait_for_batches
    from conftest import VENV_BIN, ansible_env, write_vars
    from validate_helpers import query

    fleet = make_fleet([pg, pg2], 2, "fleet_kill")
    canary = fleet[0]
    plan = copy.deepcopy(PLAN)  # test-only: a slow backfill for the canary, to be killed in the middle
    plan["backfills"][0].update(batch_size=20, min_batch_size=20, max_batch_size=20, pause_ms=300)
    plans = tmp_path / "slow-plans"
    plans.mkdir()
    (plans / "2.0.0.yml").write_text(yaml.safe_dump(plan, sort_keys=False))
    inventory = write_inventory(tmp_path, fleet, {canary["host"]: {"pgmigrate_plan_dir": str(plans)}})
    name = PLAN["backfills"][0]["name"]
    try:
        with (tmp_path / "killed.log").open("w") as out:
            proc = subprocess.Popen([str(VENV_BIN / "ansible-playbook"), str(ROOT / "fleet.yml"), "-i", str(inventory),
                                     "-e", "@" + str(write_vars(tmp_path, {"version": "2.0.0"}))],
                                    cwd=ROOT, env=ansible_env(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                wait_for_batches(canary["server"], canary["db"], name, 3, timeout=600)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert entries(tmp_path)[canary["host"]]["status"] == "running"
        assert state(fleet[1])[2] is None  # the second database had not started
        # While the orphaned backfill still works its run is live and refused; it stops by itself at a batch
        # boundary, then the stale lock is broken as for migrate.yml and the canary resumes.
        deadline = time.monotonic() + 300
        while True:
            res = _run_playbook("fleet.yml", tmp_path, {"version": "2.0.0", "break_lock": True},
                                inventory=inventory, timeout=1800)
            (tmp_path / f"rerun-{time.monotonic_ns()}.log").write_text(res.output)
            if res.rc == 0 or "is still live" not in text(res) or time.monotonic() > deadline:
                break
        assert res.rc == 0, res.output[-4000:]
        ledger = state(canary)[2]
        assert [r[2] for r in ledger] == ["failed", "succeeded"] and "lock broken" in (ledger[0][4] or "")
        resumed = ledger[1][3]["data"]["facts"]["rows_updated"]
        assert 0 < resumed < 300  # the rows the killed run had committed were not done again
        assert query(canary["server"], canary["db"], "SELECT count(*) FILTER (WHERE feature_importance IS NULL) "
                                                     "FROM predictions")[0][0] == 0
        by_name = entries(tmp_path)
        assert by_name[canary["host"]]["status"] == "succeeded" and by_name[canary["host"]]["run"]["id"] == ledger[1][0]
        assert by_name[fleet[1]["host"]]["status"] == "succeeded" and state(fleet[1])[0] == "v2_0_0"
    finally:
        for member in fleet:
            member["server"].drop_database(member["db"])


# ---------------------------------------------------------------------------------------------
# 5. A wave whose other databases succeed: they finish, and the threshold still stops the fleet
# ---------------------------------------------------------------------------------------------
def test_a_wave_past_the_threshold_finishes_its_healthy_databases_then_stops(pg, pg2, tmp_path):
    """Waves [1], [2], [2]: the second wave's first database fails, its second one migrates to the end (never
    sent down the failure path), and with max_fail_percentage 0 the third wave never starts.  Rerun with
    max_fail_percentage 50, the same failure is within the threshold: the fleet goes on.  The inventory has an
    application host: never deployed, as the databases are never all at the target."""
    fleet = make_fleet([pg, pg2], 5, "fleet_half")
    bad, good = fleet[1], fleet[2]
    inventory = write_inventory(tmp_path, fleet, {bad["host"]: {"pgmigrate_plan_dir": str(failing_plan_dir(tmp_path))}},
                                app_hosts={"fleet_half_app": {"pgmigrate_app_url": "http://127.0.0.1:9/"}})
    try:
        before = {m["host"]: state(m) for m in fleet}
        res = _run_playbook("fleet.yml", tmp_path, {"version": "2.0.0", "pgmigrate_fleet_serial": "1,2,100%",
                                                    "pgmigrate_fleet_max_fail_percentage": 0},
                            inventory=inventory, timeout=1800)
        (tmp_path / "fleet.log").write_text(res.output)
        out = text(res)
        assert res.rc != 0, out[-4000:]
        assert f"The fleet stops after wave 2: 1 of its 2 database(s) failed ({bad['host']})" in out
        counts = recap(res.output)
        app = counts.pop("fleet_half_app")  # it only found the databases behind: nothing changed, nothing failed
        assert (app["changed"], app["failed"]) == (0, 0)
        assert set(counts) == {m["host"] for m in fleet[:3]}  # the third wave never started
        assert counts[bad["host"]]["failed"] == 1 and counts[good["host"]]["failed"] == 0
        assert state(bad)[:2] == before[bad["host"]][:2] and state(bad)[2][0][2] == "rolled_back"
        rev, _, ledger = state(good)
        assert rev == "v2_0_0" and [r[2] for r in ledger] == ["succeeded"]
        assert "rollback" not in ledger[0][3]
        for member in fleet[3:]:
            assert state(member) == before[member["host"]]
        by_name = entries(tmp_path)
        assert [by_name[m["host"]]["status"] for m in fleet] == ["succeeded", "rolled_back", "succeeded",
                                                                 "not_started", "not_started"]
        (stop,) = fleet_report(tmp_path)["stopped"]
        assert (stop["wave"], stop["wave_size"], stop["failed"]) == (2, 2, [bad["host"]])
        assert stop["not_started"] == [m["host"] for m in fleet[3:]]
        behind = ", ".join([bad["host"]] + [m["host"] for m in fleet[3:]])
        assert fleet_report(tmp_path)["application"] == {**fleet_report(tmp_path)["application"], "status": "skipped",
                                                         "hosts": ["fleet_half_app"], "deployed": [],
                                                         "reason": f"not every database is at the target ({behind})"}
        assert "Application hosts (pgmigrate_app): not deployed: not every database is at the target" in out

        # The rerun, 50 %: wave 2 is the failing database (rolled back again) and the one already at the target,
        # 1 of 2 failed is within the threshold, so the third wave migrates.
        res = _run_playbook("fleet.yml", tmp_path, {"version": "2.0.0", "pgmigrate_fleet_serial": "1,2,100%",
                                                    "pgmigrate_fleet_max_fail_percentage": 50},
                            inventory=inventory, timeout=1800)
        (tmp_path / "fleet-50.log").write_text(res.output)
        out = text(res)
        assert res.rc != 0, out[-4000:]  # a database failed: the run says so, though the fleet went on
        assert "The fleet stops after wave" not in out
        counts = recap(res.output)
        assert set(counts) == {m["host"] for m in fleet} | {"fleet_half_app"}
        assert [h for h, c in counts.items() if c["failed"]] == [bad["host"]]
        assert state(bad)[:2] == before[bad["host"]][:2] and [r[2] for r in state(bad)[2]][-2:] == [
            "rolled_back", "succeeded"] and len(state(bad)[2]) == 4  # two runs, each with its rollback run
        for member in fleet[3:]:
            rev, _, ledger = state(member)
            assert rev == "v2_0_0" and [r[2] for r in ledger] == ["succeeded"]
        report = fleet_report(tmp_path)
        by_name = {e["name"]: e for e in report["databases"]}
        assert [by_name[m["host"]]["status"] for m in fleet] == ["already_at_target", "rolled_back",
                                                                 "already_at_target", "succeeded", "succeeded"]
        assert report["stopped"] == []
        (went_on,) = report["continued"]
        assert (went_on["wave"], went_on["wave_size"], went_on["failed"], went_on["max_fail_percentage"]) == (
            2, 2, [bad["host"]], 50)
        md = (tmp_path / "reports" / "fleet" / "2.0.0" / "fleet_report.md").read_text()
        assert (f"Wave 2: 1 of 2 database(s) failed ({bad['host']}), within pgmigrate_fleet_max_fail_percentage=50%:"
                " the fleet went on.") in md and "The fleet stopped" not in md
        assert report["application"]["status"] == "skipped" and report["application"]["reason"] == (
            f"not every database is at the target ({bad['host']})")
    finally:
        for member in fleet:
            member["server"].drop_database(member["db"])


def test_check_mode_changes_no_database_and_writes_no_report(pg, pg2, tmp_path):
    fleet = make_fleet([pg, pg2], 2, "fleet_check")
    inventory = write_inventory(tmp_path, fleet)
    try:
        before = [state(m) for m in fleet]
        res = _run_playbook("fleet.yml", tmp_path, {"version": "2.0.0"}, "--check", inventory=inventory,
                            timeout=1800)
        (tmp_path / "check.log").write_text(res.output)
        assert res.rc == 0, res.output[-4000:]
        assert "Fleet report: not written (check mode)" in text(res)
        assert [state(m) for m in fleet] == before
        assert not (tmp_path / "reports").exists() and not (tmp_path / "backups").exists()
    finally:
        for member in fleet:
            member["server"].drop_database(member["db"])
