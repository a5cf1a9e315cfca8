"""The deploy phase for real: release wheels, nginx and supervisord under a temporary state
directory on free loopback ports, the reference database, and a bounded request loop through
nginx across each switch."""
from __future__ import annotations

import os

import pytest
import yaml
from conftest import ROOT, alembic, run_playbook
from deploy_helpers import build_release, config_digest, install_broken_release, install_release, new_stack
from test_migrate_flow import flow_vars, snapshot
from traffic import Traffic
from validate_helpers import query

APP_PLAYBOOK = ROOT / "playbooks" / "app_release.yml"
SWITCH_BACK = ROOT / "tests" / "playbooks" / "switch_back.yml"
RESTORE = ROOT / "tests" / "playbooks" / "config_restore.yml"


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    out = tmp_path_factory.mktemp("releases")
    for version in ("1.0.0", "2.0.0", "2.0.1"):
        build_release(version, out)
    return out


@pytest.fixture(scope="module")
def app_db(pg, reference_template):
    name = pg.create_database(template=reference_template)
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, releases):
    s = new_stack(tmp_path_factory.mktemp("deploy"), releases)
    yield s
    s.stop()


def deploy(stack, pg, db, tmp_path, version, revision, *args, **extra):
    variables = stack.variables(pg, db, blue_green_release_version=version, blue_green_expect_revision=revision,
                                **extra)
    return run_playbook(APP_PLAYBOOK, tmp_path, variables, *args)


def recap_changed(output: str) -> int:
    line = [x for x in output.splitlines() if "changed=" in x and "ok=" in x][-1]
    return int(line.split("changed=")[1].split()[0])


def deploy_state(stack, pg, db) -> dict:
    """What a check-mode run must leave as it was: every file under the deploy state directory but the
    logs (the live check's request through nginx is logged), the programs with their pids, the colour
    nginx serves, and the database with its ledger."""
    files = {path: digest for path, digest in config_digest(stack.deploy).items() if not path.startswith("logs/")}
    return {"files": files, "programs": stack.programs(), "health": stack.health(), "db": snapshot(pg, db)}


def test_check_mode_deploy_changes_nothing_and_says_what_it_would_do(pg, app_db, stack, tmp_path):
    """deploy.yml and migrate.yml with --check --diff on a live 1.0.0 deployment targeting 2.0.0: rc 0,
    nothing installed, started, stopped or switched, the ledger untouched, and the output says which
    colour is live, which one would receive which release, and the configuration's diff (no secret)."""
    first = deploy(stack, pg, app_db, tmp_path, "1.0.0", "v1_0_0")
    assert first.rc == 0, first.output[-4000:]
    before = deploy_state(stack, pg, app_db)
    assert before["health"]["version"] == "1.0.0" and before["health"]["colour"] == "blue"
    variables = {**flow_vars(pg, app_db, tmp_path), **stack.variables(pg, app_db)}
    for playbook in ("playbooks/deploy.yml", "migrate.yml"):
        res = run_playbook(playbook, tmp_path, variables, "--check", "--diff")
        assert res.rc == 0, (playbook, res.output[-5000:])
        assert deploy_state(stack, pg, app_db) == before, playbook
        output = " ".join(res.output.split())
        assert "Live through " + stack.url + ": blue (release 1.0.0, answered by blue)" in output, output[-5000:]
        assert "Check mode: green would receive release 2.0.0" in output, output[-5000:]
        assert "blue (1.0.0) would keep serving" in output, output[-5000:]
        assert '+APP_RELEASE=2.0.0' in res.output and '+    "release": "2.0.0"' in res.output, res.output[-5000:]
        assert pg.password not in res.output
    assert not (stack.deploy / "colours" / "green").exists()


def test_switch_under_traffic_has_zero_failed_requests(pg, app_db, stack, tmp_path):
    first = deploy(stack, pg, app_db, tmp_path, "1.0.0", "v1_0_0")
    assert first.rc == 0, first.output[-4000:]
    assert stack.upstream()["members"][0]["name"] == "blue"
    assert stack.health() == {"status": "ok", "version": "1.0.0", "colour": "blue", "db_revision": "v1_0_0"}
    alembic(pg, app_db, "upgrade", "v2_0_0")  # expand first: 1.0.0 keeps serving on the 2.0.0 schema
    with Traffic(stack.url, ["/health", "/predictions/1", "/predictions/2"], threads=4, requests=50_000,
                 min_requests=400) as loop:
        res = deploy(stack, pg, app_db, tmp_path, "2.0.0", "v2_0_0")
    assert res.rc == 0, res.output[-4000:]
    assert loop.failures == [], loop.failures[:5]
    assert len(loop.answers) >= 400
    for client in range(4):
        assert loop.version_changes(client) in (["1.0.0", "2.0.0"], ["2.0.0"], ["1.0.0"])
    assert loop.version_changes()[0] == "1.0.0" and loop.version_changes()[-1] == "2.0.0"
    assert stack.health() == {"status": "ok", "version": "2.0.0", "colour": "green", "db_revision": "v2_0_0"}
    programs = stack.programs()
    assert programs["app-blue"][0] == "RUNNING" and programs["app-green"][0] == "RUNNING"  # the way back
    assert stack.health(stack.ports["blue"])["version"] == "1.0.0"
    new_answers = [a for a in loop.answers if a.version == "2.0.0"]
    assert new_answers and all(a.colour == "green" for a in new_answers)


