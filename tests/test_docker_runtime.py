"""The container runtime of blue_green (interface (a), roles/blue_green/tasks/runtime_docker.yml).

A real dockerd started by scripts/dockerd.sh (skipped, with the reason shown by -ra, only when
it cannot start here), the base image from debootstrap built once per machine (cache
~/.cache/pgmigrate-ops or PGMIGRATE_CACHE_DIR), release images built from a wheel, every colour
operation through a real ansible-playbook run, the API answering from the container against the
session's PostgreSQL, an nginx upstream switch between two containers under load, and the role's
own deploy (playbooks/app_release.yml, blue_green_runtime=docker) and switch back under a request
loop, on the same daemon and images.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import docker
import pytest
from conftest import ROOT, alembic, run_playbook
from deploy_helpers import build_release, new_stack
from docker_helpers import own_dockerd
from traffic import Traffic

PLAYBOOK = ROOT / "tests" / "playbooks" / "docker_runtime.yml"
import pgcluster  # noqa: E402  (tools/ is on sys.path through conftest)


# --- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    """A dockerd of this module's own (data, exec root, socket and pid file in a temp directory)."""
    with own_dockerd(tmp_path_factory.mktemp("dockerd"), "the docker tests") as host:
        yield host


@pytest.fixture(scope="module")
def docker_client(docker_host):
    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


@pytest.fixture(scope="module")
def app_db(pg, reference_template):
    name = pg.create_database(template=reference_template)
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """The real wheels of releases 1.0.0 and 2.0.0 (scripts/build-release.sh, interface (b))."""
    out = tmp_path_factory.mktemp("releases")
    return {version: build_release(version, out) for version in ("1.0.0", "2.0.0")}


class Target:
    """One deployment target: per colour a configuration directory and a port; one secret file."""

    def __init__(self, base: Path, pg, dbname: str, docker_host: str, releases: dict,
                 versions: dict | None = None) -> None:
        self.base, self.docker_host, self.releases = base, docker_host, releases
        self.versions = versions or {"blue": "1.0.0", "green": "2.0.0"}
        self.secret = base / "db-password"
        self.secret.write_text(pg.password + "\n")
        self.secret.chmod(0o600)
        self.ports = {colour: pgcluster.free_port() for colour in self.versions}
        self.dsn = f"host={pg.host} port={pg.port} dbname={dbname} user={pg.user} sslmode=disable"
        for colour, version in self.versions.items():
            self.render(colour, version)

    def render(self, colour: str, version: str) -> None:
        """The colour's configuration for a release, as the config role renders it (interface (b))."""
        self.versions[colour] = version
        config = self.base / colour
        (config / "config").mkdir(parents=True, exist_ok=True)
        (config / ".env").write_text(f"APP_RELEASE={version}\nAPP_DB_DSN={self.dsn}\n"
                                     f"APP_DB_PASSWORD_FILE={self.secret}\n")
        (config / "config" / "app_config.json").write_text(json.dumps(
            {"release": version, "pool_size": 4, "statement_timeout_ms": 5000, "connect_timeout_s": 5,
             "log_requests": False}))

    def run(self, actions: str, colour: str, *args: str, version: str | None = None, **overrides):
        """One ansible-playbook run of the actions ("install start" runs both, in that order)."""
        version = version or self.versions[colour]
        variables = {
            "__test_actions": actions.split(), "__bg_colour": colour, "__bg_port": self.ports[colour],
            "__bg_release_wheel": str(self.releases[version]), "__bg_release_version": version,
            "__bg_config_dir": str(self.base / colour), "__bg_secret_file": str(self.secret),
            "__test_status_file": str(self.base / f"status-{uuid.uuid4().hex[:8]}.json"),
        }
        variables.update(overrides)
        result = run_playbook(PLAYBOOK, self.base, variables, *args, inventory=ROOT / "tests" / "inventory.yml",
                              env={"DOCKER_HOST": self.docker_host})
        result.status_file = Path(variables["__test_status_file"])
        return result

    def status(self, colour: str, actions: str = "") -> dict:
        """__bg_status after the actions (if any) and a status, in one run."""
        result = self.run(f"{actions} status".strip(), colour)
        assert result.rc == 0, result.output[-3000:]
        return json.loads(result.status_file.read_text())

    def deploy(self, colour: str) -> None:
        result = self.run("install start", colour)
        assert result.rc == 0, f"install+start of {colour} failed:\n{result.output[-4000:]}"


