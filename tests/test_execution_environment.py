"""execution-environment.yml: `ansible-builder create` writes the build context of the EE AWX runs."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT


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