def test_same_version_again_changes_nothing(pg, app_db, stack, tmp_path):
    before = stack.programs()
    res = deploy(stack, pg, app_db, tmp_path, "2.0.0", "v2_0_0")
    assert res.rc == 0, res.output[-4000:]
    assert recap_changed(res.output) == 0, res.output[-4000:]
    assert "already live on green" in res.output
    assert stack.programs() == before  # same pids: nothing restarted


def test_failing_health_check_never_switches(pg, app_db, stack, tmp_path):
    """2.0.1 answers /health with revision v2_0_0, never the v9_9_9 this deploy expects."""
    with Traffic(stack.url, ["/health", "/predictions/1"], threads=3, requests=50_000, min_requests=100) as loop:
        res = deploy(stack, pg, app_db, tmp_path, "2.0.1", "v9_9_9", blue_green_health_retries=3)
    assert res.rc != 0
    output = " ".join(res.output.split())
    assert "the health check of blue" in output and "revision v9_9_9" in output, output[-3000:]
    assert "blue is stopped" in output
    assert loop.failures == [] and {a.colour for a in loop.answers} == {"green"}  # no request reached blue
    assert stack.health()["version"] == "2.0.0"
    assert stack.programs()["app-blue"][0] == "STOPPED"
    assert stack.upstream()["members"][0]["name"] == "green"


def test_invalid_configuration_switches_nothing(pg, app_db, stack, tmp_path):
    blue_config = stack.deploy / "colours" / "blue" / "config"
    before = config_digest(blue_config)
    res = deploy(stack, pg, app_db, tmp_path, "2.0.1", "v2_0_0", blue_green_config_settings={"pool_size": 0})
    assert res.rc != 0
    output = " ".join(res.output.split())
    assert "failed validation (--check-config" in output and "pool_size must be >= 1, got 0" in output, output[-3000:]
    assert "previous configuration" in output and "is still in place" in output
    assert config_digest(blue_config) == before
    assert stack.health()["version"] == "2.0.0" and stack.upstream()["members"][0]["name"] == "green"
    assert stack.programs()["app-blue"][0] == "STOPPED"


def test_switch_back_has_zero_failed_requests(pg, app_db, stack, tmp_path):
    """Interface (d): blue is stopped (the refused deploys left 2.0.1 installed there); switch_back
    starts it, proves it healthy, switches by one rename of nginx's live socket and stops green, under
    traffic."""
    with Traffic(stack.url, ["/health", "/predictions/1"], threads=4, requests=50_000, min_requests=200) as loop:
        res = run_playbook(SWITCH_BACK, tmp_path, stack.variables(pg, app_db, blue_green_switch_back_colour="blue"))
    assert res.rc == 0, res.output[-4000:]
    assert loop.failures == [], loop.failures[:5]
    for client in range(4):
        assert len(loop.version_changes(client)) <= 2
    assert stack.health()["colour"] == "blue"
    programs = stack.programs()
    assert programs["app-blue"][0] == "RUNNING" and programs["app-green"][0] == "STOPPED"
    assert stack.upstream()["members"][0]["name"] == "blue"


def test_repeated_switches_never_flap_back(pg, app_db, stack, tmp_path):
    """Two switches (there and back) under a request loop of 6 clients, each its own loop: no request
    fails, and once any client has received the new colour's answer, no request sent after that reaches
    the old one (each client sees the version change exactly once). Blue runs 2.0.1 (left by the
    refused deploys), green 2.0.0."""
    version = {"blue": "2.0.1", "green": "2.0.0"}
    live = stack.health()["colour"]
    for _ in range(2):
        target = "green" if live == "blue" else "blue"
        with Traffic(stack.url, ["/health", "/predictions/1"], threads=6, requests=50_000, min_requests=300,
                     pace=0.005) as loop:
            res = run_playbook(SWITCH_BACK, tmp_path,
                               stack.variables(pg, app_db, blue_green_switch_back_colour=target))
        assert res.rc == 0, res.output[-4000:]
        assert loop.failures == [], loop.failures[:5]
        old, new = version[live], version[target]
        assert loop.flaps_back(old, new) == [], loop.flaps_back(old, new)[:5]
        for client in range(6):
            assert loop.version_changes(client) in ([old, new], [new]), (client, loop.version_changes(client))
        assert stack.health()["colour"] == target and stack.upstream()["members"][0]["name"] == target
        live = target
    assert live == "blue"