@pytest.fixture(scope="module")
def target(tmp_path_factory, pg, app_db, docker_host, releases):
    """A target whose blue colour has release 1.0.0 installed (base and app images built)."""
    t = Target(tmp_path_factory.mktemp("target"), pg, app_db, docker_host, releases)
    result = t.run("install", "blue")
    assert result.rc == 0, result.output[-4000:]
    yield t
    for colour in t.ports:
        t.run("remove", colour)


# --- helpers ----------------------------------------------------------------------------
def get_json(url: str, timeout: float = 5) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def wait_health(port: int, version: str, attempts: int = 150) -> dict:
    last = None
    for _ in range(attempts):
        try:
            status, body = get_json(f"http://127.0.0.1:{port}/health", timeout=2)
            if status == 200 and body.get("version") == version:
                return body
            last = (status, body)
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"127.0.0.1:{port}/health never reported {version}: last answer {last!r}")


def refused(port: int) -> bool:
    try:
        get_json(f"http://127.0.0.1:{port}/health", timeout=2)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    except ConnectionRefusedError:
        return True
    return False


def recap_changed(output: str) -> int:
    line = [line for line in output.splitlines() if "changed=" in line and "ok=" in line][-1]
    return int(line.split("changed=")[1].split()[0])


def container_of(client, target: Target, colour: str):
    found = client.containers.list(all=True, filters={"label": f"org.pgmigrate.config_dir={target.base / colour}"})
    return found[0] if found else None


# --- tests ------------------------------------------------------------------------------
def test_colour_lifecycle_start_health_status_stop_remove(target, docker_client):
    assert target.status("blue", "start") == {"running": True, "version": "1.0.0"}
    health = wait_health(target.ports["blue"], "1.0.0")
    assert health["colour"] == "blue"
    assert health["db_revision"], health  # the container reached the database on 127.0.0.1

    container = container_of(docker_client, target, "blue")
    assert container is not None and container.status == "running"
    assert "-blue-" in container.name
    host_config, config = container.attrs["HostConfig"], container.attrs["Config"]
    assert host_config["Init"] is True
    assert host_config["NetworkMode"] == "host"
    assert host_config["ReadonlyRootfs"] is True
    # The password is in neither the container's configuration nor its command line.
    password = target.secret.read_text().strip()
    assert password not in json.dumps(container.attrs)
    assert f"APP_DB_PASSWORD_FILE={target.secret}" in config["Env"]
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts[str(target.secret)]["RW"] is False
    assert mounts[str(target.base / "blue")]["RW"] is False

    assert target.status("blue", "stop") == {"running": False, "version": "1.0.0"}
    assert refused(target.ports["blue"])
    again = target.run("stop", "blue")
    assert again.rc == 0 and recap_changed(again.output) == 0, again.output[-3000:]

    assert target.status("blue", "remove") == {"running": False, "version": None}
    assert container_of(docker_client, target, "blue") is None
    started = target.run("start", "blue")  # nothing installed in blue any more
    assert started.rc != 0 and "run the runtime's install action for blue first" in started.output
    again = target.run("remove", "blue")
    assert again.rc == 0 and recap_changed(again.output) == 0, again.output[-3000:]


