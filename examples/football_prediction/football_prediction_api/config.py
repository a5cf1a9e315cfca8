"""The release's configuration: DIR/.env (connection, no password) and DIR/config/app_config.json.

.env holds KEY=VALUE lines (comments with #, no shell expansion).  A variable of the process
environment with the same name wins over the file (containers set paths that way).

    APP_RELEASE            the release the files were rendered for (must equal this release)
    APP_DB_DSN             libpq key=value DSN without a password
    APP_DB_PASSWORD_FILE   a file holding the password, readable by its owner only (0600 or 0400)

app_config.json: {"release": "X.Y.Z", "pool_size": int >= 1, "statement_timeout_ms": int >= 1,
"connect_timeout_s": int >= 1, "log_requests": bool}
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__

ENV_KEYS = ("APP_RELEASE", "APP_DB_DSN", "APP_DB_PASSWORD_FILE")
SETTINGS = {"release": str, "pool_size": int, "statement_timeout_ms": int, "connect_timeout_s": int,
            "log_requests": bool}
DEFAULTS = {"pool_size": 8, "statement_timeout_ms": 5000, "connect_timeout_s": 5, "log_requests": True}


@dataclass
class AppConfig:
    dsn: str
    password: str | None
    settings: dict


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_env_file(path: Path, problems: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            problems.append(f"{path}:{number}: expected KEY=VALUE, got {line[:40]!r}")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _check_dsn(dsn: str, problems: list[str]) -> None:
    try:
        from psycopg2.extensions import parse_dsn
        parts = parse_dsn(dsn)
    except Exception as exc:  # psycopg2.ProgrammingError for a malformed DSN
        problems.append(f"APP_DB_DSN is not a valid libpq DSN ({str(exc).strip()}): write key=value pairs "
                        "such as 'host=127.0.0.1 port=5432 dbname=app user=app'")
        return
    if "password" in parts:
        problems.append("APP_DB_DSN holds a password: remove it and put the password in the 0600 file "
                        "named by APP_DB_PASSWORD_FILE")
    for key in ("host", "dbname", "user"):
        if key not in parts:
            problems.append(f"APP_DB_DSN has no {key}=: add it")


def _read_password(path_text: str, problems: list[str]) -> str | None:
    path = Path(path_text)
    try:
        info = path.stat()
    except OSError as exc:
        problems.append(f"APP_DB_PASSWORD_FILE {path} cannot be read ({exc.strerror}): create it with mode 0600")
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"APP_DB_PASSWORD_FILE {path} has mode {stat.S_IMODE(info.st_mode):04o}, readable by "
                        "others: chmod 0600 it")
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        problems.append(f"APP_DB_PASSWORD_FILE {path} cannot be read ({exc.strerror})")
        return None


def _check_settings(data: object, source: Path, problems: list[str]) -> dict:
    if not isinstance(data, dict):
        problems.append(f"{source}: expected a JSON object, got {type(data).__name__}")
        return {}
    settings = dict(DEFAULTS)
    for key, value in data.items():
        kind = SETTINGS.get(key)
        if kind is None:
            problems.append(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(SETTINGS))})")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{source}: {key} must be {kind.__name__}, got {value!r}")
        elif kind is int and value < 1:
            problems.append(f"{source}: {key} must be >= 1, got {value}")
        else:
            settings[key] = value
    if data.get("release") != __version__:
        problems.append(f"{source}: rendered for release {data.get('release')!r} but this is release "
                        f"{__version__}: render the configuration for {__version__}")
    return settings


def load(config_dir: str | os.PathLike, environ: dict | None = None) -> AppConfig:
    """Read and check the whole configuration; ConfigError lists every problem found."""
    environ = os.environ if environ is None else environ
    base = Path(config_dir)
    problems: list[str] = []
    env_path, json_path = base / ".env", base / "config" / "app_config.json"
    values: dict[str, str] = {}
    if env_path.is_file():
        values = parse_env_file(env_path, problems)
    else:
        problems.append(f"{env_path} is missing: render the configuration first (the config role)")
    for key in ENV_KEYS:
        if environ.get(key):
            values[key] = environ[key]
    for key in ENV_KEYS:
        if not values.get(key):
            problems.append(f"{key} is not set in {env_path}: add {key}=...")
    if values.get("APP_RELEASE") and values["APP_RELEASE"] != __version__:
        problems.append(f"{env_path}: APP_RELEASE={values['APP_RELEASE']} but this is release {__version__}: "
                        f"render the configuration for {__version__}")
    if values.get("APP_DB_DSN"):
        _check_dsn(values["APP_DB_DSN"], problems)
    password = _read_password(values["APP_DB_PASSWORD_FILE"], problems) if values.get("APP_DB_PASSWORD_FILE") else None
    settings: dict = {}
    try:
        settings = _check_settings(json.loads(json_path.read_text(encoding="utf-8")), json_path, problems)
    except FileNotFoundError:
        problems.append(f"{json_path} is missing: render the configuration first (the config role)")
    except (OSError, ValueError) as exc:
        problems.append(f"{json_path} is not valid JSON: {exc}")
    if problems:
        raise ConfigError(problems)
    return AppConfig(dsn=values["APP_DB_DSN"], password=password, settings=settings)