def test_config_restore_gives_back_the_files_byte_for_byte(pg, app_db, releases, tmp_path):
    config_dir = tmp_path / "cfg"
    release = tmp_path / "release"
    install_release(releases / "football_prediction_api-2.0.0-py3-none-any.whl", release)
    secret = tmp_path / "pw"
    secret.write_text(pg.password)
    secret.chmod(0o600)
    common = {**pg.conn_vars(app_db), "config_dir": str(config_dir), "config_release_path": str(release),
              "config_password_file": str(secret),
              "config_release_version": "2.0.0", "result_file": str(tmp_path / "result.json")}
    playbook = ROOT / "tests" / "playbooks" / "config_render.yml"
    first = run_playbook(playbook, tmp_path, common, inventory=ROOT / "tests" / "inventory.yml")
    assert first.rc == 0, first.output[-3000:]
    os.chmod(config_dir / ".env", 0o600)  # an operator's change of mode is part of what comes back
    before = config_digest(config_dir)
    # Check and diff mode: validated by the release, the rendered diff shown, nothing written, no backup taken.
    preview = run_playbook(playbook, tmp_path, {**common, "config_settings": {"pool_size": 3}}, "--check", "--diff",
                           inventory=ROOT / "tests" / "inventory.yml")
    assert preview.rc == 0, preview.output[-3000:]
    assert '-    "pool_size": 8,' in preview.output and '+    "pool_size": 3,' in preview.output, preview.output[-3000:]
    assert "the previous files would first be backed up to " + str(config_dir) + ".backups/" in \
        " ".join(preview.output.split())
    assert pg.password not in preview.output
    assert config_digest(config_dir) == before and not (tmp_path / "cfg.backups").exists()
    second = run_playbook(playbook, tmp_path, {**common, "config_settings": {"pool_size": 3}},
                          inventory=ROOT / "tests" / "inventory.yml")
    assert second.rc == 0, second.output[-3000:]
    import json
    backup = json.loads((tmp_path / "result.json").read_text())["backup"]
    assert backup and config_digest(config_dir) != before
    restore = run_playbook(playbook, tmp_path, {**common, "config_entry": "restore", "config_restore_from": backup},
                           inventory=ROOT / "tests" / "inventory.yml")
    assert restore.rc == 0, restore.output[-3000:]
    assert config_digest(config_dir) == before
    env_text = (config_dir / ".env").read_text()
    assert pg.password not in env_text and "password=" not in env_text.lower()  # the DSN on disk has none


@pytest.fixture(scope="module")
def rolling_stack(tmp_path_factory, releases):
    s = new_stack(tmp_path_factory.mktemp("rolling"), releases)
    yield s
    s.stop()




@pytest.fixture(scope="module")
def rolling_db(pg, v2_template):
    name = pg.create_database(template=v2_template)
    yield name
    pg.drop_database(name)


# A release-only plan: 2.0.1 by rolling update, no schema or data change (playbooks/deploy.yml runs it as a
# phase run of its own, so the run ledger records what the update changed and rollback.yml can undo it).
ROLLING_PLAN = {"plan_format": 1, "version": "2.0.1", "from_version": "2.0.0", "type": "data",
                "title": "Release 2.0.1 by rolling update",
                "release": {"version": "2.0.1", "strategy": "rolling", "health_path": "/health"},
                "rollback": {"policy": "manual", "restore_backup": "if_data_changed"}}


def run_vars(tmp_path, **extra) -> dict:
    plans = tmp_path / "plans"
    plans.mkdir(exist_ok=True)
    (plans / "2.0.1.yml").write_text(yaml.safe_dump(ROLLING_PLAN, sort_keys=False))
    return {"version": "2.0.1", "pgmigrate_plan_dir": str(plans), "pgmigrate_environment": "test",
            **{f"pgmigrate_{d}_dir": str(tmp_path / d) for d in ("log", "report", "docs", "backup")}, **extra}