def test_second_install_and_start_change_nothing_and_keep_the_container(target, docker_client):
    target.deploy("blue")
    wait_health(target.ports["blue"], "1.0.0")
    before = container_of(docker_client, target, "blue")
    result = target.run("install start", "blue")
    assert result.rc == 0, result.output[-4000:]
    assert recap_changed(result.output) == 0, f"the second install+start changed something:\n{result.output[-4000:]}"
    after = container_of(docker_client, target, "blue")
    assert after.id == before.id
    assert after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    assert after.attrs["RestartCount"] == 0


def test_a_new_release_replaces_the_container_and_check_mode_changes_nothing(target, docker_client):
    target.deploy("blue")
    before = container_of(docker_client, target, "blue")
    result = target.run("install start", "blue", "--check", version="2.0.0")  # release 2.0.0, check mode
    assert result.rc == 0, result.output[-4000:]
    after = container_of(docker_client, target, "blue")
    assert after.id == before.id and after.status == "running"
    assert wait_health(target.ports["blue"], "1.0.0")["version"] == "1.0.0"

    # install alone never touches the running container; start then runs the new release.
    installed = target.run("install", "blue", version="2.0.0")
    assert installed.rc == 0, installed.output[-4000:]
    assert container_of(docker_client, target, "blue").id == before.id
    assert wait_health(target.ports["blue"], "1.0.0")["version"] == "1.0.0"
    try:
        target.render("blue", "2.0.0")
        assert target.status("blue", "start") == {"running": True, "version": "2.0.0"}
        assert wait_health(target.ports["blue"], "2.0.0")["colour"] == "blue"
        assert container_of(docker_client, target, "blue").id != before.id
    finally:
        target.render("blue", "1.0.0")  # back to 1.0.0 for the other tests
        target.deploy("blue")
    assert wait_health(target.ports["blue"], "1.0.0")["version"] == "1.0.0"


@pytest.mark.parametrize("actions, problem, fix", [
    (("install", "start"), "mode", "chmod 0600"),
    (("install", "start"), "colour", "__bg_colour"),
    (("install", "start"), "port", "__bg_port (1-65535"),
    (("install",), "wheel", "scripts/build-release.sh 2.0.0"),
    (("install",), "version", "football_prediction_api-VERSION-py3-none-any.whl"),
])
def test_bad_input_fails_naming_the_fix_and_changes_nothing(target, docker_client, tmp_path, actions, problem,
                                                           fix):
    assert container_of(docker_client, target, "green") is None
    overrides = {}
    if problem == "mode":
        secret = tmp_path / "open-secret"
        secret.write_text("x\n")
        secret.chmod(0o644)
        overrides["__bg_secret_file"] = str(secret)
    elif problem == "colour":
        overrides["__bg_colour"] = "Green; rm -rf /"
    elif problem == "port":
        overrides["__bg_port"] = 70000
    elif problem == "wheel":
        overrides["__bg_release_wheel"] = str(tmp_path / "football_prediction_api-2.0.0-py3-none-any.whl")
    else:
        overrides["__bg_release_version"] = "2.0.1"
    images_before = sorted(tag for image in docker_client.images.list() for tag in image.tags)
    for action in actions:
        result = target.run(action, "green", **overrides)
        assert result.rc != 0, result.output[-3000:]
        assert fix in result.output, result.output[-3000:]
    assert container_of(docker_client, target, "green") is None
    assert sorted(tag for image in docker_client.images.list() for tag in image.tags) == images_before


def test_two_targets_with_the_same_colour_never_clash(target, tmp_path, pg, app_db, docker_host, releases,
                                                      docker_client):
    other = Target(tmp_path, pg, app_db, docker_host, releases, versions={"blue": "2.0.0"})
    target.deploy("blue")
    try:
        other.deploy("blue")
        assert wait_health(other.ports["blue"], "2.0.0")["colour"] == "blue"
        assert wait_health(target.ports["blue"], "1.0.0")["colour"] == "blue"
        mine, theirs = container_of(docker_client, target, "blue"), container_of(docker_client, other, "blue")
        assert mine.name != theirs.name and mine.status == theirs.status == "running"
    finally:
        other.run("remove", "blue")
    assert container_of(docker_client, target, "blue").status == "running"


