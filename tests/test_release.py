"""The release artifact (interface (b)): scripts/build-release.sh, the installed package's
--check-config, /health and the columns each release serves, against the real PostgreSQL."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, alembic
from deploy_helpers import build_release
from validate_helpers import free_port

V1 = ["actual_result", "away_win_prob", "confidence", "created_at", "draw_prob", "home_win_prob", "id", "match_id",
      "model_version", "predicted_result", "updated_at"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Both releases built and installed into their own release directories (never the checkout)."""
    base = tmp_path_factory.mktemp("rel")
    out = {}
    for version in ("1.0.0", "2.0.0"):
        wheel = build_release(version, base / "wheels")
        target = base / version
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(target), str(wheel)], check=True)
        out[version] = target
    return out


def write_config(directory: Path, pg, db: str, release: str, settings: dict | None = None,
                 dsn_extra: str = "", pw_mode: int = 0o600) -> Path:
    (directory / "config").mkdir(parents=True, exist_ok=True)
    secret = directory / "pw"
    secret.write_text(pg.password)
    secret.chmod(pw_mode)
    (directory / ".env").write_text(
        f"APP_RELEASE={release}\nAPP_DB_DSN=host={pg.host} port={pg.port} dbname={db} user={pg.user}{dsn_extra}\n"
        f"APP_DB_PASSWORD_FILE={secret}\n")
    (directory / "config" / "app_config.json").write_text(json.dumps({"release": release, **(settings or {})}))
    return directory


def run_check(release_dir: Path, config_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "football_prediction_api", "--check-config", "--config-dir",
                           str(config_dir)], env={"PYTHONPATH": str(release_dir), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, cwd=str(release_dir), check=False)


def test_build_is_reproducible_and_immutable(tmp_path):
    first = build_release("3.1.4", tmp_path)
    data = first.read_bytes()
    again = build_release("3.1.4", tmp_path)
    assert again.read_bytes() == data
    with zipfile.ZipFile(first) as zf:
        assert '__version__ = "3.1.4"' in zf.read("football_prediction_api/_version.py").decode()
        assert "Version: 3.1.4" in zf.read("football_prediction_api-3.1.4.dist-info/METADATA").decode()
    first.chmod(0o644)
    first.write_bytes(data[:-10] + b"0123456789")  # someone replaced the released file
    proc = subprocess.run([str(ROOT / "scripts" / "build-release.sh"), "3.1.4", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "already exists with other contents" in proc.stderr
    bad = subprocess.run([str(ROOT / "scripts" / "build-release.sh"), "v3"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_check_config_accepts_a_good_configuration(pg, reference_db, installed, tmp_path):
    cfg = write_config(tmp_path / "ok", pg, reference_db, "2.0.0", {"pool_size": 3})
    proc = run_check(installed["2.0.0"], cfg)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout


@pytest.mark.parametrize("case, expected", [
    ("password_in_dsn", "APP_DB_DSN holds a password"),
    ("world_readable_secret", "readable by others: chmod 0600 it"),
    ("other_release", "rendered for release '1.0.0' but this is release 2.0.0"),
    ("bad_setting", "pool_size must be >= 1, got 0"),
    ("unknown_setting", "unknown setting 'poolsize'"),
])
def test_check_config_names_each_problem_and_the_fix(pg, reference_db, installed, tmp_path, case, expected):
    kwargs: dict = {}
    release = "2.0.0"
    if case == "password_in_dsn":
        kwargs["dsn_extra"] = " password=secret"
    elif case == "world_readable_secret":
        kwargs["pw_mode"] = 0o644
    elif case == "other_release":
        release = "1.0.0"
    elif case == "bad_setting":
        kwargs["settings"] = {"pool_size": 0}
    else:
        kwargs["settings"] = {"poolsize": 3}
    cfg = write_config(tmp_path / case, pg, reference_db, release, **kwargs)
    proc = run_check(installed["2.0.0"], cfg)
    assert proc.returncode == 1
    assert expected in proc.stderr, proc.stderr


def serve(release_dir: Path, cfg: Path, colour: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "football_prediction_api", "--host", "127.0.0.1", "--port",
                             str(port), "--colour", colour, "--config-dir", str(cfg)],
                            env={"PYTHONPATH": str(release_dir), "PATH": "/usr/bin:/bin"}, cwd=str(release_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the release did not start")


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def test_each_release_serves_its_columns_on_the_2_0_0_schema(pg, reference_db, installed, tmp_path):
    alembic(pg, reference_db, "upgrade", "v2_0_0")
    procs = []
    try:
        for version, colour in (("1.0.0", "blue"), ("2.0.0", "green")):
            proc, port = serve(installed[version], write_config(tmp_path / version, pg, reference_db, version),
                               colour)
            procs.append(proc)
            assert get(port, "/health") == {"status": "ok", "version": version, "colour": colour,
                                            "db_revision": "v2_0_0"}
            row = get(port, "/predictions/1")
            expected = V1 if version == "1.0.0" else sorted(V1 + ["feature_importance", "model_accuracy"])
            assert sorted(row) == expected
    finally:
        for proc in procs:
            proc.terminate()
            assert proc.wait(10) == 0  # SIGTERM: the requests in flight finish, exit 0