def test_rolling_update_keeps_serving_and_stops_at_a_failing_instance(pg, rolling_db, rolling_stack, tmp_path):
    s, app_db = rolling_stack, rolling_db
    first = deploy(s, pg, app_db, tmp_path, "2.0.0", "v2_0_0", blue_green_strategy="rolling")
    assert first.rc == 0, first.output[-4000:]
    assert [m["name"] for m in s.upstream()["members"]] == ["rolling-1", "rolling-2"]
    configs = {i: s.deploy / "colours" / i / "config" for i in ("rolling-1", "rolling-2")}
    digests = {i: config_digest(d) for i, d in configs.items()}
    # rolling-2's 2.0.1 release is damaged from outside before the update reaches it.
    install_broken_release(s.releases / "football_prediction_api-2.0.1-py3-none-any.whl",
                           s.deploy / "colours" / "rolling-2" / "releases" / "2.0.1")
    # The update runs as the deploy phase of a run (playbooks/deploy.yml and the 2.0.1 plan): the ledger keeps it.
    with Traffic(s.url, ["/health", "/predictions/1"], threads=4, requests=50_000, min_requests=200) as loop:
        res = run_playbook(ROOT / "playbooks" / "deploy.yml", tmp_path, s.variables(
            pg, app_db, blue_green_expect_revision="v2_0_0", blue_green_health_retries=3, **run_vars(tmp_path)))
    assert res.rc != 0
    output = " ".join(res.output.split())
    # The broken release exits at start: the update stops there, saying so with the program's own words.
    assert "Rolling update at instance rolling-2 stopped" in output and "the start of rolling-2 failed" in output, \
        output[-4000:]
    assert "supervisord could not start" in output and "broken test release: refusing to start" in output
    assert "rolling-2 is stopped; rolling-1 still serves" in output
    assert loop.failures == [], loop.failures[:5]  # at every moment at least one instance served
    assert {a.colour for a in loop.answers} <= {"rolling-1", "rolling-2"}
    assert [m["name"] for m in s.upstream()["members"]] == ["rolling-1"]
    assert s.health() == {"status": "ok", "version": "2.0.1", "colour": "rolling-1", "db_revision": "v2_0_0"}
    assert s.programs()["app-rolling-2"][0] in ("STOPPED", "FATAL", "EXITED", "BACKOFF")

    # The way back: rollback.yml -e run_id=N takes each instance the update changed back to 2.0.0, one at a
    # time with the same health checks, under a request loop through nginx.
    (run_id, phases), = query(pg, app_db, "SELECT id, phases FROM migration_ops.runs ORDER BY id DESC LIMIT 1")
    previous = phases["deploy"]["facts"]["instances_previous"]
    assert {i: p["version"] for i, p in previous.items()} == {"rolling-1": "2.0.0", "rolling-2": "2.0.0"}
    back_vars = s.variables(pg, app_db, run_id=run_id, **run_vars(tmp_path))
    back_vars.pop("version")
    with Traffic(s.url, ["/health", "/predictions/1"], threads=4, requests=50_000, min_requests=200) as loop:
        back = run_playbook(ROOT / "rollback.yml", tmp_path, back_vars)
    assert back.rc == 0, back.output[-4000:]
    assert loop.failures == [], loop.failures[:5]  # at every moment at least one instance served
    out = " ".join(back.output.split())
    assert f"Run #{run_id} (2.0.1) is rolled back" in out, out[-4000:]
    assert "instances rolled back one at a time (those out of the upstream first): rolling-1 to 2.0.0 (previous " \
           "configuration restored), rolling-2 to 2.0.0 (previous configuration restored)" in out
    assert "Rolled back one at a time: rolling-2 to 2.0.0, rolling-1 to 2.0.0 (rolling-2, rolling-1 changed)" in out
    for i in ("rolling-1", "rolling-2"):
        assert s.health(s.rolling_base + int(i[-1]) - 1) == {"status": "ok", "version": "2.0.0", "colour": i,
                                                             "db_revision": "v2_0_0"}
        assert s.programs()[f"app-{i}"][0] == "RUNNING"
    assert sorted(s.upstream()["members"], key=lambda m: m["name"]) == [
        {"name": "rolling-1", "port": s.rolling_base, "version": "2.0.0"},
        {"name": "rolling-2", "port": s.rolling_base + 1, "version": "2.0.0"}]
    for client in range(4):  # 2.0.1 (rolling-1) until it was rolled back, 2.0.0 after
        assert loop.version_changes(client)[-1] == "2.0.0", (client, loop.version_changes(client))
    assert {i: config_digest(d) for i, d in configs.items()} == digests
    (status, phases), = query(pg, app_db, "SELECT status, phases FROM migration_ops.runs WHERE id = %s", (run_id,))
    assert status == "rolled_back" and phases["rollback"]["status"] == "succeeded"
    assert phases["deploy"]["status"] == "failed"
