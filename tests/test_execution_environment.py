"""execution-environment.yml: `ansible-builder create` writes the build context of the EE AWX runs,
and, where a dockerd can start here, the EE is built (tools/build_ee.py: a locally made base image,
`ansible-builder build` on that daemon, the image cached by a hash of its inputs) and the plan phase
runs inside it against the session's PostgreSQL."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import build_ee  # tools/ is on sys.path through conftest
import pgcluster
import pytest
import yaml
from conftest import ROOT, query
from docker_helpers import own_dockerd

EE_UID = 1000  # the EE's USER (ansible-builder's final stage)


def ansible_builder() -> str | None:
    for candidate in (Path(sys.executable).parent / "ansible-builder", ROOT / ".tools/bin/ansible-builder"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("ansible-builder")


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_ansible_builder_create_writes_the_build_context(tmp_path):
    builder = ansible_builder()
    if builder is None:
        pytest.skip("ansible-builder is not installed (pip install ansible-builder==3.2.0, in .venv or .tools)")
    context = tmp_path / "context"
    res = subprocess.run([builder, "create", "-f", str(ROOT / "execution-environment.yml"), "-c", str(context),
                          "--output-filename", "Containerfile"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="localhost/pgmigrate-ops-ee-base:latest"' in containerfile
    assert "ansible-core==2.21.5" in containerfile and "ansible-runner==2.4.3" in containerfile
    python = (context / "_build/requirements.txt").read_text()
    for package in ("psycopg2-binary", "alembic", "SQLAlchemy", "pglast", "docker"):
        assert package in python
    bindep = (context / "_build/bindep.txt").read_text()
    assert "postgresql15 [platform:rpm]" in bindep and "postgresql-client-15 [platform:dpkg]" in bindep
    collections = yaml.safe_load((context / "_build/requirements.yml").read_text())["collections"]
    assert {"community.postgresql", "community.general", "community.docker", "ansible.posix"} <= {
        c["name"] for c in collections}
    assert "mkdir -p /var/backups/pgmigrate /var/lib/pgmigrate /var/log/pgmigrate" in containerfile


def test_the_ee_pins_what_the_control_node_pins():
    """One set of versions: the EE's Python packages, ansible-core and ansible-runner as in requirements.txt,
    and the PostgreSQL client of the server major the tests run (pg_dump must be >= the server)."""
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    pins = requirement_pins()
    deps = ee["dependencies"]
    for spec in deps["python"] + [deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"]]:
        if "==" in spec:
            name, version = spec.split("==")
            assert pins.get(name.lower()) == version, f"{spec} differs from requirements.txt"
    major = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import pgcluster; "
                            "print(pgcluster.PG_MAJOR)"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"postgresql{major.stdout.strip()} [platform:rpm]" in deps["system"]


# --- the built image -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ee_daemon(tmp_path_factory):
    """A dockerd of this module's own; skipped, with the reason, only where it cannot start. Its data goes with
    it: the images are cached as a tarball."""
    with own_dockerd(tmp_path_factory.mktemp("eed"), "the EE build test", keep_data=False) as host:
        yield host


@pytest.fixture(scope="module")
def ee_image(ee_daemon, tmp_path_factory):
    """The EE image on that daemon: loaded from the cache, or built (base image, then ansible-builder build)."""
    if ansible_builder() is None:
        pytest.skip("ansible-builder is not installed (pip install ansible-builder==3.2.0)")
    try:
        build_ee.python_prefix()
    except build_ee.BuildError as exc:
        pytest.skip(str(exc))
    log = tmp_path_factory.mktemp("ee-build") / "build.log"
    try:
        result = build_ee.ensure_image(ee_daemon, log)
    except build_ee.BuildError as exc:
        tail = log.read_text()[-6000:] if log.exists() else ""
        pytest.fail(f"{exc}\n{tail}")
    result["log"] = str(log)
    return result


@pytest.fixture(scope="module")
def docker_client(ee_daemon):
    import docker
    client = docker.DockerClient(base_url=ee_daemon)
    yield client
    client.close()


def run_in(client, image: str, command: list[str], **kwargs) -> tuple[int, str]:
    container = client.containers.run(image, command, detach=True, network_mode="host", **kwargs)
    try:
        status = container.wait(timeout=900)
        return status["StatusCode"], container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_the_ee_image_is_built_or_loaded_from_the_cache(ee_image, docker_client, capsys):
    image = docker_client.images.get(ee_image["tag"])
    assert image.labels.get("ansible-execution-environment") == "true"
    assert Path(ee_image["saved"]).is_file(), "the built image is cached for the next session"
    with capsys.disabled():
        print(f"\nEE image {ee_image['tag']}: {ee_image['how']} in {ee_image['seconds']} s "
              f"(Python from {ee_image['python']}, log {ee_image['log']})")


def test_the_ee_has_the_client_collections_and_python_packages(ee_image, docker_client):
    pins = requirement_pins()
    code, out = run_in(docker_client, ee_image["tag"], ["bash", "-c", "pg_dump --version; psql --version"])
    assert code == 0, out
    assert f"pg_dump (PostgreSQL) {pgcluster.PG_MAJOR}." in out and f"psql (PostgreSQL) {pgcluster.PG_MAJOR}." in out

    code, out = run_in(docker_client, ee_image["tag"], ["ansible-galaxy", "collection", "list", "--format", "json"])
    assert code == 0, out
    installed = {}
    for path_collections in json.loads(out[out.index("{"):]).values():
        installed.update({name: info["version"] for name, info in path_collections.items()})
    for wanted in yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]:
        assert installed.get(wanted["name"]) == wanted["version"], (wanted, installed)

    probe = ("import importlib.metadata as m, sys; "
             "import ansible, ansible_runner, psycopg2, alembic, sqlalchemy, pglast, docker, yaml; "
             "print(sys.version_info[:2]); "
             "print({n: m.version(n) for n in ('ansible-core', 'ansible-runner', 'psycopg2-binary', 'alembic', "
             "'SQLAlchemy', 'pglast', 'docker')})")
    code, out = run_in(docker_client, ee_image["tag"], ["python3.12", "-c", probe])
    assert code == 0, out
    assert "(3, 12)" in out
    versions = ast.literal_eval(out.strip().splitlines()[-1])  # the dict the probe printed
    for name, version in versions.items():
        assert pins[name.lower()] == version, f"{name} {version} in the EE, {pins[name.lower()]} in requirements.txt"

    code, out = run_in(docker_client, ee_image["tag"], ["nginx", "-v"])
    assert code == 0 and "nginx/" in out, out


def test_the_plan_phase_runs_inside_the_ee(ee_image, docker_client, pg, reference_db, tmp_path):
    """The project mounted read-only, a team's inventory, the password in a PGPASSFILE (0600, the EE's
    user), the session's cluster on loopback through host networking."""
    work = tmp_path / "ee-job"
    (work / "inventory").mkdir(parents=True)
    (work / "inventory" / "hosts.yml").write_text(
        "all:\n  children:\n    pgmigrate_db:\n      hosts:\n        football_db:\n"
        "          ansible_connection: local\n"
        "          ansible_python_interpreter: \"{{ ansible_playbook_python }}\"\n")
    variables = {"pgmigrate_db_host": pg.host, "pgmigrate_db_port": pg.port, "pgmigrate_db_user": pg.user,
                 "pgmigrate_db_name": reference_db, "pgmigrate_db_sslmode": "disable", "version": "2.0.0",
                 "pgmigrate_state_dir": "/job/state", "pgmigrate_backup_dir": "/job/backups",
                 "pgmigrate_log_dir": "/job/logs", "pgmigrate_report_dir": "/job/reports",
                 "pgmigrate_docs_dir": "/job/docs", "operator": "ee-operator"}
    (work / "vars.json").write_text(json.dumps(variables))
    (work / "pgpass").write_text(f"{pg.host}:{pg.port}:*:{pg.user}:{pg.password}\n")
    for path in [work, *work.rglob("*")]:
        os.chown(path, EE_UID, 0)
    (work / "pgpass").chmod(0o600)

    container = docker_client.containers.run(
        ee_image["tag"],
        ["ansible-playbook", "playbooks/plan.yml", "-i", "/job/inventory/hosts.yml", "-e", "@/job/vars.json"],
        detach=True, network_mode="host", working_dir="/runner/project",
        volumes={str(ROOT): {"bind": "/runner/project", "mode": "ro"}, str(work): {"bind": "/job", "mode": "rw"}},
        environment={"PGPASSFILE": "/job/pgpass", "ANSIBLE_CONFIG": "/runner/project/ansible.cfg",
                     "ANSIBLE_LOCAL_TEMP": "/tmp/ansible-local"})
    try:
        code = container.wait(timeout=900)["StatusCode"]
        output = container.logs().decode(errors="replace")
        attrs = json.dumps(container.attrs)
    finally:
        container.remove(force=True)
    assert code == 0, output[-4000:]
    assert "failed=0" in output and "football_db" in output
    assert pg.password not in output and pg.password not in attrs  # argv, env and mounts carry no password
    rows = query(pg, reference_db, "SELECT kind, version, status, operator, phases ? 'plan' FROM migration_ops.runs")
    assert rows == [("migrate", "2.0.0", "succeeded", "ee-operator", True)], rows
