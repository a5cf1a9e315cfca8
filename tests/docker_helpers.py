"""Helpers of the docker runtime tests: a daemon started by scripts/dockerd.sh, a release wheel.

Until scripts/build-release.sh exists on this branch, ``build_wheel`` writes a wheel of the
current reference application by hand (a wheel is a zip; no build backend is installed):
package ``football_prediction_api`` with app.py and a ``__main__`` speaking interface (b):
``python -m football_prediction_api --host H --port P --colour C --config-dir DIR``.
"""
from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "football_prediction" / "app.py"
DOCKERD_SH = ROOT / "scripts" / "dockerd.sh"

MAIN = '''"""Interface (b), as the release's own configuration reads it: DIR/.env with APP_RELEASE,
APP_DB_DSN (no password) and APP_DB_PASSWORD_FILE (0600), a process environment variable of the
same name winning over the file; DIR/config/app_config.json with the release it was rendered for."""
import argparse
import json
import os
import sys
from pathlib import Path

from psycopg2.extensions import parse_dsn

from football_prediction_api import __version__, app

LIBPQ = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER", "sslmode": "PGSSLMODE"}


def load(config_dir: Path) -> dict:
    values = {}
    for line in (config_dir / ".env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = os.environ.get(key.strip(), value.strip())
    settings = json.loads((config_dir / "config" / "app_config.json").read_text())
    if values.get("APP_RELEASE") != __version__ or settings.get("release") != __version__:
        raise SystemExit(f"configuration rendered for {values.get('APP_RELEASE')}, this is {__version__}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(prog="football_prediction_api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--colour", default="")
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--check-config", action="store_true")
    args = parser.parse_args()
    values = load(Path(args.config_dir))
    if args.check_config:
        return 0
    for key, value in parse_dsn(values["APP_DB_DSN"]).items():
        os.environ[LIBPQ[key]] = value
    os.environ["PGPASSWORD"] = Path(values["APP_DB_PASSWORD_FILE"]).read_text().rstrip("\\r\\n")
    os.environ["APP_COLOUR"] = args.colour
    return app.main(["--host", args.host, "--port", str(args.port), "--app-version", __version__,
                     "--pool-size", "4"])


sys.exit(main())
'''


def build_wheel(version: str, outdir: Path) -> Path:
    """football_prediction_api-VERSION-py3-none-any.whl of the current app.py."""
    dist = f"football_prediction_api-{version}.dist-info"
    files = {
        "football_prediction_api/__init__.py": f'__version__ = "{version}"\n'.encode(),
        "football_prediction_api/__main__.py": MAIN.encode(),
        "football_prediction_api/app.py": APP.read_bytes(),
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: football-prediction-api\nVersion: {version}\n"
                             "Requires-Dist: psycopg2\n").encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    outdir.mkdir(parents=True, exist_ok=True)
    wheel = outdir / f"football_prediction_api-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return wheel


def dockerd(action: str, directory: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(DOCKERD_SH), "--dir", str(directory), action], capture_output=True, text=True,
                          timeout=timeout, check=False)
