"""The container runtime of blue_green (interface (a), roles/blue_green/tasks/runtime_docker.yml).

A real dockerd started by scripts/dockerd.sh (skipped, with the reason shown by -ra, only when
it cannot start here), the base image from debootstrap built once per machine (cache
~/.cache/pgmigrate-ops or PGMIGRATE_CACHE_DIR), release images built from a wheel, every colour
operation through a real ansible-playbook run, the API answering from the container against the
session's PostgreSQL, and an nginx upstream switch between two containers under load.
"""
from __future__ import annotations

import json
import os
import shutil
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
from conftest import ROOT, run_playbook
from deploy_helpers import build_release
from docker_helpers import dockerd

PLAYBOOK = ROOT / "tests" / "playbooks" / "docker_runtime.yml"
import pgcluster  # noqa: E402  (tools/ is on sys.path through conftest)


# --- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    """A dockerd of this module's own (data, exec root, socket and pid file in a temp directory)."""
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed: scripts/bootstrap.sh --services installs Debian's docker.io")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root on this machine (no rootless docker): run the docker tests as root")
    directory = tmp_path_factory.mktemp("dockerd")
    started = dockerd("start", directory)
    if started.returncode != 0:
        pytest.skip(f"dockerd cannot start on this machine: {(started.stdout + started.stderr).strip()}")
    host = f"unix://{directory}/docker.sock"
    try:
        yield host
    finally:
        stopped = dockerd("stop", directory)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


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
    line = next(line for line in output.splitlines() if line.startswith("localhost") and "changed=" in line)
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
