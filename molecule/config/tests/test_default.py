"""Verify the config role (testinfra): the files, their modes, no password, valid for the release."""
from __future__ import annotations

import json
import sys

STATE = "/tmp/pgmigrate-molecule-config"


def test_env_file_has_the_dsn_without_password(host):
    env = host.file(f"{STATE}/app/.env")
    assert env.mode == 0o640
    text = env.content_string
    assert "APP_RELEASE=2.0.0" in text and "dbname=football_prediction" in text
    assert "password=" not in text.lower() and f"APP_DB_PASSWORD_FILE={STATE}/db.password" in text


def test_app_config_holds_the_plan_settings(host):
    data = json.loads(host.file(f"{STATE}/app/config/app_config.json").content_string)
    assert data["release"] == "2.0.0" and data["pool_size"] == 4


def test_the_release_accepts_the_configuration(host):
    cmd = host.run(f"PYTHONPATH={STATE}/release {sys.executable} -m football_prediction_api --check-config "
                   f"--config-dir {STATE}/app")
    assert cmd.rc == 0, cmd.stderr
