"""Shared helpers of the deploy tests: release wheels, a deploy stack (nginx + supervisord under
a temporary state directory on free loopback ports), and stopping it by PID."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT, VENV_BIN
from validate_helpers import free_port

SUPERVISORCTL = "/usr/bin/supervisorctl"

# A test-only broken release: --check-config passes, the server exits at start. Written over an
# installed release's server.py, from outside the production code.
BROKEN_SERVER = '''"""A test-only broken release: --check-config passes, the server exits at start."""
import sys

def main(argv=None):
    if "--check-config" in sys.argv:
        print("configuration valid (broken test release)")
        return 0
    print("broken test release: refusing to start", file=sys.stderr)
    return 3
'''


# A test-only release that fails its /health through nginx and answers everything else: appended to an
# installed release's server.py, from outside the production code. nginx sets X-Real-IP on every request it
# passes on (roles/blue_green/templates/nginx.conf.j2); a direct request to the colour has none, so the
# deploy's health check and smoke requests pass, and its check through the proxy after the switch fails.
PROXY_FAILING_HEALTH = '''

# --- test-only (tests/deploy_helpers.py): /health fails through nginx ---
_direct_health = Handler.health


def _health_failing_through_the_proxy(self):
    if self.headers.get("X-Real-IP"):
        self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "error": "test release: /health fails "
                       "through the proxy", "version": self.server.version, "colour": self.server.colour})
        return
    _direct_health(self)


Handler.health = _health_failing_through_the_proxy
'''


def install_release(wheel: Path, target: Path) -> None:
    """Install a release wheel into a release directory, as the deploy does (pip --target)."""
    subprocess.run([str(VENV_BIN / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True)


def install_broken_release(wheel: Path, target: Path) -> None:
    """Install `wheel` into the release directory `target` the deploy would use, then break it."""
    install_release(wheel, target)
    (target / "football_prediction_api" / "server.py").write_text(BROKEN_SERVER)


def install_proxy_failing_release(wheel: Path, target: Path) -> None:
    """Install `wheel` into the release directory `target` the deploy would use, then make its /health fail
    through nginx (only: direct requests and every other path are answered as usual)."""
    install_release(wheel, target)
    server = target / "football_prediction_api" / "server.py"
    server.write_text(server.read_text() + PROXY_FAILING_HEALTH)


def config_digest(directory: Path) -> dict:
    """Every file under a configuration directory: sha256 and mode (byte-for-byte comparisons)."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(directory.rglob("*")) if p.is_file()}


def build_release(version: str, outdir: Path) -> Path:
    subprocess.run([str(ROOT / "scripts" / "build-release.sh"), version, str(outdir)], check=True,
                   capture_output=True, text=True, env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    return outdir / f"football_prediction_api-{version}-py3-none-any.whl"


def build_releases(outdir: Path, versions: tuple[str, ...] = ("1.0.0", "2.0.0")) -> Path:
    for version in versions:
        build_release(version, outdir)
    return outdir


@dataclass
class Stack:
    base: Path
    nginx_port: int
    ports: dict
    rolling_base: int
    releases: Path

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def deploy(self) -> Path:
        return self.state / "deploy"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def variables(self, pg, db: str, **extra) -> dict:
        return {**pg.conn_vars(db), "pgmigrate_state_dir": str(self.state), "pgmigrate_app_url": self.url,
                "pgmigrate_db_sslmode": "disable", "blue_green_ports": self.ports,
                "blue_green_rolling_base_port": self.rolling_base, "blue_green_release_dir": str(self.releases),
                "blue_green_health_delay": 0.3, **extra}

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SUPERVISORCTL, "-c", str(self.deploy / "supervisor" / "supervisord.conf"), *args],
                              capture_output=True, text=True, check=False)

    def programs(self) -> dict[str, tuple[str, int | None]]:
        """supervisord's programs: name -> (state, pid)."""
        out = {}
        for line in self.supervisorctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
                out[parts[0]] = (parts[1], pid)
        return out

    def upstream(self) -> dict:
        for line in (self.deploy / "nginx" / "active_upstream.conf").read_text().splitlines():
            if line.startswith("# pgmigrate-active: "):
                return json.loads(line[len("# pgmigrate-active: "):])
        raise AssertionError("no marker in the active upstream file")

    def health(self, port: int | None = None) -> dict:
        url = f"http://127.0.0.1:{port}/health" if port else self.url + "/health"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        stop_services(self.deploy)


def new_stack(base: Path, releases: Path) -> Stack:
    ports = {"blue": free_port(), "green": free_port()}
    return Stack(base=base, nginx_port=free_port(), ports=ports, rolling_base=free_port(4), releases=releases)


def _kill_pidfile(pidfile: Path, sig: int) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def stop_services(deploy_dir: Path) -> None:
    """Stop supervisord (and its programs) and nginx of one deploy state directory, by PID."""
    _kill_pidfile(deploy_dir / "supervisor" / "supervisord.pid", signal.SIGTERM)
    _kill_pidfile(deploy_dir / "nginx" / "nginx.pid", signal.SIGQUIT)