# --- the switch through nginx -----------------------------------------------------------
NGINX_CONF = """
worker_processes 2;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {base}/body;
  proxy_temp_path {base}/proxy;
  fastcgi_temp_path {base}/fastcgi;
  uwsgi_temp_path {base}/uwsgi;
  scgi_temp_path {base}/scgi;
  include {base}/upstream.conf;
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://app; proxy_next_upstream off; }}
  }}
}}
"""


class Nginx:
    def __init__(self, base: Path) -> None:
        self.base, self.port = base, pgcluster.free_port()
        self.conf = base / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(base=base, port=self.port))

    def point_at(self, port: int) -> None:
        tmp = self.base / "upstream.conf.tmp"
        tmp.write_text(f"upstream app {{ server 127.0.0.1:{port}; }}\n")
        tmp.replace(self.base / "upstream.conf")

    def run(self, *args: str) -> None:
        proc = subprocess.run(["nginx", "-p", str(self.base), "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr

    def stop(self) -> None:
        pid_file = self.base / "nginx.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGQUIT)


def request_loop(url: str, clients: int, per_client: int, results: list, counter: list) -> list[threading.Thread]:
    def client(index: int) -> None:
        for _ in range(per_client):
            try:
                status, body = get_json(url, timeout=5)
                results[index].append(body.get("version") if status == 200 else f"HTTP {status}")
            except OSError as exc:
                results[index].append(f"error {exc}")
            counter[0] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def test_nginx_switch_between_two_containers_fails_no_request(target, tmp_path):
    """Blue (1.0.0) live behind nginx, green (2.0.0) started and healthy, one reload: 0 failed requests."""
    target.deploy("blue")
    target.deploy("green")
    wait_health(target.ports["blue"], "1.0.0")
    wait_health(target.ports["green"], "2.0.0")
    nginx = Nginx(tmp_path)
    nginx.point_at(target.ports["blue"])
    nginx.run("-t")
    nginx.run()
    try:
        url = f"http://127.0.0.1:{nginx.port}/health"
        wait_health(nginx.port, "1.0.0")
        clients, per_client = 4, 500
        results: list[list[str]] = [[] for _ in range(clients)]
        counter = [0]
        threads = request_loop(url, clients, per_client, results, counter)
        while counter[0] < clients * per_client // 4 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        nginx.point_at(target.ports["green"])
        nginx.run("-t")
        nginx.run("-s", "reload")
        for thread in threads:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "the request loop did not finish"
    finally:
        nginx.stop()
        target.run("stop", "green")

    answers = [answer for per in results for answer in per]
    failed = [answer for answer in answers if answer not in ("1.0.0", "2.0.0")]
    assert len(answers) == clients * per_client
    assert failed == [], f"{len(failed)} failed requests, e.g. {failed[:5]}"
    for per in results:  # each client sees 1.0.0 then 2.0.0, switched once, never back
        switched = per.index("2.0.0") if "2.0.0" in per else len(per)
        assert set(per[:switched]) <= {"1.0.0"} and set(per[switched:]) <= {"2.0.0"}, per
    assert answers.count("1.0.0") > 0 and answers.count("2.0.0") > 0


# --- the role's own switch with the docker runtime, under a request loop ---------------
APP_PLAYBOOK = ROOT / "playbooks" / "app_release.yml"
SWITCH_BACK = ROOT / "tests" / "playbooks" / "switch_back.yml"


@pytest.fixture(scope="module")
def role_db(pg, reference_template):
    """The reference database at v1_0_0, of the role's deploys alone (they move it to v2_0_0)."""
    name = pg.create_database(template=reference_template)
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="module")
def role_stack(tmp_path_factory, releases, docker_host, docker_client):
    """nginx (and the role's supervisord) under a state directory; the colours are containers of this
    module's daemon, from the images of this module's wheels (built once, shared with the tests above)."""
    s = new_stack(tmp_path_factory.mktemp("role"), releases["1.0.0"].parent)
    yield s
    for colour in s.ports:
        for container in docker_client.containers.list(all=True, filters={"label": role_label(s, colour)}):
            container.remove(force=True)
    s.stop()


def role_label(stack, colour: str) -> str:
    return f"org.pgmigrate.config_dir={stack.deploy / 'colours' / colour / 'config'}"


def role_container(client, stack, colour: str):
    found = client.containers.list(all=True, filters={"label": role_label(stack, colour)})
    assert len(found) <= 1, [c.name for c in found]
    return found[0] if found else None


def role_run(playbook: Path, stack, pg, db: str, docker_host: str, tmp_path: Path, **extra):
    variables = stack.variables(pg, db, blue_green_runtime="docker", **extra)
    result = run_playbook(playbook, tmp_path, variables, env={"DOCKER_HOST": docker_host})
    (tmp_path / f"{playbook.stem}-{uuid.uuid4().hex[:8]}.log").write_text(result.output)
    return result


def members(stack) -> list[tuple[str, int, str]]:
    return [(m["name"], int(m["port"]), m["version"]) for m in stack.upstream()["members"]]


def flat(output: str) -> str:
    return " ".join(output.split())


def test_role_switch_with_docker_under_traffic_has_zero_failed_requests(pg, role_db, role_stack, docker_host,
                                                                        docker_client, tmp_path):
    """1.0.0 to blue through the role, then 2.0.0 to green under a request loop: green's container started
    and proven healthy before nginx is pointed at it by one reload, blue's container kept as the way back."""
    s = role_stack
    first = role_run(APP_PLAYBOOK, s, pg, role_db, docker_host, tmp_path, blue_green_release_version="1.0.0",
                     blue_green_expect_revision="v1_0_0")
    assert first.rc == 0, first.output[-5000:]
    assert s.upstream()["members"][0]["name"] == "blue"
    assert s.health() == {"status": "ok", "version": "1.0.0", "colour": "blue", "db_revision": "v1_0_0"}
    blue = role_container(docker_client, s, "blue")
    assert blue is not None and blue.status == "running" and role_container(docker_client, s, "green") is None
    assert blue.labels["org.opencontainers.image.version"] == "1.0.0"
    assert s.programs() == {}  # no colour runs under supervisord with the docker runtime
    nginx_pid = (s.deploy / "nginx" / "nginx.pid").read_text()

    alembic(pg, role_db, "upgrade", "v2_0_0")  # expand first: 1.0.0 keeps serving on the 2.0.0 schema
    with Traffic(s.url, ["/health", "/predictions/1", "/predictions/2"], threads=4, requests=50_000,
                 min_requests=400) as loop:
        res = role_run(APP_PLAYBOOK, s, pg, role_db, docker_host, tmp_path, blue_green_release_version="2.0.0",
                       blue_green_expect_revision="v2_0_0")
    assert res.rc == 0, res.output[-5000:]
    assert loop.failures == [], loop.failures[:5]
    assert len(loop.answers) >= 400
    for client in range(4):
        assert loop.version_changes(client) in (["1.0.0", "2.0.0"], ["2.0.0"], ["1.0.0"]), loop.version_changes(client)
    assert loop.version_changes()[0] == "1.0.0" and loop.version_changes()[-1] == "2.0.0"
    assert {(a.version, a.colour) for a in loop.answers} == {("1.0.0", "blue"), ("2.0.0", "green")}

    # Green was started and passed its health check before nginx moved, and nginx moved by one rename of
    # its live socket (no reload: its configuration's servers did not change).
    output = res.output
    started = output.index("TASK [blue_green : Start the colour's container]")
    checked = output.index("TASK [blue_green : Run the health check of green]")
    switched = output.index("TASK [blue_green : Switch the live socket to green]")
    assert started < checked < output.index("TASK [blue_green : Write the new active upstream]") < switched
    assert output.count("TASK [blue_green : Switch the live socket to") == 1
    assert output.count("TASK [blue_green : Reload nginx gracefully]") == 0
    assert (s.deploy / "nginx" / "nginx.pid").read_text() == nginx_pid  # reloaded, never restarted
    assert f"Switched {s.url} from blue (1.0.0) to green (2.0.0) at" in flat(output), output[-3000:]
    assert "blue keeps running as the way back" in flat(output)

    assert s.health() == {"status": "ok", "version": "2.0.0", "colour": "green", "db_revision": "v2_0_0"}
    assert members(s) == [("green", s.ports["green"], "2.0.0")]
    green = role_container(docker_client, s, "green")
    assert green.status == "running" and green.labels["org.opencontainers.image.version"] == "2.0.0"
    after = role_container(docker_client, s, "blue")  # the way back: the same container, still running
    assert after.id == blue.id and after.status == "running"
    assert after.attrs["State"]["StartedAt"] == blue.attrs["State"]["StartedAt"]
    assert wait_health(s.ports["blue"], "1.0.0")["colour"] == "blue"


def test_role_same_release_again_changes_nothing_with_docker(pg, role_db, role_stack, docker_host, docker_client,
                                                            tmp_path):
    s = role_stack
    before = {colour: role_container(docker_client, s, colour).attrs for colour in s.ports}
    res = role_run(APP_PLAYBOOK, s, pg, role_db, docker_host, tmp_path, blue_green_release_version="2.0.0",
                   blue_green_expect_revision="v2_0_0")
    assert res.rc == 0, res.output[-5000:]
    assert recap_changed(res.output) == 0, res.output[-5000:]
    assert "Release 2.0.0 is already live on green" in flat(res.output)
    for colour, attrs in before.items():  # neither container replaced nor restarted
        now = role_container(docker_client, s, colour).attrs
        assert (now["Id"], now["State"]["StartedAt"], now["State"]["Running"]) == \
            (attrs["Id"], attrs["State"]["StartedAt"], True)


def test_role_switch_back_with_docker_has_zero_failed_requests(pg, role_db, role_stack, docker_host, docker_client,
                                                              tmp_path):
    """switch_back (interface (d), what the rollback role calls) to blue, still running 1.0.0: one reload
    under traffic, then green's container is stopped (kept, not removed)."""
    s = role_stack
    blue_before = role_container(docker_client, s, "blue")
    with Traffic(s.url, ["/health", "/predictions/1"], threads=4, requests=50_000, min_requests=200) as loop:
        res = role_run(SWITCH_BACK, s, pg, role_db, docker_host, tmp_path, blue_green_switch_back_colour="blue")
        returned = time.monotonic()
    assert res.rc == 0, res.output[-5000:]
    assert loop.failures == [], loop.failures[:5]
    assert len(loop.answers) >= 200
    # One rename of nginx's live socket: each client sees the version change once and never flaps back;
    # once switch_back has returned, only blue answers.
    assert loop.version_changes()[0] == "2.0.0" and loop.version_changes()[-1] == "1.0.0"
    assert loop.flaps_back("2.0.0", "1.0.0") == [], loop.flaps_back("2.0.0", "1.0.0")[:5]
    after = [a for a in loop.answers if a.started > returned]
    assert after and {(a.version, a.colour) for a in after} == {("1.0.0", "blue")}
    assert res.output.count("TASK [blue_green : Switch the live socket to blue]") == 1
    assert res.output.count("TASK [blue_green : Reload nginx gracefully]") == 0
    assert s.health()["colour"] == "blue" and s.health()["version"] == "1.0.0"
    assert members(s) == [("blue", s.ports["blue"], "1.0.0")]
    blue = role_container(docker_client, s, "blue")
    assert blue.id == blue_before.id and blue.status == "running"  # already running: not restarted
    assert blue.attrs["State"]["StartedAt"] == blue_before.attrs["State"]["StartedAt"]
    green = role_container(docker_client, s, "green")
    assert green is not None and green.status == "exited" and refused(s.ports["green"])
