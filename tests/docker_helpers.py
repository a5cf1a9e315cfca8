"""Helpers of the docker runtime tests: a daemon started by scripts/dockerd.sh (the release
wheels come from scripts/build-release.sh, tests/deploy_helpers.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERD_SH = ROOT / "scripts" / "dockerd.sh"

def dockerd(action: str, directory: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(DOCKERD_SH), "--dir", str(directory), action], capture_output=True, text=True,
                          timeout=timeout, check=False)
