"""Helpers of the docker runtime tests: a daemon started by scripts/dockerd.sh (the release
wheels come from scripts/build-release.sh, tests/deploy_helpers.py)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERD_SH = ROOT / "scripts" / "dockerd.sh"

def dockerd(action: str, directory: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(DOCKERD_SH), "--dir", str(directory), action], capture_output=True, text=True,
                          timeout=timeout, check=False)


@contextlib.contextmanager
def own_dockerd(directory: Path, what: str, keep_data: bool = True) -> Iterator[str]:
    """A dockerd of a test module's own in ``directory``; yields its DOCKER_HOST. Skips, with the reason,
    only where it cannot start (``what`` names the tests for the message); asserts that it stops."""
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.skip("dockerd or the docker CLI is not installed: scripts/bootstrap.sh --services installs "
                    "Debian's docker.io")
    if os.geteuid() != 0:
        pytest.skip(f"dockerd needs root on this machine (no rootless docker): run {what} as root")
    started = dockerd("start", directory)
    if started.returncode != 0:
        pytest.skip(f"dockerd cannot start on this machine: {(started.stdout + started.stderr).strip()}")
    try:
        yield f"unix://{directory}/docker.sock"
    finally:
        stopped = dockerd("stop", directory)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        if not keep_data:
            shutil.rmtree(directory / "data", ignore_errors=True)
