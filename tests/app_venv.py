"""A test application's own virtualenv, created once per machine in a cache directory keyed by its requirements.

The cache is ``$PGMIGRATE_TEST_CACHE`` or ``~/.cache/pgmigrate-ops``; the key is the SHA-256 of the
requirements file and of the Python version, so a changed pin makes a new virtualenv.  Concurrent test
processes (pytest-xdist workers) wait on a file lock; the virtualenv is marked complete only when pip
succeeded, so a half-built one is never used.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("PGMIGRATE_TEST_CACHE") or Path.home() / ".cache" / "pgmigrate-ops")


def app_venv(requirements: Path) -> Path:
    """The virtualenv directory for ``requirements`` (created on first use)."""
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:16]
    root = cache_dir() / "venvs"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{requirements.parent.name}-{key}"
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = target / ".pgmigrate-complete"
        if done.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)  # a build that was killed part-way
        try:
            subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True)
            subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", "-r", str(requirements)], check=True, capture_output=True,
                           text=True)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        done.write_text(requirements.read_text())
        return target
